# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import steps_left

DOCUMENTATION = r"""
name: backup_steps_left
short_description: What a failed or finished VM backup still has to undo, from its steps' results
version_added: 0.5.0
description:
  - Reads where one VM's backup stands from the registered results of its steps (a step that never
    ran is V({})), and says what its rescue and always sections still have to do - put the VM back on
    its chain, remove the partial backup, remove LVM snapshots, give back the locks. The backup role
    needs no stage variable of its own.
options:
  _input:
    description:
      - The VM's registered results - C(begin) (M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=begin)),
        C(info) (M(vmbackup.libvirt.vm_info) with its lock), C(plan) (P(vmbackup.libvirt.backup_plan#filter)), C(snapshot)
        (M(vmbackup.libvirt.kvm_snapshot) O(vmbackup.libvirt.kvm_snapshot#module:state=present)), C(commit), C(abort),
        C(keep) (M(vmbackup.libvirt.kvm_snapshot) O(vmbackup.libvirt.kvm_snapshot#module:state=kept) or V(merged)).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Remove the partial backup
  vmbackup.libvirt.backup_repo:
    path: /srv/backup
    vm: web1
    action: abort
    backup_id: "{{ begun.backup_id }}"
  when: (steps | vmbackup.libvirt.backup_steps_left).abort
"""

RETURN = r"""
_value:
  description: What is left to do.
  type: dict
  contains:
    begun:
      description: Whether begin succeeded (the backup has an ID and holds the repository's lock).
      type: bool
    complete:
      description: Whether commit wrote the manifest.
      type: bool
    rollback:
      description: Whether the snapshot step ran and the backup is not complete (put the VM back on its chain).
      type: bool
    abort:
      description: Whether the partial backup is to be removed.
      type: bool
    remove_lvm:
      description: Whether the VM has LVM disks whose snapshots of this backup are to be removed.
      type: bool
    lvm_volumes:
      description: The LVM volumes of the VM.
      type: list
      elements: str
    unlock_hypervisor:
      description: Whether the VM's lock on the hypervisor is still to be given back.
      type: bool
    unlock_repository:
      description: Whether the VM's lock in the repository is still to be given back (commit or abort did not).
      type: bool
    repository_lock:
      description: The repository's lock file that begin took, or V(null).
      type: str
"""


class FilterModule:
    def filters(self):
        return {"backup_steps_left": steps_left}
