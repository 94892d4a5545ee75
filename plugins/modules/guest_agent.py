#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_agent
short_description: Talk to a VM's QEMU guest agent - ping, run a command, freeze and thaw file systems
version_added: 0.1.0
description:
  - Uses C(virsh qemu-agent-command), C(domfsfreeze) and C(domfsthaw) on the hypervisor.
  - Backups use it for commands inside the guest before and after the snapshot and to
    freeze file systems around storage-level (LVM, RBD) snapshots, with a time limit;
    the backup role always thaws.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.libvirt
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - V(freeze) and V(thaw) are idempotent; V(exec) runs the command every time.
options:
  name:
    description: The VM.
    type: str
    required: true
  action:
    description:
      - V(ping) checks that the agent answers (waiting up to O(wait) seconds).
      - V(exec) runs O(command) in the guest and waits for it.
      - V(freeze) / V(thaw) freeze and thaw the guest's file systems.
      - V(status) reports whether they are frozen.
    type: str
    required: true
    choices: [ping, exec, freeze, thaw, status]
  command:
    description: For V(exec), the program and its arguments.
    type: list
    elements: str
  timeout:
    description: Seconds one agent operation may take (a hanging agent is cut off).
    type: int
    default: 60
  wait:
    description: For V(ping), seconds to keep trying (for a guest that is booting).
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Flush the database before the snapshot
  vmbackup.libvirt.guest_agent:
    name: db1
    action: exec
    command: [/usr/local/bin/db-flush]

- name: Wait up to 3 minutes for a restored VM's agent
  vmbackup.libvirt.guest_agent:
    name: db1-test
    action: ping
    wait: 180
"""

RETURN = r"""
agent:
  description: Whether the agent answered.
  returned: action=ping
  type: bool
rc:
  description: Exit code of the command.
  returned: action=exec
  type: int
stdout:
  description: Its standard output.
  returned: action=exec
  type: str
stderr:
  description: Its standard error.
  returned: action=exec
  type: str
frozen:
  description: Whether the file systems are frozen afterwards.
  returned: action in (freeze, thaw, status)
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._guest_agent import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
