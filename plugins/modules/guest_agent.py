#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_agent
short_description: Talk to a VM's QEMU guest agent - ping, run a command, freeze/thaw file systems, pause/resume
version_added: 0.1.0
description:
  - Uses C(virsh qemu-agent-command), C(domfsfreeze), C(domfsthaw), C(suspend) and C(resume) on the hypervisor.
  - Backups use it for commands inside the guest before and after the snapshot and to
    freeze file systems (or, without an agent, pause the VM) around storage-level (LVM, RBD)
    snapshots, with a time limit.
  - A guest is never left frozen or paused by a run that died (controller killed, SSH link
    dropped, module killed). Before it freezes or pauses, the module arms a watchdog on the
    hypervisor, a C(sh) started with C(setsid --fork) that belongs to no SSH session and no
    process of the run. After O(watchdog) seconds it thaws the file systems (C(virsh domfsthaw))
    or resumes the VM if it is still paused (C(virsh resume)), then ends. It writes no file.
  - V(thaw) and V(resume) thaw or resume first and then disarm every watchdog of the VM for
    that action (found by its command line, C(vmbackup-watchdog URI VM KIND DEADLINE), and
    killed with its process group). The order makes a watchdog firing at the same moment
    harmless (thaw is idempotent; resume is only sent to a paused VM); a watchdog found past
    its deadline is reported as RV(watchdog.fired), as it may have thawed or resumed the guest
    before the caller did.
  - Where systemd-logind kills a user's processes at logout (C(KillUserProcesses=yes)), run as
    root (the default for hypervisors) or the watchdog ends with the SSH session.
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
      - V(freeze), V(thaw), V(pause) and V(resume) are idempotent (a frozen guest is not frozen
        again, nor a paused VM paused); V(thaw) and V(resume) always disarm the watchdogs of the
        VM; V(exec) runs the command every time.
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
      - V(pause) / V(resume) pause and resume the VM (C(virsh suspend) / C(resume)), for a
        storage-level snapshot of a guest whose file systems cannot be frozen.
      - V(freeze) and V(pause) arm a watchdog first (see O(watchdog)); V(thaw) and V(resume)
        disarm it after they have thawed or resumed.
      - V(status) reports whether they are frozen.
    type: str
    required: true
    choices: [ping, exec, freeze, thaw, status, pause, resume]
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
  watchdog:
    description:
      - For V(freeze) and V(pause), seconds after which the hypervisor thaws or resumes the
        guest by itself unless V(thaw) / V(resume) disarmed the watchdog before. It bounds how
        long a run that dies can leave the guest frozen or paused.
      - Make it longer than the freeze and the snapshots take, or the guest is thawed before
        the last snapshot (V(thaw) then reports RV(watchdog.fired)).
      - V(0) arms no watchdog.
    type: int
    default: 300
"""

EXAMPLES = r"""
- name: Flush the database before the snapshot
  vmbackup.libvirt.guest_agent:
    name: db1
    action: exec
    command: [/usr/local/bin/db-flush]

- name: Freeze for a storage snapshot; thawed by the hypervisor in 2 minutes should this run die
  vmbackup.libvirt.guest_agent:
    name: db1
    action: freeze
    timeout: 60
    watchdog: 120
  register: freeze

- name: Thaw, then disarm the watchdog
  vmbackup.libvirt.guest_agent:
    name: db1
    action: thaw
  register: thaw

- name: Fail when the watchdog thawed the guest before this run did
  ansible.builtin.assert:
    that: not thaw.watchdog.fired and freeze.watchdog.pid in thaw.watchdog.disarmed
  when: freeze.watchdog is defined

- name: Wait up to 3 minutes for a restored VM's agent
  vmbackup.libvirt.guest_agent:
    name: db1-test
    action: ping
    wait: 180
"""

RETURN = r"""
agent:
  description:
    - Whether the agent answered (V(ping)). With V(thaw), V(false) when the VM has no guest agent
      channel at all, so nothing can have been frozen through one and there is nothing to thaw.
  returned: action=ping; action=thaw when the VM has no agent channel
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
status:
  description: The agent's C(guest-fsfreeze-status) answer (C(frozen) or C(thawed)).
  returned: action=status
  type: str
state:
  description: The VM's state afterwards (C(paused), C(running), ...).
  returned: action in (pause, resume)
  type: str
watchdog:
  description:
    - For V(freeze) and V(pause) when they froze or paused, the watchdog they armed.
    - For V(thaw) and V(resume), what they disarmed. A watchdog armed by the freeze or pause
      whose PID is not in RV(watchdog.disarmed) has ended, after thawing or resuming the guest.
  returned: action in (freeze, pause) when changed, outside check mode and with O(watchdog) > 0; action in (thaw, resume) outside check mode
  type: dict
  contains:
    pid:
      description: The watchdog's PID, the leader of its own session and process group.
      returned: action in (freeze, pause)
      type: int
      sample: 4242
    deadline:
      description: When it fires, in seconds since the epoch.
      returned: action in (freeze, pause)
      type: int
      sample: 1764633900
    seconds:
      description: Its bound, O(watchdog).
      returned: action in (freeze, pause)
      type: int
      sample: 300
    disarmed:
      description: The PIDs of the watchdogs of this VM and action that were stopped.
      returned: action in (thaw, resume)
      type: list
      elements: int
      sample: [4242]
    fired:
      description:
        - Whether one of them had reached its deadline, so it may have thawed or resumed the
          guest before this run did.
      returned: action in (thaw, resume)
      type: bool
      sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._guest_agent import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
