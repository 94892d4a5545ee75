# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_manifest import manifest as backup_manifest

DOCUMENTATION = r"""
name: backup_manifest
short_description: Build a backup manifest from the results of a backup's tasks
version_added: 0.1.0
description:
  - Combines the VM's facts (from M(vmbackup.libvirt.vm_info)), the snapshot
    (from M(vmbackup.libvirt.kvm_snapshot)) and the registered loop of
    M(vmbackup.libvirt.disk_transfer) results into the manifest that
    M(vmbackup.libvirt.backup_repo) writes.
positional: snapshot, transfers, parent
options:
  _input:
    description: The VM entry of M(vmbackup.libvirt.vm_info)'s RV(vmbackup.libvirt.vm_info#module:vms).
    type: dict
    required: true
  snapshot:
    description:
      - The registered result of M(vmbackup.libvirt.kvm_snapshot)
        O(vmbackup.libvirt.kvm_snapshot#module:state=present).
    type: dict
    required: true
  transfers:
    description:
      - The registered loop results of disk_transfer (file and block disks) and rbd_transfer
        (RBD disks), as a list of them, or one of them.
      - Each loop item is an entry of P(vmbackup.libvirt.backup_transfers#filter) (its C(target), C(size)
        and C(reason) go into the manifest), or the older shapes - an (LVM disk, snapshot volume) pair
        or an rbd_export result.
    type: raw
    required: true
  parent:
    description: The parent backup's ID, or null.
    type: str
"""

EXAMPLES = r"""
- name: Manifest of this backup
  ansible.builtin.set_fact:
    manifest: "{{ vm | vmbackup.libvirt.backup_manifest(snap, transfers, parent_id) }}"
"""

RETURN = r"""
_value:
  description: The manifest (type, parent, disks, state, autostart, excluded disks).
  type: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_manifest": backup_manifest}
