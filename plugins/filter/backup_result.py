# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import record as backup_result

DOCUMENTATION = r"""
name: backup_result
short_description: The record of one VM's backup in the run's results
version_added: 0.4.0
description:
  - Builds the VM's entry of the backup role's results (shown, handed to AWX, written into the run's
    report) from the registered results of the backup's steps.
  - For a complete backup (O(result=ok)) - C(vm), C(hypervisor), C(result), C(backup_id), C(type), C(parent),
    C(bytes_sent), C(bytes_stored), C(disks), C(disk_modes) (per disk C(mode) and C(reason)), C(repaired),
    C(pruned), C(excluded), C(warnings), C(started), C(finished).
  - For a failed one (O(result=failed)) - C(vm), C(hypervisor), C(result), C(backup_id), C(complete), C(warnings),
    C(error) (the failed task and its message; a loop's failed items' messages) and C(rollback).
  - For the cleanup playbook (O(result=cleanup)) - C(vm) and C(repaired) (the partial backups removed, then what
    the repair did).
  - O(result=repaired) returns the list of what the repair did (C(repair.yml)) - the actions of
    M(vmbackup.libvirt.kvm_snapshot) O(vmbackup.libvirt.kvm_snapshot#module:state=repaired) and
    M(vmbackup.libvirt.lvm_snapshot), and the RBD snapshots the loop of M(vmbackup.libvirt.rbd_export) removed.
positional: result
options:
  _input:
    description:
      - The run's facts. O(result=ok) - C(vm), C(hypervisor), C(begin), C(commit), C(snapshot), C(repaired),
        C(prune), C(disk_plan). O(result=failed) - C(vm), C(hypervisor), C(backup_id), C(stage), C(disk_plan),
        C(failed_task), C(failed_result), C(rollback). O(result=cleanup) - C(vm), C(clean) (backup_repo
        action=clean), C(repaired). O(result=repaired) - C(kvm), C(lvm), C(rbd).
    type: dict
    required: true
  result:
    description: Whether the backup completed.
    type: str
    choices: [ok, failed, cleanup, repaired]
    default: ok
"""

EXAMPLES = r"""
- name: Record the result
  ansible.builtin.set_fact:
    results: "{{ results + [{'vm': 'web1', 'hypervisor': 'hv1', 'begin': begun, 'commit': committed} | vmbackup.libvirt.backup_result('ok')] }}"
"""

RETURN = r"""
_value:
  description: The VM's record (a list for O(result=repaired)).
  type: raw
"""


class FilterModule:
    def filters(self):
        return {"backup_result": backup_result}
