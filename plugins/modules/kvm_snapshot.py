#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_snapshot
short_description: Create and merge external disk-only snapshots of a VM's file disks
version_added: 0.1.0
description:
  - Freezes a VM's qcow2/raw file disks at one instant by putting a qcow2
    overlay named C(<base file name>.vmbackup-<snapshot>.<target>.qcow2) on top of
    each (C(data.raw.vmbackup-20261122T010000Z.vdb.qcow2)); the image below the
    overlay is then the frozen state a backup reads.
  - Overlay names are unique per disk (the base's whole file name and the disk's
    target; under O(overlay_dir) also the VM's name). Disks whose overlays would
    still be one file are refused before anything is created, and so is an
    overlay file that already exists.
  - Overlays named by earlier versions (C(<base without extension>.vmbackup-<snapshot>.qcow2))
    are still recognised, so their kept chains carry on and are merged and repaired.
  - On a running VM it runs C(virsh snapshot-create-as --disk-only --atomic
    --no-metadata) with one C(--diskspec) per disk (disks it must not touch get
    C(snapshot=no)); on a shut-off VM it runs C(qemu-img create -b -F) and
    redefines the VM on the overlays.
  - Merging uses C(virsh blockcommit) (C(--active --pivot) for the active
    image) when the VM runs and C(qemu-img commit)/C(rebase) when it is shut
    off. It never commits into an image that is not one of its own overlays'
    bases, so shared templates below the VM's own image are never written.
  - Between backups the newest overlay can be kept (O(state=kept)). It then
    holds exactly the clusters written since that backup, which is what the
    next incremental backup transfers.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.libvirt
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows each disk's chain, base first, before and after.
  idempotent:
    support: full
    details:
      - Idempotent by snapshot ID; a second run with the same state changes nothing.
options:
  name:
    description: The VM (libvirt domain name).
    type: str
    required: true
  snapshot:
    description:
      - The ID of the backup point, usually the backup ID. Letters, digits, C(.), C(_), C(-).
      - Required unless O(state=merged) or O(state=repaired).
    type: str
  state:
    description:
      - V(present) creates the overlays of O(snapshot) (freezes the disks).
      - V(kept) merges older overlays of ours into the base, keeping only O(snapshot)'s overlay.
      - V(absent) merges O(snapshot)'s overlay into the image below it (undoes V(present)).
      - V(merged) merges every overlay of ours; the VM runs on its original files again.
      - V(repaired) repairs what a dead run left - every overlay of ours whose snapshot is not in
        O(valid_snapshots) is merged into the image below it (it holds the guest's writes since),
        then older overlays into the base, keeping the newest valid one.
    type: str
    choices: [present, kept, absent, merged, repaired]
    default: present
  valid_snapshots:
    description:
      - For O(state=repaired) (and O(state=present) with O(repair)), the snapshot IDs whose
        backups are complete in the repository.
    type: list
    elements: str
    default: []
  repair:
    description:
      - With O(state=present), first do what O(state=repaired) does (with O(valid_snapshots)),
        in the same run. The backup role uses it for VMs whose disks are all files, which are
        not frozen around the snapshot (for the others, a repair inside the freeze would make it
        longer).
    type: bool
    default: false
  disks:
    description:
      - Targets (vda, sdb...) of the file disks to snapshot. Default all file disks.
      - Disks not selected, block and rbd disks, cdroms, shareable, read-only and
        transient disks get C(snapshot=no) and are listed in RV(excluded).
    type: list
    elements: str
  quiesce:
    description:
      - V(required) passes C(--quiesce) (the guest agent freezes file systems) and fails if that fails.
      - V(preferred) tries C(--quiesce) and falls back to a crash-consistent snapshot with a warning.
      - V(off) takes a crash-consistent snapshot.
      - Only used for running VMs.
    type: str
    choices: [required, preferred, 'off']
    default: 'off'
  overlay_dir:
    description:
      - Directory for the overlays. Default the directory of each disk's base image.
      - Overlays there are named C(<VM>.<base file name>.vmbackup-<snapshot>.<target>.qcow2).
    type: path
  commit_timeout:
    description: Seconds a blockcommit may take before it is aborted.
    type: int
    default: 3600
  unlock:
    description:
      - With O(state=kept) or O(state=merged), give back this lock on the hypervisor (as
        M(vmbackup.libvirt.backup_lock) O(vmbackup.libvirt.backup_lock#module:state=absent) would, only if O(unlock.owner)
        holds it) once the overlays are kept or merged, also when there was nothing to merge
        (RV(unlock)). When the merge fails, the lock stays for the caller's cleanup.
      - The backup role gives the VM's lock back here for VMs with file disks only.
    type: dict
    suboptions:
      path:
        description: The lock file, as given to M(vmbackup.libvirt.backup_lock) or M(vmbackup.libvirt.vm_info).
        type: path
        required: true
      owner:
        description: The lock's owner, usually the run's ID.
        type: str
        required: true
notes:
  - Xen through libvirt has no disk-only snapshots; a running Xen VM's file disks are refused
    with a clear message (use LVM or RBD disks, or back the VM up shut off).
requirements:
  - qemu-img on the hypervisor.
  - python lxml on the hypervisor.
"""

EXAMPLES = r"""
- name: Freeze web1's file disks for backup 20261122T010000Z
  vmbackup.libvirt.kvm_snapshot:
    name: web1
    snapshot: 20261122T010000Z
    quiesce: preferred
  register: snap

- name: After the transfer, keep only this backup's overlay for the next incremental
  vmbackup.libvirt.kvm_snapshot:
    name: web1
    snapshot: 20261122T010000Z
    state: kept
    unlock:  # the lock vm_info took for this backup
      path: /var/lock/vmbackup/web1.lock
      owner: "{{ run_id }}"

- name: Put web1 back on its original files
  vmbackup.libvirt.kvm_snapshot:
    name: web1
    state: merged
"""

RETURN = r"""
running:
  description: Whether the VM was running.
  returned: always
  type: bool
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
repaired:
  description: With O(state=present), the part of RV(actions) that O(repair) did.
  returned: state=present
  type: list
  elements: str
disks:
  description: The file disks handled, after the change.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: Target device.
      type: str
    active:
      description: The image the VM writes to.
      type: str
    base:
      description: The VM's own image below every overlay of ours.
      type: str
    base_format:
      description: Format of the base (qcow2 or raw).
      type: str
    overlays:
      description: Overlays of ours, top first.
      type: list
      elements: str
    frozen:
      description: The image right below the active overlay, frozen at the snapshot; V(null) without overlay.
      type: str
    frozen_format:
      description: Format of RV(disks[].frozen).
      type: str
    frozen_is_overlay:
      description: Whether the frozen image is the kept overlay of an earlier backup (it then holds only the changes since that backup).
      type: bool
    parent_snapshot:
      description: The snapshot ID of that earlier backup, when RV(disks[].frozen_is_overlay).
      type: str
    virtual_size:
      description: Disk capacity in bytes.
      type: int
    chain:
      description: The whole chain, top first.
      type: list
      elements: dict
unlock:
  description:
    - With O(unlock), the lock given back - C(changed) (whether a lock of O(unlock.owner) was there), C(held)
      (V(false)), C(path) (the file removed, or V(null)).
  returned: with O(unlock) and success
  type: dict
  sample: {changed: true, held: false, path: /var/lock/vmbackup/web1.lock}
excluded:
  description: Disks left alone, with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{"target": "hdc", "reason": "device is a cdrom"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._kvm_snapshot import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
