# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup repository on the backup node.

Layout::

    REPO/VM/BACKUP_ID/manifest.json   written last and atomically: a backup exists only with it
    REPO/VM/BACKUP_ID/domain.xml      the domain definition (virsh dumpxml --inactive --security-info)
    REPO/VM/BACKUP_ID/TARGET.qcow2    each disk: a whole image (full) or a delta whose
                                       backing file is ../PARENT_ID/TARGET.qcow2
    REPO/VM/BACKUP_ID/damaged.json    written by verify when a file does not check out: the
                                       backup (and every backup that builds on it) is then
                                       never offered for restore nor used as a parent
    REPO/VM/.partial-BACKUP_ID/       a backup being written; never listed, never a parent

Backup IDs are UTC times (20261122T013000Z), so they sort by time.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files

MANIFEST = "manifest.json"
# Written by verify beside the manifest of a backup whose data does not check out.
DAMAGED = "damaged.json"
FORMAT_VERSION = 1
PARTIAL_PREFIX = ".partial-"
ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
NAME_RE = re.compile(r"^[^/\x00]+$")


def new_backup_id(now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def parse_time(value):
    """A backup ID or an ISO 8601 time as an aware datetime."""
    if ID_RE.match(value):
        return datetime.datetime.strptime(value[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def makedirs_private(path):
    """Create path and its missing parents with mode 0700 (kept for callers; see _files)."""
    return _files.makedirs_private(path)


class Repository:
    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))

    def vm_dir(self, vm):
        if not NAME_RE.match(vm) or vm in (".", ".."):
            raise VmbackupError("invalid VM name %r for a repository path" % vm)
        return os.path.join(self.path, vm)

    def backup_dir(self, vm, backup_id):
        return os.path.join(self.vm_dir(vm), backup_id)

    def partial_dir(self, vm, backup_id):
        return os.path.join(self.vm_dir(vm), PARTIAL_PREFIX + backup_id)

    def lock_path(self, vm):
        """The VM's lock in this repository (held by the run that backs it up)."""
        return os.path.join(self.path, ".locks", os.path.basename(self.vm_dir(vm)) + ".lock")

    # --- reading ----------------------------------------------------------------
    def vms(self):
        if not os.path.isdir(self.path):
            return []
        return sorted(d for d in os.listdir(self.path) if os.path.isdir(os.path.join(self.path, d))
                      and not d.startswith("."))

    def manifest(self, vm, backup_id):
        path = os.path.join(self.backup_dir(vm, backup_id), MANIFEST)
        try:
            with open(path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise VmbackupError("manifest %s is not valid JSON (%s): the backup is damaged; run verify" % (path, exc))

    def damage(self, vm, backup_id):
        """The verify findings that mark a backup damaged, or None."""
        path = os.path.join(self.backup_dir(vm, backup_id), DAMAGED)
        try:
            with open(path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError:
            return {"problems": ["%s is unreadable" % path]}

    def backups(self, vm, usable_only=False):
        """Complete backups of a VM, oldest first (those with a manifest).

        ``usable_only`` leaves out backups marked damaged and those whose chain needs one
        that is damaged or missing: they are never a parent and never restored.
        """
        vdir = self.vm_dir(vm)
        if not os.path.isdir(vdir):
            return []
        found = []
        usable = set()
        for entry in sorted(os.listdir(vdir)):
            if entry.startswith("."):
                continue
            manifest = self.manifest(vm, entry)
            if manifest is None:
                continue
            damage = self.damage(vm, entry)
            parent = manifest.get("parent")
            ok = damage is None and manifest.get("status", "complete") == "complete" and (not parent or parent in usable)
            if ok:
                usable.add(entry)
            if usable_only and not ok:
                continue
            if not usable_only:
                manifest = dict(manifest, usable=ok, damaged=damage is not None)
            found.append(manifest)
        return found

    def partials(self, vm):
        vdir = self.vm_dir(vm)
        if not os.path.isdir(vdir):
            return []
        return sorted(e[len(PARTIAL_PREFIX):] for e in os.listdir(vdir) if e.startswith(PARTIAL_PREFIX))

    def chain(self, vm, backup_id):
        """Manifests from the full backup up to ``backup_id``; fails if a link is missing."""
        out = []
        current = backup_id
        while current:
            manifest = self.manifest(vm, current)
            if manifest is None:
                raise VmbackupError(
                    "backup %s of VM %s in repository %s is missing or incomplete, but %s needs it "
                    "(chain %s)" % (current, vm, self.path, backup_id,
                                    " <- ".join(m["backup_id"] for m in reversed(out)) or backup_id))
            if manifest.get("status", "complete") != "complete":
                raise VmbackupError("backup %s of VM %s is marked %s and cannot be used"
                                    % (current, vm, manifest.get("status")))
            out.append(manifest)
            current = manifest.get("parent")
        return list(reversed(out))

    def select(self, vm, backup="latest", before=None):
        """The manifest of the backup to restore: ``latest``, an ID, or the newest at or before a time."""
        backups = self.backups(vm, usable_only=True)
        usable = ", ".join(m["backup_id"] for m in backups) or "none"
        explicit = backup not in (None, "", "latest") and not before
        if explicit:
            for m in backups:
                if m["backup_id"] == backup:
                    return m
            if self.manifest(vm, backup) is not None:
                damage = self.damage(vm, backup)
                why = "; ".join((damage or {}).get("problems", [])) or "it builds on a damaged or missing backup"
                raise VmbackupError("backup %s of VM %s is damaged (%s); restore another one (usable: %s)"
                                    % (backup, vm, why, usable))
            raise VmbackupError("backup %s of VM %s is not in repository %s (usable backups: %s)"
                                % (backup, vm, self.path, usable))
        if not backups:
            damaged = [m for m in self.backups(vm) if not m.get("usable")]
            raise VmbackupError("repository %s holds no complete, undamaged backup of VM %s%s" % (
                self.path, vm, " (damaged: %s)" % ", ".join(m["backup_id"] for m in damaged) if damaged else ""))
        if before:
            limit = parse_time(before)
            eligible = [m for m in backups if parse_time(m["backup_id"]) <= limit]
            if not eligible:
                raise VmbackupError("no usable backup of VM %s at or before %s (oldest is %s)"
                                    % (vm, before, backups[0]["backup_id"]))
            return eligible[-1]
        return backups[-1]

    # --- writing ----------------------------------------------------------------
    # Durable and private: every directory is 0700 and every file 0600 from creation on, and
    # a backup becomes visible (manifest, rename) only after each file it names and each
    # directory on its path is on stable storage.
    def ensure(self):
        """The repository directory, created private (0700) when missing, made private when looser.

        Returns warnings (one per directory whose mode was tightened) for the module result.
        """
        _files.makedirs_private(self.path)
        warnings = []
        for path in [self.path] + [os.path.join(self.path, d) for d in self.vms()]:
            loose = _files.loose_mode(path)
            if loose is not None:
                _files.make_private(path, _files.DIR_MODE)
                warnings.append(
                    "repository directory %s had mode %04o (readable by others than root); set it to %04o: "
                    "backups hold whole disks and the domain XML's secrets" % (path, loose, _files.DIR_MODE))
        return warnings

    def begin(self, vm, backup_id):
        self.ensure()
        final = self.backup_dir(vm, backup_id)
        if os.path.exists(final):
            raise VmbackupError("backup %s of VM %s already exists in %s" % (backup_id, vm, self.path))
        partial = self.partial_dir(vm, backup_id)
        # New directories are 0700 and their parents fsynced (the repository root when the VM's
        # directory is new, the VM's directory for the partial one).
        _files.makedirs_private(partial)
        return partial

    def commit(self, vm, backup_id, manifest, files):
        """Write ``files`` ({name: bytes}) and the manifest, then make the backup visible.

        Order (what a crash may leave): every image and file fsynced, then the partial
        directory fsynced, then the manifest (atomic), then the rename into place and an fsync
        of the VM's directory and of the repository root. Before the rename, a crash leaves only
        a partial directory; after it, every byte the manifest names is on stable storage.
        """
        partial = self.partial_dir(vm, backup_id)
        if not os.path.isdir(partial):
            raise VmbackupError("backup %s of VM %s was not begun (no %s)" % (backup_id, vm, partial))
        for name, data in files.items():
            _files.write_atomic(os.path.join(partial, name), data)
        for disk in manifest.get("disks", []):
            path = os.path.join(partial, disk["file"])
            if not os.path.exists(path):
                raise VmbackupError("disk image %s of backup %s is missing; the backup stays incomplete" % (path, backup_id))
            # Whoever wrote it (qemu-img, a stream), it is flushed and private before it is named.
            _files.make_private(path, _files.FILE_MODE)
            _files.fsync_file(path)
        _files.fsync_dir(partial)
        _files.write_atomic(os.path.join(partial, MANIFEST),
                            (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        final = self.backup_dir(vm, backup_id)
        os.rename(partial, final)
        _files.fsync_dir(self.vm_dir(vm))
        _files.fsync_dir(self.path)
        return final

    def clean(self, vm):
        """Remove every partial backup of a VM (call only while holding the VM's lock)."""
        removed = []
        for backup_id in self.partials(vm):
            shutil.rmtree(self.partial_dir(vm, backup_id))
            removed.append(backup_id)
        return removed

    def mark_damaged(self, vm, backup_id, problems):
        _files.write_atomic(os.path.join(self.backup_dir(vm, backup_id), DAMAGED),
                            (json.dumps({"problems": problems}, indent=2) + "\n").encode("utf-8"))

    def clear_damaged(self, vm, backup_id):
        try:
            os.unlink(os.path.join(self.backup_dir(vm, backup_id), DAMAGED))
            return True
        except FileNotFoundError:
            return False

    def abort(self, vm, backup_id):
        partial = self.partial_dir(vm, backup_id)
        if os.path.isdir(partial):
            shutil.rmtree(partial)
            return True
        return False
