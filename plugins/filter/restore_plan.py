# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import re

from ansible_collections.vmbackup.libvirt.plugins.module_utils._restore_volumes import lv_of_path

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

EXTENSIONS = {"qcow2": "qcow2", "raw": "raw"}
# A disk's target name goes into file and LV names: a device name (vda, sdb, hdc, xvda), nothing more.
TARGET_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def _disk_chain(chain, target):
    """The images of one disk, from its last full backup up to the selected backup."""
    links = []
    for link in chain:
        for d in link.get("disks", []):
            if d["target"] == target:
                if d.get("mode") == "full":
                    links = []
                links.append(d)
    return links


def restore_plan(backup, chain, name, disk_map=None, directory=""):
    disk_map = disk_map or {}
    renamed = name != backup["vm"]
    plan = []
    for disk in backup["disks"]:
        target = disk["target"]
        if not TARGET_RE.match(str(target)):
            raise ValueError("disk target %r in the manifest of backup %s is not a device name (vda, sdb, ...); "
                             "the backup cannot be restored as it is" % (target, backup.get("backup_id")))
        backend = disk.get("backend", "file")
        spec = dict(disk_map.get(target) or {})
        kind = spec.get("type") or {"rbd": "rbd", "block": "block"}.get(backend, "file")
        fmt = spec.get("format") or ("raw" if kind != "file" else disk.get("format") or "raw")
        if fmt not in EXTENSIONS:
            raise ValueError("disk %s: format %r is not supported (qcow2 and raw are)" % (target, fmt))
        if backend != "rbd" and kind == "rbd":
            raise ValueError("disk %s: restoring a %s disk into an RBD image is not supported; map it to a "
                             "file or a block device" % (target, backend))
        path = spec.get("path") or spec.get("name")
        # The user named it (the map, or the directory for files), or the manifest did.
        origin = "user" if path or (kind == "file" and directory) else "repository"
        if not path:
            source = disk.get("source") or ""
            if kind == "file" and backend != "file":
                folder = directory or "/var/lib/libvirt/images"
                path = os.path.join(folder, "%s-%s.%s" % (name, target, EXTENSIONS[fmt]))
            elif kind == "file" and (renamed or directory):
                folder = directory or os.path.dirname(source) or "/var/lib/libvirt/images"
                path = os.path.join(folder, "%s-%s.%s" % (name, target, EXTENSIONS[fmt]))
            elif kind == "rbd" and renamed:
                path = "%s/%s-%s" % (source.rsplit("/", 1)[0], name, target)
            elif kind == "block" and backend == "block" and renamed:
                # A new LV in the volume group the disk came from (/dev/VG/LV or /dev/mapper/VG-LV).
                ref = lv_of_path(source)
                if ref is None:
                    raise ValueError("disk %s: its source %s is not an LV path (/dev/VG/LV or /dev/mapper/VG-LV), "
                                     "so a restore under a new name has no volume group to create it in; map "
                                     "it with disk_map" % (target, source))
                path = "/dev/%s/%s-%s" % (ref[0], name, target)
            else:
                path = source
        links = _disk_chain(chain, target)
        plan.append({
            "target": target,
            "type": kind,
            "path": path,
            "origin": origin,
            "format": fmt,
            "size": disk.get("virtual_size"),
            "backend": backend,
            "image": links[-1]["image"],
            "verify": [{"path": d["image"], "sha256": d["sha256"]} for d in links],
            "auth": disk.get("auth"),
            "hosts": disk.get("hosts"),
        })
    return plan


class FilterModule:
    def filters(self):
        return {"restore_plan": restore_plan}
