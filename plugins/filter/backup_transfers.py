# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import transfers

DOCUMENTATION = r"""
name: backup_transfers
short_description: Decide how each disk of one backend is copied, and why
version_added: 0.4.0
description:
  - From a backup plan (P(vmbackup.libvirt.backup_plan#filter)) and what the backend's snapshot
    step returned, one transfer per disk - the image to read, its mode and, for a qcow2 delta,
    the parent backup's image - with C(reason), which the manifest and the VM's result keep.
  - A file disk is a delta only when deltas are allowed (not V(backup_type=full), not the first
    backup, no full due), the parent backup has an image for it, and the image frozen by the
    snapshot is the kept overlay of the parent backup (or of the backup a synthetic full parent
    was made from). Otherwise it is full, and C(reason) says which condition failed.
  - LVM volumes are always full; an RBD disk's mode is what M(vmbackup.libvirt.rbd_export) found on the image.
  - V(disk_transfer) gives the O(vmbackup.libvirt.disk_transfer#module:disks) of one
    M(vmbackup.libvirt.disk_transfer) run for all file and LVM disks (the file disks first), from the
    registered steps of the VM's backup.
positional: kind, registered
options:
  _input:
    description: The plan from P(vmbackup.libvirt.backup_plan#filter).
    type: dict
    required: true
  kind:
    description: The backend.
    type: str
    choices: [file, block, rbd, disk_transfer]
    required: true
  registered:
    description:
      - V(file) - the result of M(vmbackup.libvirt.kvm_snapshot) O(vmbackup.libvirt.kvm_snapshot#module:state=present);
        V(block) - of M(vmbackup.libvirt.lvm_snapshot) O(vmbackup.libvirt.lvm_snapshot#module:state=present);
        V(rbd) - the registered loop of M(vmbackup.libvirt.rbd_export) O(vmbackup.libvirt.rbd_export#module:state=present).
      - V(disk_transfer) - the VM's registered steps, C(begin) (M(vmbackup.libvirt.backup_repo)
        O(vmbackup.libvirt.backup_repo#module:action=begin), for the backup's directory), C(snapshot) and C(lvm_snapshot).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Copy the frozen file disks
  vmbackup.libvirt.disk_transfer:
    direction: backup
    image: "{{ item.image }}"
    format: "{{ item.format }}"
    mode: "{{ item.mode }}"
    parent_image: "{{ item.parent_image | default(omit, true) }}"
    repo_image: "{{ begun.dir }}/{{ item.target }}.qcow2"
  loop: "{{ plan | vmbackup.libvirt.backup_transfers('file', snapshot) }}"

- name: Copy the file and LVM disks in one run
  vmbackup.libvirt.disk_transfer:
    direction: backup
    disks: "{{ plan | vmbackup.libvirt.backup_transfers('disk_transfer', {'begin': begun, 'snapshot': snapshot, 'lvm_snapshot': lvm}) }}"
"""

RETURN = r"""
_value:
  description:
    - One entry per disk - C(target), C(image), C(mode) (V(full), V(delta), V(incremental)), C(reason);
      file and LVM disks also C(format) and C(parent_image) (V(null) unless a delta); LVM and RBD
      disks C(size); RBD disks C(snapshot) and C(from_snapshot).
    - V(disk_transfer) - one entry per file or LVM disk, C(image), C(format), C(mode), C(repo_image),
      and C(parent_image) for a delta.
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_transfers": transfers}
