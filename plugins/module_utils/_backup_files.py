# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the backup_files module: files inside a backup's guest disks, read-only.

libguestfs does the reading: it opens the backup's qcow2 images (each with its chain of parent
backups, through the backing names the repository checked) read-only in its own small appliance
VM, so a guest file system is parsed by a guest kernel, never by the backup node's, and nothing
of the hypervisor or the VM is touched. Inspection finds the guest's operating system and its
mount points (partitions, LVM inside the guest); a disk with no operating system is mounted
from its one file system, or the one named by ``filesystem``.

Extracted files keep their modes, owners and times: a directory travels as libguestfs's
``tar-out`` and is unpacked by GNU tar (its own guards against ``..`` members and links out of
the tree) into a fresh staging directory beside the destination; a file is downloaded and its
metadata set from ``lstatns``. Nothing already at the destination is overwritten unless
``force``: an identical copy is left alone (the module is idempotent), a different one fails.
"""

from __future__ import annotations

import datetime
import fnmatch
import os
import posixpath
import shutil
import stat
import tempfile

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files, _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _rbd as rbdlib
from ansible_collections.vmbackup.libvirt.plugins.module_utils._restore_plan import disk_chain_links
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import Repository

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vm=dict(type="str", required=True),
    backup=dict(type="str", default="latest"),
    before=dict(type="str"),
    action=dict(type="str", required=True, choices=["list", "find", "extract"]),
    paths=dict(type="list", elements="str", default=["/"]),
    pattern=dict(type="str"),
    recursive=dict(type="bool", default=False),
    dest=dict(type="path"),
    force=dict(type="bool", default=False),
    disks=dict(type="list", elements="str"),
    filesystem=dict(type="str"),
    max_entries=dict(type="int", default=10000),
    guestfs_backend=dict(type="str", default="direct"),
    guestfs_settings=dict(type="list", elements="str", default=[]),
    lock_wait=dict(type="int", default=0),
    tmpdir=dict(type="path"),
)

REQUIRED_IF = [("action", "find", ["pattern"]), ("action", "extract", ["dest"])]

# Stored forms that can be read: qcow2 images as they are; an RBD disk's rbd export-diff chain
# is first applied into a sparse raw file on the node (tmpdir), which libguestfs then opens.
OPENABLE_FORMATS = ("qcow2", "rbd")
NOT_A_FILE_SYSTEM = ("swap", "unknown", "")


def guest_path(path):
    """A guest path, absolute and normalised; ``..`` cannot climb above /."""
    if not path or not path.startswith("/") or "\0" in path:
        raise VmbackupError("guest path %r must be absolute (start with /)" % (path,))
    return posixpath.normpath("/" + path.lstrip("/")) if path != "/" else "/"


def openable_disks(manifest, wanted=None):
    """The disks of a backup that libguestfs can open, and the ones it cannot, each with why.

    ``wanted``: targets to open (default every disk); a wanted disk that cannot be opened, or is
    not in the backup, is an error, not a silent omission.
    """
    by_target = {d["target"]: d for d in manifest.get("disks") or []}
    if wanted:
        missing = [t for t in wanted if t not in by_target]
        if missing:
            raise VmbackupError("backup %s of VM %s has no disk %s (it has %s)"
                                % (manifest["backup_id"], manifest["vm"], ", ".join(missing),
                                   ", ".join(sorted(by_target)) or "none"))
    opened, left_out = [], []
    for target in wanted or sorted(by_target):
        disk = by_target[target]
        name = disk.get("file", "")
        fmt = "qcow2" if name.endswith(".qcow2") else "rbd" if name.endswith(".rbddiff") else "unknown"
        if fmt in OPENABLE_FORMATS:
            opened.append(disk)
        else:
            why = "stored as %s (%s), which file-level restore cannot open; restore the disk instead"
            left_out.append({"target": target, "reason": why % (fmt, disk.get("file"))})
    if wanted and left_out:
        refused = "; ".join("disk %(target)s is %(reason)s" % d for d in left_out)
        raise VmbackupError("backup %s of VM %s: %s" % (manifest["backup_id"], manifest["vm"], refused))
    if not opened:
        raise VmbackupError("backup %s of VM %s has no disk that file-level restore can open (%s)"
                            % (manifest["backup_id"], manifest["vm"],
                               "; ".join("%(target)s: %(reason)s" % d for d in left_out) or "no disks"))
    return opened, left_out


def mount_plan(roots, mountpoints, filesystems, chosen=None):
    """[(mountpoint, device)] to mount, shortest mount point first, and how they were found.

    ``roots``: inspect_os(); ``mountpoints``: {root: inspect_get_mountpoints(root)};
    ``filesystems``: list_filesystems() ({device: type}); ``chosen``: the filesystem option.
    """
    if chosen:
        if chosen not in filesystems:
            raise VmbackupError("file system %s is not on these disks (found: %s)"
                                % (chosen, _describe(filesystems)))
        return [("/", chosen)], "the file system named by filesystem"
    if len(roots) > 1:
        raise VmbackupError("these disks hold %d operating systems (%s): name the root file system to "
                            "open with filesystem" % (len(roots), ", ".join(roots)))
    if roots:
        points = mountpoints[roots[0]]
        return sorted(points.items(), key=lambda kv: (len(kv[0]), kv[0])), "inspection (%s)" % roots[0]
    usable = sorted(dev for dev, kind in filesystems.items() if kind not in NOT_A_FILE_SYSTEM)
    if len(usable) == 1:
        return [("/", usable[0])], "the disks' only file system"
    if not usable:
        raise VmbackupError("no file system that can be read was found on these disks (found: %s); a "
                            "disk that is encrypted inside the guest, or holds no file system, cannot be "
                            "read file by file" % (_describe(filesystems) or "nothing"))
    raise VmbackupError("no operating system was found on these disks, and they hold several file systems "
                        "(%s): name the one to open with filesystem" % _describe(filesystems))


def _describe(filesystems):
    return ", ".join("%s (%s)" % (dev, kind or "unknown") for dev, kind in sorted(filesystems.items()))


def entry(path, st, target=None):
    """One listed file, from libguestfs's lstatns dict."""
    mode = st["st_mode"]
    kind = ("directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "symlink" if stat.S_ISLNK(mode) else "other")
    out = {"path": path, "type": kind, "mode": "%04o" % stat.S_IMODE(mode), "size": st["st_size"],
           "uid": st["st_uid"], "gid": st["st_gid"],
           "mtime": datetime.datetime.fromtimestamp(st["st_mtime_sec"], datetime.timezone.utc).isoformat()}
    if target is not None:
        out["target"] = target
    return out


def matches(path, pattern):
    """find's test: a pattern with / is matched against the whole path, else against the name."""
    return fnmatch.fnmatchcase(path if "/" in pattern else posixpath.basename(path), pattern)


def trees_equal(a, b):
    """Whether two local trees (or files) hold the same: types, contents, modes, mtimes, links."""
    sa, sb = os.lstat(a), os.lstat(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISDIR(sa.st_mode):
        names = sorted(os.listdir(a))
        return names == sorted(os.listdir(b)) and all(trees_equal(os.path.join(a, n), os.path.join(b, n))
                                                      for n in names)
    if int(sa.st_mtime) != int(sb.st_mtime) or sa.st_size != sb.st_size:
        return False
    if not stat.S_ISREG(sa.st_mode):
        return True
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def lines(result):
    """A backup_files result as lines a person reads (the playbook prints them)."""
    head = "backup %s, disks %s, mounted %s" % (
        result.get("backup_id"), ", ".join(result.get("disks") or []) or "none",
        ", ".join("%s on %s" % (dev, point) for point, dev in sorted((result.get("mounted") or {}).items())))
    out = [head] + ["left out: %(target)s (%(reason)s)" % d for d in result.get("left_out") or []]
    for e in result.get("entries") or []:
        out.append("%s %s %5s:%-5s %12s %s %s%s" % (
            {"directory": "d", "file": "-", "symlink": "l"}.get(e["type"], "?"), e["mode"], e["uid"], e["gid"],
            e["size"], e["mtime"][:19], e["path"], " -> %s" % e["target"] if e.get("target") else ""))
    if result.get("truncated"):
        out.append("(more entries than max_entries: narrow the paths or the pattern)")
    for e in result.get("extracted") or []:
        out.append("%s %s -> %s (%s %s)" % (e["action"], e["path"], e["dest"], e["type"], e["mode"]))
    return out


class GuestFiles:
    """The guest's file systems, mounted read-only in one libguestfs appliance."""

    def __init__(self, handle, where):
        self.g = handle
        self.where = where  # "backup ID of VM NAME", for messages

    def open(self, images, backend, settings, chosen=None):
        g = self.g
        g.set_backend(backend)
        if settings:
            g.set_backend_settings(list(settings))
        for path, fmt in images:
            g.add_drive_opts(path, readonly=True, format=fmt)
        g.launch()
        roots = g.inspect_os()
        points = {r: g.inspect_get_mountpoints(r) for r in roots}
        plan, how = mount_plan(roots, points, g.list_filesystems() if not roots or chosen else {}, chosen)
        for point, device in plan:
            try:
                g.mount_ro(device, point)
            except RuntimeError as exc:
                raise VmbackupError("%s: mounting %s (%s) read-only failed: %s" % (self.where, device, point, exc))
        return {"mounted": dict(plan), "found_by": how}

    def _stat(self, path):
        if not self.g.exists(path) and not self.g.is_symlink(path):
            raise VmbackupError("%s: %s does not exist in the guest's file systems" % (self.where, path))
        return self.g.lstatns(path)

    def _entry(self, path, st=None):
        st = st or self.g.lstatns(path)
        target = self.g.readlink(path) if stat.S_ISLNK(st["st_mode"]) else None
        return entry(path, st, target)

    def list(self, path, recursive, limit):
        st = self._stat(path)
        if not stat.S_ISDIR(st["st_mode"]):
            return [self._entry(path, st)], False
        names = self._find(path) if recursive else self.g.ls(path)
        return [self._entry(posixpath.join(path, n)) for n in names[:limit]], len(names) > limit

    def _find(self, path):
        """Every entry below ``path``, relative to it (libguestfs's find names them ``/a``, ``/a/b``)."""
        return [n.lstrip("/") for n in self.g.find(path) if n.strip("/")]

    def find(self, path, pattern, limit):
        self._stat(path)
        found = [p for p in (posixpath.join(path, n) for n in self._find(path)) if matches(p, pattern)]
        return [self._entry(p) for p in found[:limit]], len(found) > limit

    def extract(self, runner, path, staging):
        """Copy ``path`` (a file, a link or a tree) into ``staging``, keeping modes, owners, times."""
        st = self._stat(path)
        name = posixpath.basename(path) or "root"
        local = os.path.join(staging, name)
        if stat.S_ISDIR(st["st_mode"]):
            fd, tar = tempfile.mkstemp(prefix=".vmbackup-tar-", dir=staging)
            os.close(fd)
            self.g.tar_out(path, tar, numericowner=True, xattrs=True)
            os.mkdir(local, 0o700)
            runner.run(["tar", "-x", "-f", tar, "-C", local, "--numeric-owner", "--same-owner", "--same-permissions",
                        "--xattrs"], what="unpacking %s of %s" % (path, self.where))
            os.unlink(tar)
            _set_meta(local, st)
        elif stat.S_ISLNK(st["st_mode"]):
            os.symlink(self.g.readlink(path), local)
            os.lchown(local, st["st_uid"], st["st_gid"])
        elif stat.S_ISREG(st["st_mode"]):
            self.g.download(path, local)
            _set_meta(local, st)
        else:
            raise VmbackupError("%s: %s is not a file, a directory or a link; it cannot be extracted"
                                % (self.where, path))
        return name, self._entry(path, st)


def _set_meta(local, st):
    os.chown(local, st["st_uid"], st["st_gid"])
    os.chmod(local, stat.S_IMODE(st["st_mode"]))
    os.utime(local, ns=(st["st_atime_sec"] * 10**9 + st["st_atime_nsec"],
                        st["st_mtime_sec"] * 10**9 + st["st_mtime_nsec"]))


# The bindings come with the OS's Python (python3-guestfs), not with a virtualenv's: where the
# module runs under another interpreter (a controller's venv for localhost), it runs again under
# the first system Python that has them, as ansible's dnf and selinux modules do.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/libexec/platform-python", "/usr/bin/python")


def respawn_for_guestfs():
    """Before anything else: re-run the module under a system Python with guestfs, if needed."""
    try:
        import guestfs  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        from ansible.module_utils.common import respawn  # pylint: disable=import-outside-toplevel
        if not respawn.has_respawned():
            interpreter = respawn.probe_interpreters_for_module(SYSTEM_PYTHONS, "guestfs")
            if interpreter:
                respawn.respawn_module(interpreter)  # does not return


def _guestfs_handle(module):
    try:
        import guestfs  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise VmbackupError("libguestfs's Python bindings are not installed on the backup node %s: install "
                            "python3-guestfs (Debian, Ubuntu) or python3-libguestfs (Fedora, RHEL), and "
                            "libguestfs-tools; nothing was read" % CommandRunner(module).host)
    return guestfs.GuestFS(python_return_dict=True)


def run(module, handle_factory=_guestfs_handle):
    p = module.params
    repo = Repository(p["path"])
    vm = p["vm"]
    paths = [guest_path(x) for x in p["paths"]]
    if p["max_entries"] < 1:
        raise VmbackupError("max_entries must be at least 1, not %s" % p["max_entries"])
    if not os.path.isdir(repo.vm_dir(vm)):
        raise VmbackupError("repository %s holds no backup of VM %s on host %s (nothing was read)"
                            % (repo.path, vm, CommandRunner(module).host))
    # A reader's lock, as a restore takes: prune waits, and nothing read is removed meanwhile.
    params = _lock.lock_params(repo.lock_path(vm), "backup_files-%d" % os.getpid(),
                               "file-level restore of VM %s" % vm, CommandRunner(module).host, p["lock_wait"],
                               mode="shared", repository=repo.path)
    lock = _lock.acquire(module, params)
    try:
        manifest = repo.select(vm, p["backup"], p["before"])
        chain = repo.chain(vm, manifest["backup_id"])  # every link's files and backing names checked
        manifest = chain[-1] if chain else manifest
        where = "backup %s of VM %s" % (manifest["backup_id"], vm)
        disks, left_out = openable_disks(manifest, p["disks"])
        result = {"changed": False, "backup_id": manifest["backup_id"], "disks": [d["target"] for d in disks],
                  "left_out": left_out}
        if p["action"] == "extract":
            _check_dest(p["dest"], where)
        scratch = []  # RBD chains applied into raw files, removed whatever happens
        try:
            images = disk_images(repo, vm, chain, disks, p["tmpdir"] or repo.path, scratch)
            guest = GuestFiles(handle_factory(module), where)
            try:
                _read(module, guest, result, paths, images)
            except RuntimeError as exc:  # what the libguestfs bindings raise
                raise VmbackupError("%s: libguestfs failed on host %s: %s. Nothing was written. If its appliance "
                                    "did not start, run libguestfs-test-tool there; a node that cannot use KVM "
                                    "needs guestfs_settings [force_tcg]." % (where, CommandRunner(module).host, exc))
            finally:
                _close(guest.g)
        finally:
            for path in scratch:
                _files.unlink_quietly(path)
        return result
    finally:
        if lock.get("changed") and not module.check_mode:
            _lock.release(module, params)


def disk_images(repo, vm, chain, disks, tmpdir, scratch):
    """[(path, format)] for libguestfs, one per disk: a qcow2 image as stored (its parents are
    its backing chain), an RBD disk's diff chain (from its last full) applied into a sparse raw
    file in ``tmpdir``, 0600 from creation on, whose path is added to ``scratch``."""
    backup_id = chain[-1]["backup_id"]
    out = []
    for disk in disks:
        if disk["file"].endswith(".qcow2"):
            out.append((repo.image_path(vm, backup_id, disk), "qcow2"))
            continue
        paths = [repo.image_path(vm, link["backup_id"], d) for link, d in disk_chain_links(chain, disk["target"])]
        infos = [rbdlib.scan_diff(path) for path in paths]
        rbdlib.check_chain(infos, paths)
        fd, tmp = tempfile.mkstemp(prefix=".vmbackup-files-", suffix=".raw", dir=tmpdir)
        scratch.append(tmp)
        try:
            current = None
            for path in paths:
                with open(path, "rb") as src:
                    current = rbdlib.apply_diff(src, fd, where=path, expect_from=current)["to_snap"]
        except OSError as exc:
            need = infos[-1]["size"] or 0
            raise VmbackupError("applying the RBD backup of disk %s into %s failed: %s (it needs up to %d bytes "
                                "free there; set tmpdir to another directory)" % (disk["target"], tmp, exc, need))
        finally:
            os.close(fd)
        out.append((tmp, "raw"))
    return out


def _read(module, guest, result, paths, images):
    """Open the backup's disks, then list, find or extract (into ``result``)."""
    p = module.params
    result.update(guest.open(images, p["guestfs_backend"], p["guestfs_settings"], p["filesystem"]))
    if p["action"] == "extract":
        result.update(_extract(module, guest, paths, p["dest"], p["force"]))
        return
    entries, truncated = [], False
    for path in paths:
        room = p["max_entries"] - len(entries)
        got, more = guest.find(path, p["pattern"], room) if p["action"] == "find" else \
            guest.list(path, p["recursive"], room)
        entries += got
        truncated = truncated or more
        if len(entries) >= p["max_entries"]:
            truncated = truncated or path != paths[-1]
            break
    result.update(entries=entries, truncated=truncated)


def _close(handle):
    try:
        handle.shutdown()
    except RuntimeError:
        pass  # the appliance died: nothing was written through it (read-only)
    handle.close()


def _check_dest(dest, where):
    if not os.path.isdir(dest):
        raise VmbackupError("%s: the destination %s is not a directory on the backup node; create it first "
                            "(nothing was extracted)" % (where, dest))


def _extract(module, guest, paths, dest, force):
    """Each path into DEST/BASENAME: new ones moved in, identical ones left, others refused (or, with
    force, replaced). Everything is unpacked into a staging directory beside DEST first, so a
    failure leaves DEST as it was."""
    runner = CommandRunner(module)
    names = [posixpath.basename(p) or "root" for p in paths]
    dupes = sorted(set(n for n in names if names.count(n) > 1))
    if dupes:
        raise VmbackupError("%s: several paths would be extracted to the same name in %s (%s); extract them "
                            "in separate runs or to separate destinations" % (guest.where, dest, ", ".join(dupes)))
    extracted = []
    if module.check_mode:
        for path, name in zip(paths, names):
            item = guest._entry(path, guest._stat(path))
            target = os.path.join(dest, name)
            extracted.append(dict(item, dest=target, action="create" if not os.path.lexists(target) else "compare"))
        return {"changed": any(e["action"] == "create" for e in extracted), "extracted": extracted}
    staging = tempfile.mkdtemp(prefix=".vmbackup-extract-", dir=dest)
    try:
        staged = [(path,) + guest.extract(runner, path, staging) for path in paths]
        plan = []
        for path, name, item in staged:
            target = os.path.join(dest, name)
            if not os.path.lexists(target):
                plan.append((item, name, target, "created"))
            elif trees_equal(os.path.join(staging, name), target):
                plan.append((item, name, target, "unchanged"))
            elif force:
                plan.append((item, name, target, "replaced"))
            else:
                raise VmbackupError("%s: %s already exists and differs from %s in the backup; nothing was "
                                    "extracted. Choose another destination, or set force to replace it"
                                    % (guest.where, target, path))
        for item, name, target, action in plan:
            if action == "replaced":
                old = os.path.join(staging, ".old-" + name)
                os.rename(target, old)  # aside first: the new copy is complete before the old one goes
            if action in ("created", "replaced"):
                os.rename(os.path.join(staging, name), target)
            extracted.append(dict(item, dest=target, action=action))
        return {"changed": any(e["action"] != "unchanged" for e in extracted), "extracted": extracted}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
