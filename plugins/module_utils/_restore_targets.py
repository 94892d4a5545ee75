# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which restore targets a backup may name: the repository is not trusted (pure decisions).

A disk not in the user's disk map is restored where the backup's manifest says it came from
(or into a path derived from it). The manifest lives in the repository, so a tampered or
damaged one could name any path on the target hypervisor. A target is therefore written only
when it is trusted:

- the user named it (``origin: user``): a ``restore_disk_map`` path, or a file in
  ``restore_directory``;
- the target hypervisor vouches for it: it is one of the disk sources (or the NVRAM) of the VM
  of that name defined there now, as libvirt there says (not the repository);
- it is a NEW file inside an allowed directory: the target paths of the hypervisor's libvirt
  storage pools of type dir, fs and netfs, ``DEFAULT_ALLOWED_DIRS`` and ``restore_allowed_dirs``.
  Paths are compared resolved (realpath: no ``..``, no symlink out of the directory).

A new LV in a volume group, or a new RBD image in a pool, destroys nothing and may be created
where the manifest says. Any other target from the manifest is refused, with ``force`` too: an
existing file, block device, LV or RBD image that is not a disk of that VM (an allowed directory
vouches for new files only, so a forced restore cannot replace another VM's image in a shared
directory), and a new file outside the allowed directories.
"""

from __future__ import annotations

import os

DEFAULT_ALLOWED_DIRS = ("/var/lib/libvirt/images", "/var/lib/libvirt/qemu/nvram")
POOL_TYPES = ("dir", "fs", "netfs")


def inside(path, directory):
    """Whether the (resolved) ``path`` is ``directory`` itself or below it."""
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory if directory == "/" else directory + "/")


def plain_path(path):
    """An absolute path with no ``.`` or ``..`` component and no doubled ``/``."""
    return bool(path) and path.startswith("/") and os.path.normpath(path) == path


def refusal(entry, found, vouched):
    """Why the target of one restore plan entry may not be written, or None when it may.

    ``entry``: the plan entry (``target``, ``type`` file/block/rbd, ``path``, ``origin``).
    ``found``: what the target is on the hypervisor now (``exists``, ``kind``), with ``real``
    (its resolved path) and ``keys`` (the names it is known by: path, real path, ``lv:VG/LV``).
    ``vouched``: what the hypervisor vouches for: ``vm`` (the VM of the restored name),
    ``defined`` (whether it exists there), ``keys`` (the names of its disk sources and NVRAM)
    and ``dirs`` (the resolved allowed directories).
    """
    if entry.get("origin") == "user":
        return None
    path, kind = entry["path"], entry.get("type", "file")
    if kind != "rbd" and not plain_path(path):
        return "it is not a plain absolute path (a relative path, '.' or '..')"
    if set(found.get("keys") or ()) & set(vouched.get("keys") or ()):
        return None  # a disk of the VM of this name, as libvirt on the hypervisor says
    vm = vouched.get("vm") or "?"
    whose = ("it is not a disk of VM %s, which is defined on this host" % vm if vouched.get("defined")
             else "no VM %s is defined on this host to vouch for it" % vm)
    if found.get("exists"):
        what = {"file": "file", "lv": "logical volume", "device": "block device",
                "rbd": "RBD image"}.get(found.get("kind"), "target")
        return "this %s exists and %s; it is not replaced, not even with restore_force" % (what, whose)
    if kind == "file":
        real = found.get("real") or path
        dirs = list(vouched.get("dirs") or ())
        if any(inside(real, d) for d in dirs):
            return None
        return ("it would be a new file%s outside the allowed directories (%s)"
                % ("" if real == path else " (%s)" % real, ", ".join(dirs) or "none"))
    return None  # a new LV or RBD image destroys nothing


def allowed_dirs(pool_paths, user_dirs, resolve=os.path.realpath):
    """The resolved allowed directories: pools, the defaults, the user's (in that order, once each)."""
    out = []
    for d in list(pool_paths or ()) + list(DEFAULT_ALLOWED_DIRS) + list(user_dirs or ()):
        if d and d.startswith("/"):
            real = resolve(d)
            if real not in out:
                out.append(real)
    return out


def refusal_message(vm, host, refused):
    """The error of a restore whose targets named by the repository are refused."""
    return ("restore of VM %s on host %s refused: %s; nothing was written. These targets come from the "
            "backup's manifest in the repository, not from you, and a tampered or damaged repository must "
            "not choose where a restore writes. Map each disk to its target with vmbackup_restore_disk_map "
            "(role variable restore_disk_map; with restore_force=true to replace an existing one), or add "
            "its directory to vmbackup_restore_allowed_dirs (restore_allowed_dirs) for a new file there."
            % (vm, host, "; ".join(refused)))
