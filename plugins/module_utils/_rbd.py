# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ceph RBD: the rbd command line, our backup snapshots, and the rbd diff v1 format.

Backup snapshots of ours are named ``vmbackup-<BACKUP_ID>``; backup IDs are UTC
times (20261122T013000Z), so the names sort by time. Snapshots whose names do
not start with ``vmbackup-`` are never touched.

The repository keeps an RBD disk as the stream of ``rbd export-diff`` as it is
(``TARGET.rbddiff``): a full backup is ``rbd export-diff POOL/IMG@SNAP -`` (only
allocated extents), an incremental one adds ``--from-snap PREVIOUS``. The format
("rbd diff v1", doc/dev/rbd-diff.rst in Ceph)::

    "rbd diff v1\\n"
    metadata records:  'f' le32 len, name    from snapshot (incrementals only)
                       't' le32 len, name    to snapshot
                       's' le64 size         image size at the end
    data records:      'w' le64 offset, le64 length, data
                       'z' le64 offset, le64 length    (zeroed/discarded)
    end:               'e'

``rbd import-diff`` applies such a stream to an RBD image; for file and block
targets the records are applied here (``apply_diff``) into a sparse raw file.

Secrets never go on a command line: only the path of a keyring (``--keyring``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import struct

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandError, VmbackupError

SNAP_PREFIX = "vmbackup-"
HEADER_V1 = b"rbd diff v1\n"
HEADER_V2 = b"rbd diff v2\n"
CHUNK = 1024 * 1024
BACKUP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# pool/image or pool/namespace/image; no snapshot part, no spaces
IMAGE_RE = re.compile(r"^[^/@\s]+(/[^/@\s]+)?/[^/@\s]+$")

CEPH_ARGSPEC = dict(
    ceph_conf=dict(type="path"),
    ceph_id=dict(type="str", default="admin"),
    ceph_keyring=dict(type="path", no_log=False),
    cluster=dict(type="str"),
    ceph_timeout=dict(type="int", default=30),
)


# --------------------------------------------------------------------------
# names

def snap_name(snapshot):
    """``vmbackup-<ID>`` for a backup ID (a name that already has the prefix is kept)."""
    if not snapshot:
        raise VmbackupError("a snapshot (backup ID) is required")
    sid = snapshot[len(SNAP_PREFIX):] if snapshot.startswith(SNAP_PREFIX) else snapshot
    if not BACKUP_ID_RE.match(sid):
        raise VmbackupError("invalid snapshot/backup ID %r: use letters, digits, '.', '_' and '-'" % snapshot)
    return SNAP_PREFIX + sid


def is_ours(name):
    return isinstance(name, str) and name.startswith(SNAP_PREFIX)


def check_image(image):
    if not image or not IMAGE_RE.match(image):
        raise VmbackupError("invalid RBD image %r: expected POOL/IMAGE or POOL/NAMESPACE/IMAGE, "
                            "without a snapshot part" % (image,))
    return image


def pool_of(image):
    return image.split("/", 1)[0]


def ceph_args(params):
    """Global rbd options from the module parameters (paths only; never a key)."""
    argv = []
    if params.get("cluster"):
        argv += ["--cluster", params["cluster"]]
    if params.get("ceph_conf"):
        argv += ["--conf", params["ceph_conf"]]
    argv += ["--id", params.get("ceph_id") or "admin"]
    if params.get("ceph_keyring"):
        argv += ["--keyring", params["ceph_keyring"]]
    # a cluster that does not answer fails in bounded time instead of hunting forever
    argv += ["--client-mount-timeout", str(int(params.get("ceph_timeout") or 30))]
    return argv


# --------------------------------------------------------------------------
# errors

def diagnose(image, rc, stderr, params, timeout=None):
    """(cause, what to do) for a failed rbd command on ``image``."""
    err = stderr or ""
    pool = pool_of(image) if image else "?"
    who = "client.%s" % (params.get("ceph_id") or "admin")
    keyring = params.get("ceph_keyring") or "the keyring found through ceph.conf"
    conf = params.get("ceph_conf") or "/etc/ceph/%s.conf" % (params.get("cluster") or "ceph")
    if rc == 124 or rc == 137 or rc == 110 or "timed out" in err or "(110)" in err:
        return ("the Ceph cluster did not answer within %ss" % (timeout or params.get("ceph_timeout") or 30),
                "Check that the monitors listed in %s are up and reachable from this host "
                "(ceph -s), or raise ceph_timeout." % conf)
    if "unable to open config file" in err or "did not load config file" in err:
        return ("the Ceph configuration %s cannot be read" % conf,
                "Set ceph_conf to the cluster's ceph.conf on this host.")
    if ("handle_auth_bad_method" in err or "unable to find a keyring" in err or "no keyring found" in err
            or "(1) Operation not permitted" in err or "(13) Permission denied" in err or rc == 13):
        return ("the cluster refused the credentials of %s (keyring %s)" % (who, keyring),
                "Check ceph_id and ceph_keyring: the keyring must exist on this host, hold %s's key, "
                "and the user needs the caps mon 'profile rbd' osd 'profile rbd pool=%s'." % (who, pool))
    if "error opening pool" in err or ("pool" in err and "(2) No such file or directory" in err
                                       and "error opening image" not in err):
        return ("pool '%s' does not exist" % pool, "Check the pool name (ceph osd pool ls).")
    if "error opening image" in err or "(2) No such file or directory" in err:
        return ("image '%s' does not exist" % image, "Check the image name (rbd ls %s)." % pool)
    if "couldn't connect to the cluster" in err:
        return ("could not connect to the Ceph cluster",
                "Check %s, the monitors (ceph -s) and the credentials of %s." % (conf, who))
    return (None, None)


def rbd_error(image, what, argv, rc, out, err, params, host, timeout=None):
    cause, hint = diagnose(image, rc, err, params, timeout=timeout)
    text = "%s of RBD image %s" % (what, image)
    if cause:
        text += " (%s)" % cause
    return CommandError(argv, rc, out, err, what=text, hint=hint, host=host)


# --------------------------------------------------------------------------
# the rbd command line

class Rbd:
    """Short rbd commands, run by ``execute(argv, what) -> (rc, out, err)`` (local or over SSH).

    ``execute`` must not raise on a non-zero rc; this class raises errors that name
    the image and the cause.
    """

    def __init__(self, execute, params, host, timeout=None):
        self.execute = execute
        self.params = params
        self.host = host
        self.global_args = ceph_args(params)
        # a command is killed after this even if the monitors answered (hung OSDs)
        self.timeout = timeout or (int(params.get("ceph_timeout") or 30) + 60)

    def argv(self, *args):
        return ["rbd"] + self.global_args + [str(a) for a in args]

    def run(self, image, what, *args, ok_rcs=(0,)):
        argv = self.argv(*args)
        rc, out, err = self.execute(argv, what)
        if rc not in ok_rcs:
            raise rbd_error(image, what, argv, rc, out, err, self.params, self.host,
                            timeout=self.params.get("ceph_timeout"))
        return rc, out, err

    def info(self, image):
        _rc, out, _err = self.run(image, "reading the size", "info", "--format", "json", image)
        return json.loads(out)

    def exists(self, image):
        argv = self.argv("info", "--format", "json", image)
        rc, out, err = self.execute(argv, "checking whether %s exists" % image)
        if rc == 0:
            return True
        if rc == 2 and "error opening image" in (err or ""):
            return False
        raise rbd_error(image, "checking whether it exists", argv, rc, out, err, self.params, self.host)

    def snapshots(self, image):
        """All snapshots of the image (dicts with name, size, id), in creation order."""
        _rc, out, _err = self.run(image, "listing the snapshots", "snap", "ls", "--format", "json", image)
        return json.loads(out or "[]")

    def snap_create(self, image, name):
        self.run(image, "creating snapshot %s" % name, "snap", "create", "--no-progress", "%s@%s" % (image, name))

    def snap_remove(self, image, name):
        self.run(image, "removing snapshot %s" % name, "snap", "rm", "--no-progress", "%s@%s" % (image, name))

    def create(self, image, size):
        self.run(image, "creating the image (%s bytes)" % size, "create", "--size", "%dB" % int(size), image)

    def remove(self, image):
        """Remove an image and its snapshots (used only for force)."""
        self.run(image, "purging the snapshots", "snap", "purge", "--no-progress", image)
        self.run(image, "removing the image", "rm", "--no-progress", image)


def our_snapshots(snaps):
    """Names of our snapshots, oldest first (names sort by time)."""
    return sorted(s["name"] for s in snaps if is_ours(s.get("name")))


# --------------------------------------------------------------------------
# rbd diff v1

class RbdDiffError(VmbackupError):
    pass


def _read_exact(stream, n, where):
    buf = b""
    while len(buf) < n:
        block = stream.read(n - len(buf))
        if not block:
            raise RbdDiffError("%s: truncated rbd diff stream (expected %d more bytes at %s)"
                               % (where, n - len(buf), _tell(stream)))
        buf += block
    return buf


def _tell(stream):
    try:
        return "offset %d" % stream.tell()
    except (OSError, AttributeError, ValueError):
        return "its end"


def _skip(stream, n, where):
    try:
        if stream.seekable():
            pos = stream.tell()
            end = stream.seek(0, os.SEEK_END)
            if pos + n > end:
                raise RbdDiffError("%s: truncated rbd diff stream (a data record at offset %d needs "
                                   "%d bytes, only %d left)" % (where, pos, n, end - pos))
            stream.seek(pos + n)
            return
    except (AttributeError, OSError):
        pass
    while n:
        block = stream.read(min(CHUNK, n))
        if not block:
            raise RbdDiffError("%s: truncated rbd diff stream inside a data record" % where)
        n -= len(block)


def iter_diff(stream, where="rbd diff", on_data=None):
    """Yield the records of an rbd diff v1 stream: (tag, a, b).

    'f'/'t': (tag, name, None); 's': ('s', size, None); 'w'/'z': (tag, offset, length);
    'e': ('e', None, None), always last. With ``on_data(offset, bytes)`` the data of
    each 'w' record is passed in chunks before the record is yielded; otherwise it
    is skipped. Raises RbdDiffError for anything that is not a whole v1 stream.
    """
    header = stream.read(len(HEADER_V1))
    if header == HEADER_V2:
        raise RbdDiffError("%s is an rbd diff v2 stream; only v1 (rbd export-diff) is supported" % where)
    if header != HEADER_V1:
        raise RbdDiffError("%s is not an rbd diff stream (header %r, expected %r)" % (where, header[:16], HEADER_V1))
    data_seen = False
    while True:
        tag = stream.read(1)
        if not tag:
            raise RbdDiffError("%s: truncated rbd diff stream (no end record)" % where)
        if tag in (b"f", b"t"):
            if data_seen:
                raise RbdDiffError("%s: metadata record %r after data records" % (where, tag))
            (length,) = struct.unpack("<I", _read_exact(stream, 4, where))
            if length > 4096:
                raise RbdDiffError("%s: snapshot name of %d bytes: damaged stream" % (where, length))
            name = _read_exact(stream, length, where).decode("utf-8", "replace")
            yield (tag.decode(), name, None)
        elif tag == b"s":
            (size,) = struct.unpack("<Q", _read_exact(stream, 8, where))
            yield ("s", size, None)
        elif tag in (b"w", b"z"):
            data_seen = True
            offset, length = struct.unpack("<QQ", _read_exact(stream, 16, where))
            if tag == b"w":
                if on_data is None:
                    _skip(stream, length, where)
                else:
                    pos = offset
                    left = length
                    while left:
                        block = stream.read(min(CHUNK, left))
                        if not block:
                            raise RbdDiffError("%s: truncated rbd diff stream inside the data at image offset %d"
                                               % (where, pos))
                        on_data(pos, block)
                        pos += len(block)
                        left -= len(block)
            yield (tag.decode(), offset, length)
        elif tag == b"e":
            yield ("e", None, None)
            return
        else:
            raise RbdDiffError("%s: unknown record tag %r at %s: damaged rbd diff stream" % (where, tag, _tell(stream)))


def scan_diff(path):
    """Check a stored rbd diff file and describe it (reads only record headers)."""
    info = {"from_snap": None, "to_snap": None, "size": None, "data_bytes": 0, "zero_bytes": 0,
            "records": 0}
    with open(path, "rb") as fh:
        for tag, a, b in iter_diff(fh, where=path):
            if tag == "f":
                info["from_snap"] = a
            elif tag == "t":
                info["to_snap"] = a
            elif tag == "s":
                info["size"] = a
            elif tag == "w":
                info["data_bytes"] += b
                info["records"] += 1
            elif tag == "z":
                info["zero_bytes"] += b
                info["records"] += 1
        trailing = fh.read(1)
    if trailing:
        raise RbdDiffError("%s: data after the end record: damaged rbd diff stream" % path)
    if info["size"] is None:
        raise RbdDiffError("%s: rbd diff stream without a size record" % path)
    return info


def check_chain(infos, paths):
    """A full diff first, then each diff starting at the snapshot where the one before ended."""
    for i, info in enumerate(infos):
        if i == 0:
            if info["from_snap"]:
                raise RbdDiffError("%s is an incremental diff (from snapshot %s): the chain must start with "
                                   "a full backup" % (paths[0], info["from_snap"]))
        elif info["from_snap"] != infos[i - 1]["to_snap"]:
            raise RbdDiffError("%s starts at snapshot %s but %s ends at %s: the chain is broken"
                               % (paths[i], info["from_snap"], paths[i - 1], infos[i - 1]["to_snap"]))


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def punch_hole(fd, offset, length):
    """Deallocate a range of a file (it then reads as zeroes); write zeroes if the FS cannot."""
    global _libc
    if length <= 0:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        if ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (None, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    zero = b"\0" * min(CHUNK, length)
    pos, left = offset, length
    while left:
        n = min(len(zero), left)
        os.pwrite(fd, zero[:n], pos)
        pos += n
        left -= n


def apply_diff(stream, fd, where="rbd diff", expect_from=None):
    """Apply an rbd diff v1 stream to the raw image open as ``fd``; return its description.

    'w' writes the data, 'z' punches a hole (reads as zeroes), 's' sets the file's size
    (like ``rbd import-diff`` resizes the image), 'f' must equal ``expect_from``.
    """
    info = {"from_snap": None, "to_snap": None, "size": None, "data_bytes": 0, "zero_bytes": 0}

    def write(offset, block):
        os.pwrite(fd, block, offset)

    for tag, a, b in iter_diff(stream, where=where, on_data=write):
        if tag == "f":
            info["from_snap"] = a
            if a != expect_from:
                raise RbdDiffError("%s starts at snapshot %s, but the image is at %s" % (where, a, expect_from))
        elif tag == "t":
            info["to_snap"] = a
        elif tag == "s":
            info["size"] = a
            os.ftruncate(fd, a)
        elif tag == "w":
            info["data_bytes"] += b
        elif tag == "z":
            info["zero_bytes"] += b
            punch_hole(fd, a, b)
    if expect_from and info["from_snap"] is None:
        raise RbdDiffError("%s is a full diff, but an incremental one from %s was expected" % (where, expect_from))
    return info


# --------------------------------------------------------------------------
# the rbd_export module (runs on the hypervisor)

EXPORT_ARGUMENT_SPEC = dict(
    image=dict(type="str", required=True),
    snapshot=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent", "rotated", "pruned"]),
    parent=dict(type="str"),
    **CEPH_ARGSPEC
)


def _local_execute(runner, timeout):
    def execute(argv, what):
        return runner.run(argv, check_rc=False, timeout=timeout, what=what)
    return execute


def plan_export(snaps, name, parent):
    """(mode, from_snapshot, fallback_reason) of the export for ``name`` given the repository's parent."""
    if not parent:
        return "full", None, None
    wanted = snap_name(parent)
    if wanted == name:
        raise VmbackupError("parent %s is the backup itself (%s)" % (parent, name))
    if wanted in snaps:
        return "incremental", wanted, None
    others = [s for s in snaps if s != name]
    return "full", None, (
        "snapshot %s of the previous backup %s is not on the image (snapshots of ours there: %s), "
        "so this backup is a full one" % (wanted, parent, ", ".join(others) or "none"))


def run_export(module):
    from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner

    p = module.params
    image = check_image(p["image"])
    name = snap_name(p["snapshot"])
    runner = CommandRunner(module)
    rbd = Rbd(None, p, runner.host)
    rbd.execute = _local_execute(runner, rbd.timeout)

    size = int(rbd.info(image)["size"])
    before = our_snapshots(rbd.snapshots(image))
    after = list(before)
    removed = []
    created = False
    state = p["state"]
    if state == "present":
        if name not in before:
            if not module.check_mode:
                rbd.snap_create(image, name)
            after = sorted(before + [name])
            created = True
    elif state == "absent":
        if name in before:
            if not module.check_mode:
                rbd.snap_remove(image, name)
            after = [s for s in before if s != name]
            removed = [name]
    else:  # rotated, pruned
        if name not in before and state == "rotated":
            raise VmbackupError(
                "cannot rotate the backup snapshots of RBD image %s on host %s: the snapshot to keep, %s, "
                "is not there (snapshots of ours: %s); nothing was removed. Take it first with "
                "state=present." % (image, runner.host, name, ", ".join(before) or "none"))
        for old in before:
            if old != name:
                if not module.check_mode:
                    rbd.snap_remove(image, old)
                removed.append(old)
        after = [name] if name in before else []

    older = [s for s in after if s < name and s != name]
    result = {
        "changed": created or bool(removed),
        "image": image,
        "snapshot": name,
        "snapshots": after,
        "previous": older[-1] if older else None,
        "size": size,
        "created": created,
        "removed": removed,
    }
    if state == "present":
        mode, from_snapshot, reason = plan_export(after, name, p.get("parent"))
        result.update(mode=mode, from_snapshot=from_snapshot, fallback_reason=reason)
    if module._diff:
        result["diff"] = {
            "before": {"image": image, "snapshots": before},
            "after": {"image": image, "snapshots": after},
            "before_header": "%s (snapshots of ours)" % image,
            "after_header": "%s (snapshots of ours)" % image,
        }
    return result
