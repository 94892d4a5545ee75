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
    REPO/VM/.deleting-BACKUP_ID/      a backup being pruned: made invisible first, then deleted
    REPO/.locks/VM.lock               the VM's lock (_lock), held by the run that backs it up

Backup IDs are UTC times (20261122T013000Z), so they sort by time.

Nothing read from a repository is trusted: it may be damaged or written by someone else.
Backup IDs (options, directory names, a manifest's ``backup_id`` and ``parent``) must be IDs;
every name a manifest gives (disk ``file``, ``domain_xml``, ``files``) is one plain file name
that resolves (symlinks followed) inside the backup's directory; a qcow2 delta's backing file
must be exactly ``../PARENT/FILE`` of the same disk in the parent backup, and no image may name
an external data file. The reading methods below check that before anything reads or writes
(``ManifestError`` / ``VmbackupError`` name the backup and what is wrong). A manifest that
cannot be read (not JSON, wrong shape) makes its backup damaged: listed as such, never used,
and the VM's other backups are not affected.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import struct

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files

MANIFEST = "manifest.json"
# Written by verify beside the manifest of a backup whose data does not check out.
DAMAGED = "damaged.json"
FORMAT_VERSION = 1
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"
LOCK_DIR = ".locks"
ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?\Z")
NAME_RE = re.compile(r"^[^/\x00]+\Z")
# A file named by a manifest: one path component, no leading dot or dash.
FILE_RE = re.compile(r"^[A-Za-z0-9_+@][A-Za-z0-9_.+@-]*\Z")
TARGET_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_INCOMPAT_DATA_FILE = 1 << 2


class ManifestError(VmbackupError):
    """A manifest (or what it names) that cannot be trusted: its backup is damaged."""


def check_id(backup_id, what="backup ID"):
    """``backup_id`` if it is a backup ID (20261122T013000Z or 20261122T013000Z-N); VmbackupError if not."""
    if not isinstance(backup_id, str) or not ID_RE.match(backup_id):
        raise VmbackupError("invalid %s %r: a backup ID looks like 20261122T013000Z (or with a -N suffix); "
                            "nothing was read or written" % (what, backup_id))
    return backup_id


def entry_id(entry):
    """The backup ID a VM directory's entry names: ``ID`` or ``.partial-ID`` (unchecked)."""
    return entry[len(PARTIAL_PREFIX):] if entry.startswith(PARTIAL_PREFIX) else entry


def check_file_name(name, what):
    if not isinstance(name, str) or not FILE_RE.match(name) or name in (".", ".."):
        raise ManifestError("%s %r is not a plain file name inside the backup directory" % (what, name))
    return name


def inside(path, root):
    """Whether ``path``, symlinks resolved, is ``root`` or below it (root resolved too)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def qcow2_header_names(path):
    """(backing file name as written or None, whether an external data file is named) of a qcow2 image.

    Read with plain Python (no qemu-img, which would open what the header names). Not a
    qcow2 file: (None, False).
    """
    try:
        with open(path, "rb") as fh:
            header = fh.read(104)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None, False
            version = struct.unpack(">I", header[4:8])[0]
            offset, size = struct.unpack(">QI", header[8:20])
            backing = None
            if offset and size:
                if size > 1023:
                    return "<a backing name of %d bytes>" % size, False
                fh.seek(offset)
                backing = fh.read(size).decode("utf-8", "replace")
            data_file = False
            if version >= 3 and len(header) >= 104 and (not offset or offset >= 104):
                incompat = struct.unpack(">Q", header[72:80])[0]
                data_file = bool(incompat & QCOW2_INCOMPAT_DATA_FILE)
                hlen = struct.unpack(">I", header[100:104])[0]
                pos = hlen if hlen >= 104 else 104
                for _ext in range(64):  # header extensions, up to the end marker
                    fh.seek(pos)
                    raw = fh.read(8)
                    if len(raw) < 8:
                        break
                    kind, length = struct.unpack(">II", raw)
                    if kind == 0:
                        break
                    if kind == QCOW2_EXT_DATA_FILE:
                        data_file = True
                    pos += 8 + ((length + 7) // 8) * 8
            return backing, data_file
    except OSError:
        return None, False


def qcow2_backing(path):
    """The backing file named in a qcow2 header (as written), or None."""
    return qcow2_header_names(path)[0]


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


def check_manifest(manifest, vm, backup_id):
    """ManifestError unless ``manifest`` has the shape of the manifest of backup ``backup_id`` of ``vm``."""
    where = "manifest of backup %s of VM %s" % (backup_id, vm)
    if not isinstance(manifest, dict):
        raise ManifestError("the %s is not a JSON object" % where)
    if manifest.get("backup_id") != backup_id:
        raise ManifestError("the %s says it is backup %r" % (where, manifest.get("backup_id")))
    if manifest.get("vm") not in (None, vm):
        raise ManifestError("the %s says it is of VM %r" % (where, manifest.get("vm")))
    parent = manifest.get("parent")
    if parent is not None and (not isinstance(parent, str) or not ID_RE.match(parent) or parent >= backup_id):
        raise ManifestError("the %s names the parent %r, which is not an earlier backup ID" % (where, parent))
    disks = manifest.get("disks", [])
    if not isinstance(disks, list) or not all(isinstance(d, dict) for d in disks):
        raise ManifestError("the %s has no list of disks" % where)
    targets = set()
    for disk in disks:
        target = disk.get("target")
        if not isinstance(target, str) or not TARGET_RE.match(target) or target in targets:
            raise ManifestError("the %s has a disk with the target %r (missing, repeated or not a name)"
                                % (where, target))
        targets.add(target)
        check_file_name(disk.get("file"), "the %s: disk %s's file" % (where, target))
    check_file_name(manifest.get("domain_xml") or "domain.xml", "the %s: domain_xml" % where)
    files = manifest.get("files") or []
    if not isinstance(files, list):
        raise ManifestError("the %s: files is not a list" % where)
    for name in files:
        check_file_name(name, "the %s: extra file" % where)
    if not isinstance(manifest.get("status", "complete"), str):
        raise ManifestError("the %s: status is not a string" % where)
    return manifest


class Repository:
    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))

    def vm_dir(self, vm):
        if not NAME_RE.match(vm) or vm in (".", ".."):
            raise VmbackupError("invalid VM name %r for a repository path" % vm)
        return os.path.join(self.path, vm)

    def backup_dir(self, vm, backup_id):
        return os.path.join(self.vm_dir(vm), check_id(backup_id))

    def partial_dir(self, vm, backup_id):
        return os.path.join(self.vm_dir(vm), PARTIAL_PREFIX + check_id(backup_id))

    def deleting_dir(self, vm, backup_id):
        """Where a backup being removed goes first (invisible at once, deleted after)."""
        return os.path.join(self.vm_dir(vm), DELETING_PREFIX + check_id(backup_id))

    def lock_path(self, vm):
        """The VM's lock in this repository (held by the run that backs it up)."""
        return os.path.join(self.path, LOCK_DIR, os.path.basename(self.vm_dir(vm)) + ".lock")

    # --- reading ----------------------------------------------------------------
    def vms(self):
        if not os.path.isdir(self.path):
            return []
        return sorted(d for d in os.listdir(self.path) if os.path.isdir(os.path.join(self.path, d))
                      and not d.startswith(".") and NAME_RE.match(d))

    def _read_manifest(self, vm, backup_id):
        """The manifest as stored, None if there is none; ManifestError if it cannot be trusted."""
        bdir = self.backup_dir(vm, backup_id)
        if not inside(bdir, self.path) or os.path.realpath(bdir) != os.path.join(
                os.path.realpath(self.vm_dir(vm)), backup_id):
            raise ManifestError("backup directory %s leads outside the repository (a symlink?)" % bdir)
        path = os.path.join(bdir, MANIFEST)
        if os.path.islink(path) and not inside(path, bdir):
            raise ManifestError("manifest %s is a symlink out of its backup directory" % path)
        try:
            with open(path) as fh:
                manifest = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ManifestError("manifest %s cannot be read (%s)" % (path, exc))
        check_manifest(manifest, vm, backup_id)
        return manifest

    def manifest(self, vm, backup_id):
        """The manifest of one backup, or None if it has none (not complete, or not there).

        VmbackupError if the ID is not an ID, ManifestError (with what is wrong) if the
        manifest is unreadable or names anything outside its backup directory.
        """
        manifest = self._read_manifest(vm, backup_id)
        if manifest is not None:
            self.check_files(vm, backup_id, manifest)
        return manifest

    def check_files(self, vm, backup_id, manifest):
        """Every file the manifest names (and nvram.fd) is a regular file inside the backup directory."""
        bdir = self.backup_dir(vm, backup_id)
        names = [d["file"] for d in manifest.get("disks") or []]
        names += [manifest.get("domain_xml") or "domain.xml", "nvram.fd"] + list(manifest.get("files") or [])
        for name in names:
            path = os.path.join(bdir, name)
            if not os.path.lexists(path):
                continue
            if not inside(path, bdir):
                raise ManifestError("%s of backup %s of VM %s points outside its backup directory (to %s)"
                                    % (name, backup_id, vm, os.path.realpath(path)))
            if not os.path.isfile(path):
                raise ManifestError("%s of backup %s of VM %s is not a regular file" % (path, backup_id, vm))

    def image_path(self, vm, backup_id, disk):
        """The stored image of one disk of a backup (checked to be inside its directory)."""
        name = check_file_name(disk.get("file"), "disk file")
        bdir = self.backup_dir(vm, backup_id)
        path = os.path.join(bdir, name)
        if os.path.lexists(path) and not inside(path, bdir):
            raise ManifestError("disk image %s of backup %s of VM %s points outside the repository (to %s)"
                                % (name, backup_id, vm, os.path.realpath(path)))
        return path

    def check_backing(self, vm, manifest, parent=None):
        """Each qcow2 image of a backup is standalone, or a delta on exactly ``../PARENT/FILE`` of the same
        disk in the parent backup; none names an external data file. ManifestError otherwise.

        Read from the image header before qemu-img (which would open what it names) touches it.
        """
        backup_id = manifest["backup_id"]
        parent_id = manifest.get("parent")
        for disk in manifest.get("disks") or []:
            path = self.image_path(vm, backup_id, disk)
            if not os.path.exists(path):
                continue
            backing, data_file = qcow2_header_names(path)
            where = "disk %s of backup %s of VM %s (%s)" % (disk.get("target"), backup_id, vm, path)
            if data_file:
                raise ManifestError("%s names an external data file; refusing to open it" % where)
            if backing is None:
                continue
            allowed = set()
            if parent_id:
                if parent is None:
                    parent = self._read_manifest(vm, parent_id)
                for pdisk in (parent or {}).get("disks") or []:
                    if pdisk.get("target") == disk.get("target"):
                        allowed.add("../%s/%s" % (parent_id, pdisk["file"]))
            if backing not in allowed:
                raise ManifestError(
                    "%s has the backing file %r, but a delta may only build on %s; refusing to read it "
                    "(a tampered or damaged repository?)" % (where, backing, " or ".join(sorted(allowed)) or
                                                             "nothing (its backup has no parent)"))

    def damage(self, vm, backup_id):
        """The verify findings that mark a backup damaged, or None."""
        path = os.path.join(self.backup_dir(vm, backup_id), DAMAGED)
        return _files.read_json(path, {"problems": ["%s is unreadable" % path]},
                                valid=lambda found: isinstance(found, dict) and isinstance(found.get("problems"), list))

    def backup_ids(self, vm):
        """The IDs of a VM's backup directories (names that are not backup IDs are no backups)."""
        vdir = self.vm_dir(vm)
        if not os.path.isdir(vdir):
            return []
        return sorted(e for e in os.listdir(vdir) if ID_RE.match(e) and os.path.isdir(os.path.join(vdir, e)))

    def backups(self, vm, usable_only=False):
        """Complete backups of a VM, oldest first (those with a manifest).

        ``usable_only`` leaves out backups marked damaged and those whose chain needs one
        that is damaged or missing: they are never a parent and never restored. A backup
        whose manifest cannot be read or trusted is listed (without ``usable_only``) as a
        stand-in ``{backup_id, vm, status: unreadable, usable: false, damaged: true,
        problems}``; it does not stop the VM's other backups from being listed.
        """
        found = []
        usable = set()
        for entry in self.backup_ids(vm):
            try:
                manifest = self.manifest(vm, entry)
            except ManifestError as exc:
                if not usable_only:
                    found.append({"backup_id": entry, "vm": vm, "status": "unreadable", "type": None,
                                  "parent": None, "disks": [], "usable": False, "damaged": True,
                                  "unreadable": True, "problems": [exc.msg]})
                continue
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
        return sorted(e[len(PARTIAL_PREFIX):] for e in os.listdir(vdir)
                      if e.startswith(PARTIAL_PREFIX) and ID_RE.match(e[len(PARTIAL_PREFIX):]))

    def chain(self, vm, backup_id):
        """Manifests from the full backup up to ``backup_id``; fails if a link is missing or untrusted.

        Every link's files are checked to be inside its directory and every qcow2 delta's
        backing file to be the parent's image of the same disk, before anything reads them.
        """
        out = []
        current = check_id(backup_id)
        seen = set()
        while current:
            if current in seen:
                raise ManifestError("the chain of backup %s of VM %s loops at %s" % (backup_id, vm, current))
            seen.add(current)
            try:
                manifest = self.manifest(vm, current)
            except ManifestError as exc:
                raise ManifestError("backup %s of VM %s in repository %s cannot be used: %s%s"
                                    % (current, vm, self.path, exc.msg,
                                       "" if current == backup_id else " (backup %s needs it)" % backup_id))
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
        for child, parent in zip(out, out[1:] + [None]):
            try:
                self.check_backing(vm, child, parent)
            except ManifestError as exc:
                raise ManifestError("backup %s of VM %s in repository %s cannot be used: %s; nothing was read "
                                    "or written. Run verify, and restore another backup" % (
                                        child["backup_id"], vm, self.path, exc.msg))
        return list(reversed(out))

    def select(self, vm, backup="latest", before=None):
        """The manifest of the backup to restore: ``latest``, an ID, or the newest at or before a time."""
        explicit = backup not in (None, "", "latest") and not before
        if explicit:
            check_id(backup, "backup")
        backups = self.backups(vm, usable_only=True)
        usable = ", ".join(m["backup_id"] for m in backups) or "none"
        if explicit:
            for m in backups:
                if m["backup_id"] == backup:
                    return m
            try:
                found = self.manifest(vm, backup)
            except ManifestError as exc:
                raise VmbackupError("backup %s of VM %s is damaged (%s); restore another one (usable: %s)"
                                    % (backup, vm, exc.msg, usable))
            if found is not None:
                damage = self.damage(vm, backup)
                if damage is None:
                    self.chain(vm, backup)  # names the link that is damaged or missing
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
        _files.rename_durably(partial, final)  # fsyncs the VM's directory
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
