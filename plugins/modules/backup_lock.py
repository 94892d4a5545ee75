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
    O(break_from) names the node and O(repository) the repository that the lock was taken for
    (a run holding the node's lock for the VM in that repository knows an earlier run from that
    node into that repository is dead). A lock whose ansible-playbook process is alive on this
    host (same PID and start time) is never broken, whatever its age or O(break_from).
  - Breaking is atomic. Every take, break and release happens under C(flock) on a guard file
    C(PATH.guard) beside the lock (kept, never removed); a waiter re-reads the lock under the
    guard before it judges and breaks it, so of several waiters that judged one lock stale at
    once exactly one ends up holding it. The kernel drops the flock when a process dies, so the
    guard is never stale. This holds on local file systems, NFSv4 (flock is mapped to NFS
    byte-range locks) and CephFS.
  - O(mode=shared) takes a reader's lock (a file C(PATH.shared-HASH) per owner). Any number of
    readers hold it at once; the exclusive lock is not granted while a live reader holds one,
    and no reader gets one while the exclusive lock is held. O(mode=append) is a one-holder lock
    like V(exclusive) that lets readers in meanwhile, for a run that only adds. In the repository,
    restores read a VM's backups under a shared lock, a backup holds the VM's lock in V(append)
    mode (it adds a backup and removes nothing a restore reads), and prune and synthetic fulls
    hold it V(exclusive), so they neither start while a restore reads nor let one start. A backup
    whose commit applies retention (M(vmbackup.libvirt.backup_repo) with C(keep_*)) turns its
    V(append) lock into an exclusive one in place, under the guard, when no live reader holds one.
  - The same locks are taken by M(vmbackup.libvirt.vm_info) O(vmbackup.libvirt.vm_info#module:lock)
    and given back by M(vmbackup.libvirt.kvm_snapshot) O(vmbackup.libvirt.kvm_snapshot#module:unlock), which
    saves the backup role two module runs per VM.
  - With O(slots), the lock is any one of the files C(PATH.1) .. C(PATH.N), so at most N runs
    hold it at once. The backup playbook bounds parallel backups per hypervisor and per node this
    way; each VM's backup takes a slot with its own O(owner).
  - While it waits, the module writes who holds the lock and how long it will still wait to
    O(progress_file), which the C(vmbackup.libvirt.progress) callback prints every few seconds;
    a run that had to wait says afterwards, in a warning and in RV(waited_for), for whom.
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
    description: The lock file. Required unless O(locks) is given.
    type: path
  locks:
    description:
      - Several locks in one run, taken in this order with the other options (O(owner), O(wait), ...), or
        given back with O(state=absent). When one cannot be taken, the run gives back the locks it took
        before it and fails, so it never waits holding a lock it took for nothing.
      - The backup role takes a VM's slot of its hypervisor, then of its node, this way.
      - Mutually exclusive with O(path).
    type: list
    elements: dict
    suboptions:
      path:
        description: As O(path).
        type: path
        required: true
      slots:
        description: As O(slots).
        type: int
        default: 0
      purpose:
        description: As O(purpose); empty for the run's O(purpose).
        type: str
        default: ""
  owner:
    description: The run's ID.
    type: str
    required: true
  state:
    description: V(present) takes the lock, V(absent) releases it (only if this run holds it).
    type: str
    choices: [present, absent]
    default: present
  mode:
    description:
      - V(exclusive) for one holder (or one per slot) and no reader; V(shared) for one of any number
        of readers; V(append) for one holder beside any readers (see description). Only V(exclusive)
        with O(slots).
    type: str
    choices: [exclusive, shared, append]
    default: exclusive
  purpose:
    description: What the lock protects, for messages (for example C(backup of VM web1)).
    type: str
    default: ""
  node:
    description: The backup node of this run, recorded in the lock.
    type: str
    default: ""
  repository:
    description:
      - The repository this run works on, recorded in the lock; O(break_from) breaks only a lock
        recorded with the same repository.
    type: str
    default: ""
  break_from:
    description: Break a lock recorded with this node name and the same O(repository) (see description).
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
  progress_file:
    description:
      - While waiting, write who holds the lock and how long this run still waits to this file (JSON,
        removed afterwards), for the C(vmbackup.libvirt.progress) callback. Omit for none.
    type: path
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

- name: Take a slot of hypervisor hv1, then one of node backup1; none when either cannot be had
  vmbackup.libvirt.backup_lock:
    locks:
      - {path: ~/.ansible/vmbackup-slots/hypervisor-hv1, slots: 2, purpose: hypervisor hv1}
      - {path: ~/.ansible/vmbackup-slots/node-backup1, slots: 4, purpose: backup node backup1}
    owner: "{{ run_id }}:web1"
    wait: 86400
  delegate_to: localhost

- name: Read web1's backups under a shared lock (several restores at once, no prune meanwhile)
  vmbackup.libvirt.backup_lock:
    path: /srv/vmbackup/.locks/web1.lock
    mode: shared
    owner: "{{ run_id }}"
    purpose: restore of VM web1
    wait: 600
    progress_file: ~/.ansible/vmbackup-progress/lock-{{ run_id }}.json
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
waited:
  description: Seconds this run waited for another run's lock.
  returned: state=present
  type: int
waited_for:
  description: The lock's holder(s) this run waited for, or V(null).
  returned: state=present
  type: str
locks:
  description:
    - With O(locks), one result per lock taken or given back, in order, each with the keys above (RV(held),
      RV(path), ...). In a failed result, the locks before the one that could not be taken.
  returned: O(locks) given
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._lock import (
    ARGUMENT_SPEC, MUTUALLY_EXCLUSIVE, REQUIRED_ONE_OF, run)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_one_of=REQUIRED_ONE_OF,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
