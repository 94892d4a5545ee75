#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_lock
short_description: Take or release the lock that keeps two runs off one VM
version_added: 0.1.0
description:
  - A lock file created atomically (O_EXCL) that names the run holding it. The backup and
    restore roles take one per VM in the repository on the backup node and one per VM on the
    hypervisor, so two backups of one VM, or a backup and a restore into the same target,
    cannot interleave. The second run waits up to O(wait) seconds, then fails naming the
    holder.
  - A lock left by a dead run is broken - when its ansible-playbook process (recorded when the
    module runs on the controller) is gone, when it is older than O(stale_after), or when
    O(break_from) names the node that took it (a run holding the node's lock knows an earlier
    run from that node is dead).
  - With O(slots), the lock is any one of the files C(PATH.1) .. C(PATH.N), so at most N runs
    hold it at once. The backup playbook bounds parallel backups per hypervisor and per node this
    way; each VM's backup takes a slot with its own O(owner).
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Taking a lock this run already holds, or releasing one it does not hold, changes nothing.
options:
  path:
    description: The lock file.
    type: path
    required: true
  owner:
    description: The run's ID.
    type: str
    required: true
  state:
    description: V(present) takes the lock, V(absent) releases it (only if this run holds it).
    type: str
    choices: [present, absent]
    default: present
  purpose:
    description: What the lock protects, for messages (for example C(backup of VM web1)).
    type: str
    default: ""
  node:
    description: The backup node of this run, recorded in the lock.
    type: str
    default: ""
  break_from:
    description: Break a lock recorded with this node name (see description).
    type: str
    default: ""
  wait:
    description: Seconds to wait for a lock held by another live run.
    type: int
    default: 0
  stale_after:
    description: Seconds after which any lock counts as stale.
    type: int
    default: 86400
  slots:
    description:
      - V(0) for one lock file at O(path); N for a pool of N lock files C(PATH.1) .. C(PATH.N),
        of which this owner takes the first free one (or releases the one it holds).
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Lock web1 in the repository for this run
  vmbackup.libvirt.backup_lock:
    path: /srv/vmbackup/.locks/web1.lock
    owner: "{{ run_id }}"
    purpose: backup of VM web1
    wait: 60

- name: Take one of two backup slots of hypervisor hv1 (waiting up to a day)
  vmbackup.libvirt.backup_lock:
    path: ~/.ansible/vmbackup-slots/hypervisor-hv1
    slots: 2
    owner: "{{ run_id }}:web1"
    wait: 86400
  delegate_to: localhost
  register: slot
"""

RETURN = r"""
held:
  description: Whether this run holds the lock afterwards.
  returned: always
  type: bool
broke_stale:
  description: The stale lock that was broken, and why, or V(null).
  returned: state=present
  type: str
path:
  description: The lock file taken or released (with O(slots), which of the pool), or V(null).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._lock import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
