#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_prune
short_description: Apply a retention policy to a vmbackup repository, or merge a chain into a synthetic full
version_added: 0.1.0
description:
  - Runs on the backup node, on the repository only; the hypervisors are not touched.
  - O(action=prune) keeps, per VM, what the policy says, like restic's and borg's C(forget --prune).
    The backups of a VM are points in time (the UTC time of the backup ID).
    O(keep_last) keeps the newest N; O(keep_daily), O(keep_weekly), O(keep_monthly) and O(keep_yearly)
    keep the newest backup of each of the newest N days, ISO weeks, months and years that have one.
    A backup is kept if any rule keeps it.
  - Whatever the policy, the newest backup of each VM is kept (the next incremental builds on it),
    backups younger than O(min_age) are kept, and a kept backup keeps every backup it needs - its
    manifest's parent chain back to the full backup and, per disk, the backing file of each qcow2
    delta - so a kept backup can always be restored.
  - Backups are removed newest first, each made invisible at once (renamed to C(.deleting-ID)) before
    its files are deleted, so an interrupted prune never leaves a delta whose parent is gone.
    Partial backups (C(.partial-ID)) untouched for O(partial_max_age) and leftovers of an interrupted
    prune are removed too.
  - Each VM is pruned holding its lock in the repository (C(.locks/VM.lock), exclusive, as
    M(vmbackup.libvirt.backup_lock) takes it). While a restore reads the VM's backups (a shared lock)
    or a backup writes one, the prune of that VM waits up to O(lock_wait) seconds, then leaves the VM
    alone - nothing of it is removed - and names the run that holds it (RV(locked)); with
    O(fail_on_locked) the task fails after the other VMs are pruned. The plan is made under the lock.
  - A backup whose manifest cannot be read or trusted (see M(vmbackup.libvirt.backup_repo)) is left
    alone and reported in RV(damaged) and a warning; it does not stop the prune of the VM's other
    backups. Backing files are read from the qcow2 headers of images inside the repository only.
  - O(action=synthesize) merges the chain of one backup into a new, standalone full backup of the
    same point in time, C(BACKUP_ID-N), with C(synthesized_from) in its manifest (written last). The
    source chain is not modified. For retention the synthetic full then stands for that point in
    time, so the chain below it can go. qcow2 images only; RBD diffs are not merged. It holds the VM's
    lock exclusively too, and refuses a chain whose files or backing names point outside the repository.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports in RV(removed) and RV(kept) what would be removed and kept, with the reasons, and removes nothing.
  diff_mode:
    support: full
    details:
      - For O(action=prune), the backup IDs of each VM before and after.
  idempotent:
    support: full
    details:
      - A second prune with the same policy at the same time removes nothing; a second synthesize finds
        the synthetic full it made.
options:
  path:
    description: The repository directory.
    type: path
    required: true
  vms:
    description:
      - The VMs to work on. Empty for every VM of the repository (O(action=prune)).
      - O(action=synthesize) needs exactly one.
    type: list
    elements: str
    default: []
  action:
    description:
      - V(prune) applies the retention policy.
      - V(synthesize) makes a synthetic full backup of O(backup).
    type: str
    choices: [prune, synthesize]
    default: prune
  keep_last:
    description: Keep the newest N backups (points in time).
    type: int
    default: 0
  keep_daily:
    description: Keep the newest backup of each of the newest N days (UTC) that have one.
    type: int
    default: 0
  keep_weekly:
    description: Keep the newest backup of each of the newest N ISO weeks that have one.
    type: int
    default: 0
  keep_monthly:
    description: Keep the newest backup of each of the newest N months that have one.
    type: int
    default: 0
  keep_yearly:
    description: Keep the newest backup of each of the newest N years that have one.
    type: int
    default: 0
  min_age:
    description:
      - Never remove a backup younger than this. Seconds, or a number with C(s), C(m), C(h), C(d) or C(w)
        (V(36h), V(7d)). V(0) for no minimum.
    type: str
    default: "0"
  partial_max_age:
    description:
      - Remove partial backups (C(.partial-ID) directories of interrupted backups) whose files have not
        changed for this long. Same units as O(min_age); V(never) keeps them.
      - Keep it longer than your longest backup, or a running backup's directory goes.
    type: str
    default: 1d
  backup:
    description: For O(action=synthesize), the backup whose chain to merge - V(latest) or a backup ID.
    type: str
    default: latest
  verify:
    description: For O(action=synthesize), check every image of the chain against its manifest's sha256 first.
    type: bool
    default: true
  now:
    description:
      - The time to apply O(min_age) against (ISO 8601 or a backup ID). Default the current time. For tests.
    type: str
  lock_owner:
    description:
      - The owner recorded in the VM locks this task takes, usually the run's ID. Default a new
        C(prune-...) or C(synthetic-...) ID for this task. A lock this owner already holds is used as it is.
    type: str
  lock_wait:
    description: Seconds to wait for each VM's lock when another run (a restore, a backup) holds it.
    type: int
    default: 0
  lock_progress_file:
    description:
      - While waiting for a lock, write who holds it and how long this task still waits to this file, for the
        C(vmbackup.libvirt.progress) callback. Omit for none.
    type: path
  fail_on_locked:
    description:
      - Fail (after pruning the other VMs) when a VM was left alone because another run held its lock.
        V(false) only warns; the next prune catches up.
    type: bool
    default: true
notes:
  - At least one C(keep_*) rule must be given; a prune with none is refused.
  - M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=commit) applies the same
    C(keep_*) rules and O(min_age) to the VM it commits, under the lock it already holds (the backup
    role uses that); this module is for whole repositories, synthetic fulls and the prune playbook.
seealso:
  - module: vmbackup.libvirt.backup_repo
"""

EXAMPLES = r"""
- name: Show what a policy would remove (dry run)
  vmbackup.libvirt.backup_prune:
    path: /srv/vmbackup
    keep_last: 3
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 6
    min_age: 2d
  check_mode: true
  register: plan

- name: Prune the backups of web1
  vmbackup.libvirt.backup_prune:
    path: /srv/vmbackup
    vms: [web1]
    keep_daily: 14

- name: Merge web1's newest chain into a synthetic full
  vmbackup.libvirt.backup_prune:
    path: /srv/vmbackup
    vms: [web1]
    action: synthesize
"""

RETURN = r"""
removed:
  description: The backups removed (would be removed, in check mode), in deletion order, with the reasons.
  returned: action=prune
  type: list
  elements: dict
  sample:
    - {vm: web1, backup_id: 20261120T013000Z, type: incremental, reasons: [not kept by the policy]}
kept:
  description: The backups kept, newest first, each with every reason it is kept for.
  returned: action=prune
  type: list
  elements: dict
  sample:
    - {vm: web1, backup_id: 20261122T013000Z, type: incremental, reasons: [keep_last 1, needed by 20261123T013000Z]}
partials_removed:
  description: Partial and half-deleted backup directories removed, with the reasons.
  returned: action=prune
  type: list
  elements: dict
broken_chains:
  description: Backups whose chain is already broken (a parent missing); also given as warnings.
  returned: action=prune
  type: list
  elements: str
damaged:
  description: Backups whose manifest cannot be read or trusted (vm, backup_id, problems); left alone.
  returned: action=prune
  type: list
  elements: dict
locked:
  description: VMs left alone because another run held their lock (vm, msg naming the holder).
  returned: action=prune
  type: list
  elements: dict
backup_id:
  description: The synthetic full's backup ID (or the backup that needs none).
  returned: action=synthesize
  type: str
  sample: 20261122T013000Z-1
synthesized_from:
  description: The backup whose chain was merged.
  returned: action=synthesize and changed
  type: str
chain:
  description: The backup IDs merged, full first.
  returned: action=synthesize and changed
  type: list
  elements: str
manifest:
  description: The synthetic full's manifest.
  returned: action=synthesize, changed and not in check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._retention import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
