# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_manifest import manifest_of_run

DOCUMENTATION = r"""
name: backup_run_manifest
short_description: Build the manifest of one VM's backup from the backup role's plan and steps
version_added: 0.5.0
description:
  - As P(vmbackup.libvirt.backup_manifest#filter), from the plan (P(vmbackup.libvirt.backup_plan#filter))
    and the registered results of the backup's steps, as the backup role has them - one
    M(vmbackup.libvirt.disk_transfer) run with O(vmbackup.libvirt.disk_transfer#module:disks) for the file
    and LVM disks, one loop of M(vmbackup.libvirt.rbd_transfer) for the RBD disks. Adds the hypervisor, the
    libvirt URI and the time the backup began.
  - Fails when disk_transfer moved another number of disks than the plan has, so that no manifest names
    a disk for another disk's image.
positional: plan, steps
options:
  _input:
    description: The VM entry of M(vmbackup.libvirt.vm_info)'s RV(vmbackup.libvirt.vm_info#module:vms).
    type: dict
    required: true
  plan:
    description: The VM's plan, from P(vmbackup.libvirt.backup_plan#filter).
    type: dict
    required: true
  steps:
    description:
      - The registered results - C(begin) (M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=begin)),
        C(snapshot) (M(vmbackup.libvirt.kvm_snapshot)), C(lvm_snapshot) (M(vmbackup.libvirt.lvm_snapshot)),
        C(transfers) (M(vmbackup.libvirt.disk_transfer)), C(rbd_transfers) (the loop of M(vmbackup.libvirt.rbd_transfer)),
        and C(hypervisor) and C(uri), recorded as they are.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Manifest of this backup
  ansible.builtin.set_fact:
    manifest: "{{ info.vms[0] | vmbackup.libvirt.backup_run_manifest(plan, steps) }}"
"""

RETURN = r"""
_value:
  description: The manifest (type, parent, disks, state, autostart, excluded disks, hypervisor, uri, started).
  type: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_run_manifest": manifest_of_run}
