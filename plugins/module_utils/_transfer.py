# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving disk images between a hypervisor and the repository on the backup node.

The node drives everything. Bulk data goes through well-kept tools:
- full images: ``qemu-nbd`` serves the frozen image on the hypervisor (read-only),
  OpenSSH forwards its unix socket to the node, and ``qemu-img convert`` reads
  it into a qcow2 in the repository. NBD block status means holes and zero
  regions are neither sent nor stored; memory stays constant.
- deltas: the frozen overlay of the previous backup is a small qcow2 that holds
  exactly the clusters written since; its bytes are streamed with ``cat`` over
  SSH and rebased onto the parent backup's image.
- restores: the reverse of a full image: ``qemu-nbd`` serves the new target
  writable on the hypervisor and ``qemu-img convert -n`` writes the chain into it.

Here: pull (full, delta), push, compare and qemu-img convert with a flushed output. How the
hypervisor is reached is ``_ssh``, the export ``_nbd_export``, a stream's copy and progress
``_stream``; callers import those from their own files.
"""

from __future__ import annotations

import contextlib
import json
import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils._nbd_export import NbdExport, qemu_opt
from ansible_collections.vmbackup.libvirt.plugins.module_utils._ssh import ssh_link_error
from ansible_collections.vmbackup.libvirt.plugins.module_utils._stream import (
    Progress,
    copy_stream,
    run_with_progress,
    writing_part,
)

# The cache mode of every image qemu-img writes into the repository. Without -t, qemu-img
# convert uses "unsafe" for its output: it never flushes, so a crash after it "succeeded" can
# lose the image. "writeback" goes through the page cache (O_DIRECT "none" fails on tmpfs, ZFS
# and others) and flushes (fdatasync) when the image is closed; "writethrough" would flush
# after every write, much slower for nothing more. The file is fsynced again before the
# manifest names it (Repository.commit).
OUTPUT_CACHE = "writeback"


def convert_argv(argv):
    """``argv`` (qemu-img convert ...) with the output cache mode set (-t), unless it has one."""
    argv = list(argv)
    if argv[:2] == ["qemu-img", "convert"] and "-t" not in argv:
        argv[2:2] = ["-t", OUTPUT_CACHE]
    return argv


def convert(runner, argv, what, hint, progress=None):
    """Run qemu-img convert (its output flushed: see OUTPUT_CACHE), with progress when asked."""
    argv = convert_argv(argv)
    try:
        if progress is not None and progress.path:
            rc, out, err = run_with_progress(runner, argv, progress)
            if rc != 0:
                raise CommandError(argv, rc, out, err, what=what, hint=hint, host=runner.host)
        else:
            runner.run(argv, what=what, hint=hint)
    except CommandError as exc:
        err = exc.stderr or ""
        if "No space left" in err:
            raise VmbackupError(
                "%s failed on the backup node %s: the repository's file system is full (%s). "
                "Free space or prune old backups; the partial image was removed." % (what, runner.host, err.strip()),
                cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
        raise


# Compression of the images stored in the repository: qcow2's own (every QEMU reads it, a
# restore needs nothing more). zstd: about zlib's ratio at several times its speed, and qemu-img
# compresses in a thread pool, so -m 8 keeps both cores busy. Only clusters written with -c are
# compressed; compression_type in the header names the algorithm.
COMPRESSIONS = ("none", "zstd")


def qcow2_output(compression="none"):
    """qemu-img convert options of a qcow2 written into the repository."""
    if compression not in COMPRESSIONS:
        raise VmbackupError("compression must be one of %s, not %r" % (", ".join(COMPRESSIONS), compression))
    if compression == "none":
        return ["-O", "qcow2", "-o", "compat=1.1", "-m", "8", "-W"]
    return ["-O", "qcow2", "-o", "compat=1.1,compression_type=%s" % compression, "-c", "-m", "8", "-W"]


def pull_full(runner, hv, image, fmt, dest, progress_file=None, compression="none"):
    """Copy the guest-visible content of ``image`` into a new qcow2 ``dest``."""
    out = qcow2_output(compression)
    what = "copying %s from hypervisor %s" % (image, hv.label)
    progress = Progress(progress_file, "%s:%s -> %s" % (hv.label, image, dest), watch=dest + ".part")
    with writing_part(dest, runner.host) as part, contextlib.closing(progress):
        with _files.private_umask():  # qemu-img creates the image 0600
            _pull_full(runner, hv, image, fmt, part, out, what, progress)
        _finish(part, dest)
    return {"mode": "full", "bytes_sent": data_bytes(runner, dest), "compression": compression}


def _pull_full(runner, hv, image, fmt, part, out, what, progress):
    """The copy itself: qemu-img convert from the image (local) or through qemu-nbd (ssh)."""
    if hv.transport == "local":
        # Node and hypervisor are one machine: read the frozen image itself, about 1.5x faster here
        # than through a local qemu-nbd (-U: the running VM holds it open as a read-only backing file).
        convert(runner, ["qemu-img", "convert", "-U", "-f", fmt] + out + [image, part], what=what,
                hint="Check that the image is readable and the repository has room; nothing was kept.",
                progress=progress)
    else:
        with NbdExport(hv, image, fmt) as nbd:
            convert(runner, ["qemu-img", "convert"] + nbd.source_args() + out + [nbd.spec, part], what=what,
                    hint="If the connection dropped, run the backup again; nothing was kept.",
                    progress=progress)


def pull_delta(runner, hv, image, dest, parent_image, progress_file=None, compression="none"):
    """Stream the frozen overlay ``image`` and rebase it onto ``parent_image`` (in the repository);
    with ``compression``, rewrite it compressed (a local read and write of the delta only)."""
    progress = Progress(progress_file, "%s:%s -> %s" % (hv.label, image, dest))
    with writing_part(dest, runner.host) as part, contextlib.closing(progress):
        if hv.transport == "ssh" and hv.channel in ("tls", "insecure-tcp"):
            # The overlay file's bytes, served raw over the TCP data channel.
            with NbdExport(hv, image, "raw") as nbd, _files.private_umask():
                convert(runner, ["qemu-img", "convert"] + nbd.source_args() + ["-O", "raw", nbd.spec, part],
                        what="copying %s from hypervisor %s" % (image, hv.label),
                        hint="If the connection dropped, run the backup again; nothing was kept.",
                        progress=Progress(progress.path, progress.label, watch=part))
        elif hv.transport == "local":
            copy_stream(open(image, "rb"), part, progress)
        else:
            proc = hv.runner.spawn(hv.command_argv(["cat", "--", image]))
            copy_stream(proc.stdout, part, progress)
            err = proc.stderr.read().decode("utf-8", "replace")
            if proc.wait() != 0:
                lost = ssh_link_error(hv, proc.returncode, err)
                if lost:
                    raise lost
                raise VmbackupError("reading %s on hypervisor %s failed (rc=%s): %s"
                                    % (image, hv.label, proc.returncode, err.strip()))
        sent = os.path.getsize(part)
        rel = os.path.relpath(parent_image, os.path.dirname(dest))
        # -t writeback: the header write is flushed when rebase closes the image.
        runner.run(["qemu-img", "rebase", "-u", "-t", OUTPUT_CACHE, "-f", "qcow2", "-b", rel, "-F", "qcow2", part],
                   what="linking the delta of %s to its parent backup" % image)
        runner.run(["qemu-img", "check", "-q", "-f", "qcow2", part],
                   what="checking the delta of %s" % image,
                   hint="The overlay read from the hypervisor is not a valid qcow2; run a full backup.")
        if compression != "none":
            _compress_delta(runner, part, rel, compression, image)
        _finish(part, dest)
    return {"mode": "delta", "bytes_sent": sent, "compression": compression}


def _compress_delta(runner, part, rel, compression, image):
    """The delta ``part`` rewritten compressed, the same clusters above the same parent (-B)."""
    packed = part + ".z"
    try:
        with _files.private_umask():
            convert(runner, ["qemu-img", "convert", "-f", "qcow2"] + qcow2_output(compression)
                    + ["-B", rel, "-F", "qcow2", part, packed],
                    what="compressing the delta of %s" % image, hint="Nothing was kept; run the backup again.")
        os.rename(packed, part)
    except BaseException:
        _files.unlink_quietly(packed)
        raise


def _finish(part, dest):
    """Make a finished image durable and private, then give it its name (and fsync that name)."""
    _files.make_private(part, _files.FILE_MODE)
    _files.commit_part(part, dest)


def push(runner, hv, source, target, target_format, target_is_zero=False, progress_file=None, source_format="qcow2"):
    """Write the chain whose top is ``source`` (in the repository) into ``target`` on the hypervisor.

    ``-t writeback``: qemu-img's default cache mode for its output is ``unsafe``, which never
    flushes; with writeback it sends a flush at the end, and qemu-nbd (--cache=writeback) fsyncs
    the target before answering it, so a push that returns is on stable storage.
    """
    progress = Progress(progress_file, "%s -> %s:%s" % (source, hv.label, target))
    try:
        with NbdExport(hv, target, target_format, writable=True) as nbd:
            argv = ["qemu-img", "convert", "-n", "-f", source_format] + nbd.target_args() + ["-m", "8", "-W"]
            if target_is_zero:
                argv.append("--target-is-zero")
            convert(runner, argv + [source, nbd.spec],
                    what="writing %s to %s on hypervisor %s" % (source, target, hv.label),
                    hint="The target is incomplete; nothing replaced the VM's disks. Run the restore again.",
                    progress=progress)
    finally:
        progress.close()


def _nbd_opts(nbd, size):
    """``json:`` options of the export, cut to ``size`` bytes (a target larger than the image)."""
    if nbd.tcp:
        server = {"type": "inet", "host": nbd.hv.data_address, "port": str(nbd.port)}
    else:
        server = {"type": "unix", "path": nbd.local_socket}
    return "json:" + json.dumps({"driver": "raw", "size": int(size),
                                 "file": {"driver": "nbd", "server": server}})


def compare_argv(nbd, source, size=None, source_format="qcow2"):
    """qemu-img compare of the chain ``source`` with the export (cut to ``size`` when given)."""
    if nbd.tls:
        # --image-opts names both images by options: the TLS credentials only reach the export so.
        src = "driver=%s,file.driver=file,file.filename=%s" % (source_format, qemu_opt(source))
        tgt = "driver=raw,%sfile.driver=nbd,file.host=%s,file.port=%d,file.tls-creds=vmbackup-tls" % (
            "size=%d," % int(size) if size else "", qemu_opt(nbd.hv.data_address), nbd.port)
        return ["qemu-img", "compare"] + nbd.client_object() + ["--image-opts", src, tgt]
    url = _nbd_opts(nbd, size) if size else nbd.url
    return ["qemu-img", "compare", "-f", source_format] + ([] if size else ["-F", "raw"]) + [source, url]


def compare(runner, hv, source, target, target_format, size=None, source_format="qcow2"):
    """Read the written ``target`` back and compare it with the chain ``source`` (qemu-img compare).

    ``size``: the image's virtual size when the target is larger (an LV rounded up to
    extents); the tail beyond it is not the restored disk's and is not compared.
    """
    with NbdExport(hv, target, target_format) as nbd:
        argv = compare_argv(nbd, source, size, source_format)
        rc, out, err = runner.run(argv, what="comparing %s with the backup" % target, check_rc=False)
    if rc != 0:
        raise VmbackupError(
            "the restored %s on hypervisor %s does not read back equal to the backup %s (qemu-img compare "
            "rc=%s: %s); it is not used. Run the restore again; if it fails again, check the target's storage."
            % (target, hv.label, source, rc, (out + " " + err).strip()), cmd=argv, rc=rc, stderr=err)


def data_bytes(runner, path):
    """Bytes of data (not holes, not zero clusters) in an image's own layer."""
    _rc, out, _err = runner.run(["qemu-img", "map", "--output=json", "-f", "qcow2", path],
                                what="mapping %s" % path)
    return sum(e["length"] for e in json.loads(out) if e.get("data") and e.get("depth", 0) == 0)
