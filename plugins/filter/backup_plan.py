# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import plan

DOCUMENTATION = r"""
name: backup_plan
short_description: Plan a VM's backup - its disks per backend, and whether a delta is allowed
version_added: 0.4.0
description:
  - From the VM's entry of M(vmbackup.libvirt.vm_info) and the result of
    M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=begin), decides
    which disks go to which backend, whether the VM has file disks only (M(vmbackup.libvirt.kvm_snapshot)
    then repairs in the run that snapshots it), whether a running VM with LVM or RBD disks is frozen
    around all the snapshots, and whether any disk may be a delta.
  - The per-disk decisions come from P(vmbackup.libvirt.backup_transfers#filter) once the snapshots
    are taken.
positional: begin, backup_type, unsupported, shareable
options:
  _input:
    description: The VM entry (C(vms[0])) of M(vmbackup.libvirt.vm_info).
    type: dict
    required: true
  begin:
    description: The registered result of M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=begin).
    type: dict
    required: true
  backup_type:
    description:
      - The backup role's C(backup_type). V(auto) and V(incremental) decide alike - a delta where
        the parent allows it, a full otherwise.
    type: str
    choices: [auto, full, incremental]
    default: auto
  unsupported:
    description:
      - The backup role's C(backup_unsupported_disks). Given (with or without O(shareable)), the plan
        also carries P(vmbackup.libvirt.backup_disk_plan#filter)'s verdict - C(refused), C(skipped), C(warnings).
    type: str
    choices: [fail, skip]
  shareable:
    description: The backup role's C(backup_shareable_disks), as O(unsupported).
    type: str
    choices: [skip, fail]
"""

EXAMPLES = r"""
- name: Plan the backup of the VM
  ansible.builtin.set_fact:
    plan: "{{ info.vms[0] | vmbackup.libvirt.backup_plan(begun, 'incremental') }}"

- name: Plan it, refusing unsupported disks and leaving shareable ones out
  ansible.builtin.set_fact:
    plan: "{{ info.vms[0] | vmbackup.libvirt.backup_plan(begun, 'auto', 'fail', 'skip') }}"
"""

RETURN = r"""
_value:
  description: The plan.
  type: dict
  contains:
    backends:
      description: The VM's disks by backend, C(file), C(block) (LVM) and C(rbd), each a list of vm_info disks.
      type: dict
    file_only:
      description: Whether the VM has no LVM or RBD disk.
      type: bool
    multi:
      description: Whether the VM is running and has LVM or RBD disks (frozen or paused around all snapshots).
      type: bool
    full_reason:
      description: Why every disk is copied whole (V(backup_type=full), first backup, full due), or V(null).
      type: str
    parent:
      description: The parent backup's C(backup_id), C(synthesized_from) and C(images) (per disk target), or V(null).
      type: dict
    rbd_parent:
      description: The backup whose RBD snapshot an RBD diff starts from, or V(null) for a full export.
      type: str
    refused:
      description:
        - With O(unsupported) or O(shareable), why the backup may not go on (the disks that block it, each with
          its reason and what to do), or V(null).
      type: str
    skipped:
      description: With O(unsupported) or O(shareable), the disks left out, each with C(target) and C(reason).
      type: list
      elements: dict
    warnings:
      description: With O(unsupported) or O(shareable), a warning per disk left out that the VM writes.
      type: list
      elements: str
"""


class FilterModule:
    def filters(self):
        return {"backup_plan": plan}
