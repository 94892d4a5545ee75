# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._restore_plan import plan as restore_plan

DOCUMENTATION = r"""
name: restore_plan
short_description: Decide where each disk of a backup is restored
version_added: 0.1.0
description:
  - From a backup (M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=select)), the restored VM's name
    and a storage mapping, builds one entry per disk - the target (type, path, format, size),
    the chain's top image in the repository, and the files to verify (path and sha256) first.
  - A disk not in the mapping goes where it came from when the name is unchanged, and beside
    it (or into O(directory)) as C(NAME-TARGET.FORMAT) under a new name.
  - Each entry says where its path comes from, C(origin) - V(user) (a O(disk_map) path, or
    O(directory)) or V(repository) (the backup's manifest). M(vmbackup.libvirt.restore_volumes)
    writes a V(repository) target only when the target hypervisor vouches for it.
positional: chain, name, disk_map, directory
options:
  _input:
    description: The selected backup (RV(vmbackup.libvirt.backup_repo#module:backup)).
    type: dict
    required: true
  chain:
    description: The chain (RV(vmbackup.libvirt.backup_repo#module:chain)).
    type: list
    elements: dict
    required: true
  name:
    description: The restored VM's name.
    type: str
    required: true
  disk_map:
    description: Per target, a dict with C(type), C(path), C(format).
    type: dict
  directory:
    description: Directory for file disks not in O(disk_map).
    type: str
"""

EXAMPLES = r"""
- name: Plan the disks
  ansible.builtin.set_fact:
    plan: "{{ selected.backup | vmbackup.libvirt.restore_plan(selected.chain, 'web1-test', {}, '') }}"
"""

RETURN = r"""
_value:
  description: One entry per disk - target, type, path, origin, format, size, image, backend, verify.
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"restore_plan": restore_plan}
