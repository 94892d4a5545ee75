# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each disk of a backup is restored (pure decisions: no Ansible, no I/O).

- ``plan(backup, chain, name, disk_map, directory)``: one entry per disk of the selected backup
  (backup_repo action=select's ``backup`` and ``chain``): the target's type, path and format,
  where the path comes from (``origin``: ``user`` or ``repository``, which _restore_targets
  checks), and the images of the disk's chain to verify, its last full backup first.
- ``target_path(...)``: a disk's path when the user's disk map names none.

A disk not in the map goes where it came from when the name is unchanged, and beside it (or into
``directory``) as ``NAME-TARGET.FORMAT`` under a new name; a new LV goes into the volume group the
disk came from, a new RBD image into its pool.
"""

from __future__ import annotations

import os
import re

from ansible_collections.vmbackup.libvirt.plugins.module_utils._restore_volumes import lv_of_path

EXTENSIONS = {"qcow2": "qcow2", "raw": "raw"}
# A disk's target name goes into file and LV names: a device name (vda, sdb, hdc, xvda), nothing more.
TARGET_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
IMAGES_DIR = "/var/lib/libvirt/images"  # libvirt's default pool: where a disk with no folder of its own goes


def disk_chain_links(chain, target):
    """[(backup manifest, disk entry)] of one disk, from its last full backup up to the selected one."""
    links = []
    for link in chain:
        for d in link.get("disks", []):
            if d["target"] == target:
                if d.get("mode") == "full":
                    links = []
                links.append((link, d))
    return links


def disk_chain(chain, target):
    """The images of one disk, from its last full backup up to the selected backup."""
    return [d for _link, d in disk_chain_links(chain, target)]


def target_path(disk, kind, fmt, name, renamed, directory):
    """The path of a disk restored as ``kind`` (file, block, rbd) that the disk map does not name."""
    target = disk["target"]
    backend = disk.get("backend", "file")
    source = disk.get("source") or ""
    if kind == "file" and backend != "file":
        return os.path.join(directory or IMAGES_DIR, "%s-%s.%s" % (name, target, EXTENSIONS[fmt]))
    if kind == "file" and (renamed or directory):
        folder = directory or os.path.dirname(source) or IMAGES_DIR
        return os.path.join(folder, "%s-%s.%s" % (name, target, EXTENSIONS[fmt]))
    if kind == "rbd" and renamed:
        return "%s/%s-%s" % (source.rsplit("/", 1)[0], name, target)
    if kind == "block" and backend == "block" and renamed:
        # A new LV in the volume group the disk came from (/dev/VG/LV or /dev/mapper/VG-LV).
        ref = lv_of_path(source)
        if ref is None:
            raise ValueError("disk %s: its source %s is not an LV path (/dev/VG/LV or /dev/mapper/VG-LV), "
                             "so a restore under a new name has no volume group to create it in; map "
                             "it with disk_map" % (target, source))
        return "/dev/%s/%s-%s" % (ref[0], name, target)
    return source


def plan(backup, chain, name, disk_map=None, directory=""):
    """The restore plan of ``backup`` as VM ``name``; ValueError for a disk that cannot be restored so."""
    disk_map = disk_map or {}
    renamed = name != backup["vm"]
    out = []
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
        links = disk_chain(chain, target)
        out.append({
            "target": target,
            "type": kind,
            "path": path or target_path(disk, kind, fmt, name, renamed, directory),
            "origin": origin,
            "format": fmt,
            "size": disk.get("virtual_size"),
            "backend": backend,
            "image": links[-1]["image"],
            "verify": [{"path": d["image"], "sha256": d["sha256"]} for d in links],
            "auth": disk.get("auth"),
            "hosts": disk.get("hosts"),
        })
    return out
