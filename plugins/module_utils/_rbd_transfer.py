# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the rbd_transfer module (runs on the backup node).

Backup: ``rbd export-diff [--from-snap PREV] POOL/IMG@vmbackup-ID -`` runs on the
hypervisor (over SSH, host keys checked strictly, or locally) and its stdout is
stored as it is in the repository (``TARGET.rbddiff``): written to ``.part``,
fsynced, checked to be one whole rbd diff v1 stream of the expected snapshots,
then renamed. Memory use is constant.

Restore: every file of the chain is checked against its sha256 and parsed first
(nothing is written if one is damaged or the chain is broken). Then either
- an RBD target: ``rbd create --size`` and ``rbd import-diff -`` of each file in
  order, streamed over SSH; or
- a file or block target: the diffs are applied here into a sparse raw temporary
  file (``_rbd.apply_diff``), which is written into the target through qemu-nbd
  (as disk_transfer restores do).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _rbd as rbdlib
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _nbd_export, _ssh, _stream
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer as transfer
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _disk_transfer as disk_transfer

CHUNK = 1024 * 1024

ARGUMENT_SPEC = dict(
    direction=dict(type="str", required=True, choices=["backup", "restore"]),
    image=dict(type="str", required=True),
    snapshot=dict(type="str"),
    from_snapshot=dict(type="str"),
    fallback_full=dict(type="bool", default=True),
    repo_file=dict(type="path"),
    chain=dict(type="list", elements="dict", default=[]),
    target_kind=dict(type="str", default="rbd", choices=["rbd", "file", "block"]),
    format=dict(type="str", default="raw", choices=["raw", "qcow2"]),
    size=dict(type="int"),
    force=dict(type="bool", default=False),
    compare=dict(type="bool", default=True),
    keep_snapshot=dict(type="bool", default=True),
    tmpdir=dict(type="path"),
    **dict(rbdlib.CEPH_ARGSPEC, **_ssh.CONNECTION_ARGSPEC)
)

REQUIRED_IF = [
    ("direction", "backup", ["snapshot", "repo_file"]),
    ("direction", "restore", ["chain"]),
    ("transport", "ssh", ["ssh_host"]),
]


def _remote_execute(hv, timeout):
    """Run a short command on the hypervisor, killed there after ``timeout`` seconds."""
    def execute(argv, what):
        full = ["timeout", "--kill-after=10", "%ds" % timeout] + list(argv)
        rc, out, err = hv.run(full, what, check_rc=False)
        lost = _ssh.ssh_link_error(hv, rc, err, rc=rc, stderr=err)
        if lost:
            raise lost
        return rc, out, err
    return execute


def _stream_failure(hv, rbd, image, what, argv, rc, err):
    lost = _ssh.ssh_link_error(hv, rc, err, cmd=argv, rc=rc, stderr=err)
    if lost:
        return lost
    return rbdlib.rbd_error(image, "%s on hypervisor %s" % (what, hv.label), argv, rc, "", err,
                            rbd.params, rbd.host)


# --------------------------------------------------------------------------
# backup

def backup(module, runner, hv, rbd):
    p = module.params
    image = rbdlib.check_image(p["image"])
    name = rbdlib.snap_name(p["snapshot"])
    dest = p["repo_file"]
    if os.path.exists(dest):
        info = rbdlib.scan_diff(dest)
        return {"changed": False, "file": dest, "image": image, "snapshot": name,
                "mode": "incremental" if info["from_snap"] else "full",
                "from_snapshot": info["from_snap"], "fallback_reason": None,
                "sha256": _files.sha256_file(dest), "stored_bytes": _stream.stored_bytes(dest),
                "bytes_sent": 0, "data_bytes": info["data_bytes"], "size": info["size"],
                "msg": "already transferred"}
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory):
        raise VmbackupError("repository directory %s does not exist on the backup node %s" % (directory, runner.host))

    names = [s["name"] for s in rbd.snapshots(image)]
    if name not in names:
        raise VmbackupError(
            "snapshot %s is not on RBD image %s (hypervisor %s; snapshots of ours: %s): take it first "
            "with vmbackup.libvirt.rbd_export state=present" % (
                name, image, hv.label, ", ".join(sorted(n for n in names if rbdlib.is_ours(n))) or "none"))
    from_snap = rbdlib.snap_name(p["from_snapshot"]) if p.get("from_snapshot") else None
    reason = None
    if from_snap == name:
        raise VmbackupError("from_snapshot %s is the snapshot being exported" % from_snap)
    if from_snap and from_snap not in names:
        reason = ("snapshot %s of the previous backup is no longer on RBD image %s (snapshots of ours: %s), "
                  "so this backup is a full one"
                  % (from_snap, image, ", ".join(sorted(n for n in names if rbdlib.is_ours(n))) or "none"))
        if not p["fallback_full"]:
            raise VmbackupError(reason.replace("so this backup is a full one",
                                               "and fallback_full=false: nothing was exported"))
        from_snap = None
    mode = "incremental" if from_snap else "full"
    if module.check_mode:
        return {"changed": True, "file": dest, "image": image, "snapshot": name, "mode": mode,
                "from_snapshot": from_snap, "fallback_reason": reason}

    args = ["export-diff", "--no-progress"]
    if from_snap:
        args += ["--from-snap", from_snap]
    args += ["%s@%s" % (image, name), "-"]
    argv = hv.command_argv(rbd.argv(*args))
    start = time.time()
    sent = 0
    digest = hashlib.sha256()
    with _stream.writing_part(dest, runner.host, "file") as part:
        # 0600 from creation on: the repository is root's alone.
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _files.FILE_MODE)
        with tempfile.TemporaryFile() as errf, os.fdopen(fd, "wb") as out:
            proc = runner.spawn(argv, stdout=subprocess.PIPE, stderr=errf)
            try:
                fd = proc.stdout.fileno()
                while True:
                    block = os.read(fd, CHUNK)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    sent += len(block)
            finally:
                proc.stdout.close()
                rc = proc.wait()
            out.flush()
            os.fsync(out.fileno())
            errf.seek(0)
            err = errf.read().decode("utf-8", "replace")
        if rc != 0:
            raise _stream_failure(hv, rbd, image, "exporting snapshot %s" % name, argv, rc, err)
        try:
            info = rbdlib.scan_diff(part)
        except rbdlib.RbdDiffError as exc:
            raise VmbackupError(
                "the stream of rbd export-diff of %s@%s from hypervisor %s is not a whole rbd diff: %s. "
                "Nothing was kept; run the backup again." % (image, name, hv.label, exc.msg))
        if info["to_snap"] != name or info["from_snap"] != from_snap:
            raise VmbackupError(
                "the stream of rbd export-diff of %s from hypervisor %s goes from %s to %s, expected %s to %s; "
                "nothing was kept" % (image, hv.label, info["from_snap"], info["to_snap"], from_snap, name))
        _files.commit_part(part, dest)
    return {
        "changed": True, "file": dest, "image": image, "snapshot": name, "mode": mode,
        "from_snapshot": from_snap, "fallback_reason": reason,
        "sha256": digest.hexdigest(), "bytes_sent": sent, "stored_bytes": _stream.stored_bytes(dest),
        "data_bytes": info["data_bytes"], "zero_bytes": info["zero_bytes"], "size": info["size"],
        "duration": round(time.time() - start, 3),
    }


# --------------------------------------------------------------------------
# restore

def verify_chain(chain):
    """Check sha256 and structure of every file; return their descriptions."""
    paths = []
    for item in chain:
        path = item.get("path")
        expected = item.get("sha256")
        if not path or not expected:
            raise VmbackupError("each chain entry needs 'path' and 'sha256' (got %r)" % (item,))
        if not os.path.isfile(path):
            raise VmbackupError("backup file %s of the chain is missing on the backup node; nothing was written"
                                % path)
        disk_transfer.check_backup_file(path, expected, "file")
        paths.append(path)
    infos = []
    for path in paths:
        try:
            infos.append(rbdlib.scan_diff(path))
        except rbdlib.RbdDiffError as exc:
            raise VmbackupError("%s Nothing was written to the hypervisor." % exc.msg)
    try:
        rbdlib.check_chain(infos, paths)
    except rbdlib.RbdDiffError as exc:
        raise VmbackupError("%s. Nothing was written to the hypervisor." % exc.msg)
    return paths, infos


def import_diff(runner, hv, rbd, target, path):
    """Stream one diff file into ``rbd import-diff - TARGET`` on the hypervisor; return bytes sent."""
    argv = hv.command_argv(rbd.argv("import-diff", "--no-progress", "-", target))
    sent = 0
    with tempfile.TemporaryFile() as errf, open(path, "rb") as src:
        proc = runner.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
        broken = False
        try:
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                try:
                    proc.stdin.write(block)
                except BrokenPipeError:
                    broken = True
                    break
                sent += len(block)
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                broken = True
            rc = proc.wait()
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
    if rc != 0 or broken:
        raise _stream_failure(hv, rbd, target, "importing %s" % path, argv, rc if rc else 1, err)
    return sent


def restore_rbd(module, runner, hv, rbd, paths, infos):
    p = module.params
    target = rbdlib.check_image(p["image"])
    exists = rbd.exists(target)
    if exists and not p["force"]:
        raise VmbackupError(
            "restore target RBD image %s already exists (hypervisor %s); nothing was written. Choose another "
            "image or set force=true to replace it (its snapshots are removed too)." % (target, hv.label))
    snaps = [i["to_snap"] for i in infos]
    if module.check_mode:
        return {"changed": True, "target": target, "created": True, "replaced": exists,
                "size": infos[-1]["size"], "snapshots": snaps[-1:] if p["keep_snapshot"] else []}
    start = time.time()
    if exists:
        rbd.remove(target)
    rbd.create(target, infos[0]["size"])
    sent = 0
    try:
        for path in paths:
            sent += import_diff(runner, hv, rbd, target, path)
    except BaseException as exc:
        # the image holds a part of the chain: remove it, so that a new run starts clean
        try:
            rbd.remove(target)
            note = "the incomplete image %s was removed" % target
        except Exception:  # pragma: no cover - best effort
            note = "the incomplete image %s could not be removed: remove it by hand (rbd rm)" % target
        if isinstance(exc, VmbackupError):
            exc.msg = "%s; %s" % (exc.msg, note)
            exc.args = (exc.msg,)
        raise
    # import-diff creates each end snapshot only once its whole stream is applied: the last one
    # on the image says that the image holds the chain up to the selected backup.
    have = [s["name"] for s in rbd.snapshots(target)]
    if snaps[-1] not in have:
        rbd.remove(target)
        raise VmbackupError("restored RBD image %s on hypervisor %s lacks snapshot %s after import-diff "
                            "(it has: %s): the chain was not applied whole; the image was removed"
                            % (target, hv.label, snaps[-1], ", ".join(have) or "none"))
    keep = snaps[-1:] if p["keep_snapshot"] else []
    for snap in snaps:
        if snap not in keep:
            rbd.snap_remove(target, snap)
    return {"changed": True, "target": target, "created": True, "replaced": exists,
            "size": infos[-1]["size"], "bytes_sent": sent, "snapshots": keep,
            "duration": round(time.time() - start, 3)}


def restore_file(module, runner, hv, rbd, paths, infos):
    p = module.params
    target = p["image"]
    kind = p["target_kind"]
    if not os.path.isabs(target):
        raise VmbackupError("restore target %s must be an absolute path for target_kind=%s" % (target, kind))
    size = infos[-1]["size"]
    exists = hv.exists(target)
    if kind == "block" and not exists:
        raise VmbackupError("restore target block device %s does not exist on hypervisor %s: create it "
                            "first (for example an LV of at least %d bytes)" % (target, hv.label, size))
    if exists and not p["force"]:
        raise VmbackupError(
            "restore target %s already exists on hypervisor %s; nothing was written. Choose another "
            "target or set force=true to overwrite it." % (target, hv.label))
    if kind == "block":
        _rc, out, _err = hv.run(["blockdev", "--getsize64", target], "reading the size of %s" % target)
        if int(out.strip() or 0) < size:
            raise VmbackupError("restore target %s on hypervisor %s has %s bytes, the image needs %d; nothing "
                                "was written" % (target, hv.label, out.strip(), size))
    if module.check_mode:
        return {"changed": True, "target": target, "created": kind == "file", "size": size}
    start = time.time()
    tmpdir = p.get("tmpdir") or os.path.dirname(os.path.dirname(os.path.abspath(paths[-1])))
    fd, tmp = tempfile.mkstemp(prefix=".vmbackup-restore-", suffix=".raw", dir=tmpdir)
    written = 0
    try:
        current = None
        for path in paths:
            with open(path, "rb") as src:
                info = rbdlib.apply_diff(src, fd, where=path, expect_from=current)
            current = info["to_snap"]
            written += info["data_bytes"]
        os.close(fd)
        fd = None
        created = False
        if kind == "file":
            disk_transfer.create_private(hv, target, p["format"], p.get("size") or size)
            created = True
        fmt = p["format"] if kind == "file" else "raw"
        with _nbd_export.NbdExport(hv, target, fmt, writable=True) as nbd:
            # -t writeback: flushed before qemu-img returns (its default, unsafe, never flushes)
            argv = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "writeback", "-m", "8", "-W"]
            if created:
                argv.append("--target-is-zero")
            transfer.convert(runner, argv + [tmp, nbd.url],
                             what="writing the restored RBD backup to %s on hypervisor %s" % (target, hv.label),
                             hint="The target is incomplete; nothing replaced the VM's disks. Run the restore again.")
        if p["compare"]:  # a second read of the whole target: the caller may have verified the chain already
            transfer.compare(runner, hv, tmp, target, fmt, size=size if kind == "block" else None,
                             source_format="raw")
        if created:
            hv.run(["sync", "--", target, os.path.dirname(target)], "flushing %s" % target)
    except OSError as exc:
        if exc.errno == 28:
            raise VmbackupError("the temporary image %s on the backup node %s does not fit: its file system is "
                                "full. Set tmpdir to a directory with %d bytes free." % (tmp, runner.host, size))
        raise
    finally:
        if fd is not None:
            os.close(fd)
        _files.unlink_quietly(tmp)
    return {"changed": True, "target": target, "created": created, "size": size, "bytes_sent": written,
            "compared": p["compare"], "duration": round(time.time() - start, 3)}


def restore(module, runner, hv, rbd):
    paths, infos = verify_chain(module.params["chain"])
    if module.params["target_kind"] == "rbd":
        return restore_rbd(module, runner, hv, rbd, paths, infos)
    return restore_file(module, runner, hv, rbd, paths, infos)


def run(module):
    runner = CommandRunner(module)
    hv = _ssh.Hypervisor(runner, module.params)
    rbd = rbdlib.Rbd(None, module.params, hv.label)
    rbd.execute = _remote_execute(hv, rbd.timeout)
    if module.params["direction"] == "backup":
        result = backup(module, runner, hv, rbd)
    else:
        result = restore(module, runner, hv, rbd)
    result.setdefault("image", module.params["image"])
    return result
