# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import disk_plan as backup_disk_plan

DOCUMENTATION = r"""
name: backup_disk_plan
short_description: Decide which disks of a VM a backup leaves out, which it refuses, and what it warns about
version_added: 0.3.0
description:
  - Takes the disks of M(vmbackup.libvirt.vm_info) and the backup role's disk settings, and
    says which disks block the VM's backup (it then fails with their reasons), which are left
    out, and the warnings that the run's summary and the VM's result carry.
  - Read-only disks, cdroms and floppies hold nothing the VM writes; they are left out quietly
    (the manifest lists them under C(excluded)).
  - Shareable disks (used by several VMs at once) are left out with a warning when
    O(shareable=skip), or block the backup when O(shareable=fail).
  - Other disks the collection cannot back up (directory, iSCSI, NBD, volume...) block the
    backup when O(unsupported=fail), or are left out with a warning when O(unsupported=skip).
positional: unsupported, shareable
options:
  _input:
    description: The VM's disks (C(vms[0].disks) of M(vmbackup.libvirt.vm_info)).
    type: list
    elements: dict
    required: true
  unsupported:
    description: What to do with disks the collection cannot back up.
    type: str
    choices: [fail, skip]
    default: fail
  shareable:
    description: What to do with shareable disks.
    type: str
    choices: [skip, fail]
    default: skip
"""

EXAMPLES = r"""
- name: Plan the disks of the VM
  ansible.builtin.set_fact:
    plan: "{{ info.vms[0].disks | vmbackup.libvirt.backup_disk_plan('fail', 'skip') }}"
"""

RETURN = r"""
_value:
  description: C(blocking) and C(skipped) (lists of C(target), C(reason)) and C(warnings) (strings).
  type: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_disk_plan": backup_disk_plan}
