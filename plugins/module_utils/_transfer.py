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
SSH always checks host keys strictly against the given known_hosts file.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shlex
import shutil
import tempfile
import time
import uuid

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)

CHUNK = 1024 * 1024
READY = "VMBACKUP-NBD-READY"

CONNECTION_ARGSPEC = dict(
    transport=dict(type="str", default="ssh", choices=["ssh", "local"]),
    ssh_host=dict(type="str"),
    ssh_port=dict(type="int", default=22),
    ssh_user=dict(type="str", default="root"),
    ssh_private_key=dict(type="path"),
    known_hosts=dict(type="path", default="~/.ssh/known_hosts"),
    ssh_options=dict(type="list", elements="str", default=[]),
    ready_timeout=dict(type="int", default=60),
)

# The plain TCP data channel (disk_transfer only).
DATA_CHANNEL_ARGSPEC = dict(
    data_channel=dict(type="str", default="ssh", choices=["ssh", "tcp"]),
    tcp_address=dict(type="str"),
    tcp_port=dict(type="int", default=0),
)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def stored_bytes(path):
    """Bytes the file really occupies (sparse files count only their data)."""
    return os.stat(path).st_blocks * 512


class Hypervisor:
    """How the node reaches a hypervisor: over SSH, or locally when they are one machine."""

    def __init__(self, runner, params):
        self.runner = runner
        self.transport = params["transport"]
        self.host = params.get("ssh_host")
        self.port = params.get("ssh_port") or 22
        self.user = params.get("ssh_user") or "root"
        self.key = params.get("ssh_private_key")
        self.known_hosts = os.path.expanduser(params.get("known_hosts") or "~/.ssh/known_hosts")
        self.extra = params.get("ssh_options") or []
        self.ready_timeout = params.get("ready_timeout") or 60
        # tcp: bulk data over plain NBD/TCP to an address of the hypervisor (trusted networks
        # only: no encryption); the SSH session still sets it up and tears it down.
        self.channel = params.get("data_channel") or "ssh"
        self.tcp_address = params.get("tcp_address") or self.host or "127.0.0.1"
        self.tcp_port = params.get("tcp_port") or 0
        if self.transport == "ssh":
            if not self.host:
                raise VmbackupError("ssh_host is required with transport=ssh")
            if not os.path.exists(self.known_hosts):
                raise VmbackupError(
                    "known_hosts file %s does not exist on the backup node %s: host keys are always "
                    "checked. Run the vmbackup.libvirt.prep playbook to record the hypervisors' keys."
                    % (self.known_hosts, runner.host))

    @property
    def label(self):
        return self.host if self.transport == "ssh" else "localhost"

    def ssh_argv(self, forward=None):
        argv = ["ssh", "-T", "-p", str(self.port),
                "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "UserKnownHostsFile=%s" % self.known_hosts,
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "ServerAliveInterval=10",
                "-o", "ServerAliveCountMax=6",
                "-o", "Compression=no",
                "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if forward:
            argv += ["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", "-L", forward]
        for opt in self.extra:
            argv += ["-o", opt]
        argv += ["-l", self.user, self.host, "--"]
        return argv

    def command_argv(self, argv):
        """An argument list to run ``argv`` on the hypervisor."""
        if self.transport == "local":
            return list(argv)
        return self.ssh_argv() + [" ".join(shlex.quote(str(a)) for a in argv)]

    def run(self, argv, what, check_rc=True, data=None):
        full = self.command_argv(argv)
        try:
            return self.runner.run(full, what="%s on hypervisor %s" % (what, self.label),
                                   check_rc=check_rc, data=data)
        except CommandError as exc:
            if exc.rc == 255 and self.transport == "ssh":
                raise VmbackupError(ssh_failure_message(self, exc.stderr), cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            raise

    def exists(self, path):
        rc, _out, _err = self.run(["test", "-e", path], "checking %s" % path, check_rc=False)
        return rc == 0


def ssh_failure_message(hv, stderr):
    err = (stderr or "").strip()
    hint = "Check that the hypervisor is reachable and that the backup node's key is authorized there."
    if "host key is known" in err:
        hint = ("The hypervisor's host key is not in %s: run the vmbackup.libvirt.prep playbook to "
                "record it (with its fingerprint pinned)." % hv.known_hosts)
    elif "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
        hint = ("The hypervisor's host key is not the one recorded in %s: if the key really changed, "
                "verify it and run the vmbackup.libvirt.prep playbook; otherwise someone may be "
                "intercepting the connection." % hv.known_hosts)
    elif "Permission denied" in err:
        hint = "The backup node's key is not authorized for %s@%s: run the vmbackup.libvirt.prep playbook." % (hv.user, hv.host)
    return "SSH from the backup node to %s@%s port %s failed: %s. %s" % (hv.user, hv.host, hv.port, err, hint)


class NbdExport:
    """qemu-nbd on the hypervisor, reachable on the node at ``self.url``.

    By default through its unix socket, forwarded by the SSH session that started it; with
    the tcp data channel, on a TCP port of the hypervisor's address (one client, then it exits).
    """

    def __init__(self, hv, image, fmt, writable=False):
        self.hv = hv
        self.image = image
        self.fmt = fmt
        self.writable = writable
        self.tmpdir = tempfile.mkdtemp(prefix="vmbackup-nbd-")
        tag = uuid.uuid4().hex[:12]
        self.local_socket = os.path.join(self.tmpdir, "nbd.sock")
        self.remote_socket = self.local_socket if hv.transport == "local" else "/tmp/vmbackup-nbd-%s.sock" % tag
        self.tcp = hv.transport == "ssh" and hv.channel == "tcp"
        self.port = hv.tcp_port or 20000 + int(tag[:4], 16) % 20000
        self.proc = None

    @property
    def url(self):
        if self.tcp:
            return "nbd://%s:%d/" % (self.hv.tcp_address, self.port)
        return "nbd+unix:///?socket=%s" % self.local_socket

    def _nbd_argv(self):
        where = ["-b", self.hv.tcp_address, "-p", str(self.port)] if self.tcp else ["-k", self.remote_socket]
        argv = ["qemu-nbd", "--fork", "--pid-file=%s.pid" % self.remote_socket, "-f", self.fmt] + where
        # writeback, not none: O_DIRECT fails on tmpfs, ZFS and others; qemu-nbd flushes
        # (fsync) before it exits, and qemu-img convert asks for a flush at the end.
        argv.append("--cache=writeback")
        if self.writable:
            argv += ["--discard=unmap", "--detect-zeroes=unmap"]
        else:
            argv += ["--read-only"]
        return argv + [self.image]

    def __enter__(self):
        nbd = " ".join(shlex.quote(a) for a in self._nbd_argv())
        sock = shlex.quote(self.remote_socket)
        # The shell keeps the SSH session (and so the forward) open until the node closes
        # its stdin; then, or when the connection drops, it stops qemu-nbd and cleans up.
        script = ("trap 'kill $(cat %s.pid 2>/dev/null) 2>/dev/null; rm -f %s %s.pid' EXIT; "
                  "%s || exit $?; echo %s; read _ignored || true" % (sock, sock, sock, nbd, READY))
        if self.hv.transport == "local":
            argv = ["sh", "-c", script]
            self.proc = self.hv.runner.spawn(argv, stdin=-1)
        elif self.tcp:
            self.proc = self.hv.runner.spawn(self.hv.ssh_argv() + [script], stdin=-1, resolve=True)
        else:
            argv = self.hv.ssh_argv(forward="%s:%s" % (self.local_socket, self.remote_socket)) + [script]
            self.proc = self.hv.runner.spawn(argv, stdin=-1, resolve=True)
        self._wait_ready()
        return self

    def _wait_ready(self):
        deadline = time.time() + self.hv.ready_timeout
        buf = b""
        while time.time() < deadline:
            ready, _w, _x = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                if READY.encode() in buf:
                    if self.tcp:
                        return
                    # The forward is up once ssh authenticated; wait for the node-side socket too.
                    for _i in range(100):
                        if os.path.exists(self.local_socket):
                            return
                        time.sleep(0.05)
                    break
            elif self.proc.poll() is not None:
                break
        err = self._stop()
        if self.hv.transport == "ssh" and self.proc.returncode == 255:
            raise VmbackupError(ssh_failure_message(self.hv, err))
        raise VmbackupError(
            "could not serve %s (%s) with qemu-nbd on hypervisor %s: %s. Check that qemu-nbd "
            "(Debian: qemu-utils, RHEL: qemu-img) is installed there and that the image exists."
            % (self.image, self.fmt, self.hv.label, (err or "no answer within %ss" % self.hv.ready_timeout).strip()))

    def _stop(self):
        err = ""
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            err = self.proc.stderr.read().decode("utf-8", "replace")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return err

    def __exit__(self, *exc):
        self._stop()
        return False


class Progress:
    """A small JSON file that the vmbackup.libvirt.progress callback shows while a transfer runs."""

    def __init__(self, path, label, watch=None):
        self.path = path
        self.label = label
        self.watch = watch  # a file whose allocated size is the bytes done so far
        self.start = time.time()
        self.last = 0.0

    def update(self, done=None, percent=None, force=False):
        if not self.path or (not force and time.time() - self.last < 1.0):
            return
        self.last = time.time()
        if done is None and self.watch:
            try:
                done = stored_bytes(self.watch)
            except OSError:
                done = 0
        elapsed = max(self.last - self.start, 0.001)
        state = {"label": self.label, "done": done, "percent": percent, "elapsed": round(elapsed, 1),
                 "rate": int(done / elapsed) if done else 0,
                 "eta": round(elapsed * (100.0 - percent) / percent, 1) if percent else None}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".tmp", "w") as fh:
                json.dump(state, fh)
            os.rename(self.path + ".tmp", self.path)
        except OSError:
            pass  # progress is a courtesy; never fail a transfer for it

    def close(self):
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _run_with_progress(runner, argv, progress):
    """Run qemu-img convert -p, feeding its percentages to ``progress``; (rc, stdout, stderr)."""
    full = [argv[0], argv[1], "-p"] + list(argv[2:])
    proc = runner.spawn(full)
    buf = b""
    while True:
        ready, _w, _x = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf = (buf + chunk)[-256:]
            marks = [m for m in buf.replace(b"\r", b"\n").split(b"\n") if b"/100%" in m]
            if marks:
                try:
                    progress.update(percent=float(marks[-1].strip().strip(b"()").split(b"/")[0]))
                except ValueError:
                    pass
        elif proc.poll() is not None:
            break
    err = proc.stderr.read().decode("utf-8", "replace")
    return proc.wait(), "", err


def convert(runner, argv, what, hint, progress=None):
    try:
        if progress is not None and progress.path:
            rc, out, err = _run_with_progress(runner, argv, progress)
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


def pull_full(runner, hv, image, fmt, dest, progress_file=None):
    """Copy the guest-visible content of ``image`` into a new qcow2 ``dest``."""
    part = dest + ".part"
    progress = Progress(progress_file, "%s:%s -> %s" % (hv.label, image, dest), watch=part)
    out = ["-O", "qcow2", "-o", "compat=1.1", "-m", "8", "-W"]
    what = "copying %s from hypervisor %s" % (image, hv.label)
    try:
        if hv.transport == "local":
            # Node and hypervisor are one machine: read the frozen image itself, about 1.5x faster here
            # than through a local qemu-nbd (-U: the running VM holds it open as a read-only backing file).
            convert(runner, ["qemu-img", "convert", "-U", "-f", fmt] + out + [image, part], what=what,
                    hint="Check that the image is readable and the repository has room; nothing was kept.",
                    progress=progress)
        else:
            with NbdExport(hv, image, fmt) as nbd:
                convert(runner, ["qemu-img", "convert", "-f", "raw"] + out + [nbd.url, part], what=what,
                        hint="If the connection dropped, run the backup again; nothing was kept.",
                        progress=progress)
        os.rename(part, dest)
    except Exception:
        _unlink(part)
        raise
    finally:
        progress.close()
    return {"mode": "full", "bytes_sent": data_bytes(runner, dest)}


def pull_delta(runner, hv, image, dest, parent_image, progress_file=None):
    """Stream the frozen overlay ``image`` and rebase it onto ``parent_image`` (in the repository)."""
    part = dest + ".part"
    progress = Progress(progress_file, "%s:%s -> %s" % (hv.label, image, dest))
    try:
        if hv.transport == "ssh" and hv.channel == "tcp":
            # The overlay file's bytes, served raw over the TCP data channel.
            with NbdExport(hv, image, "raw") as nbd:
                convert(runner, ["qemu-img", "convert", "-f", "raw", "-O", "raw", nbd.url, part],
                        what="copying %s from hypervisor %s" % (image, hv.label),
                        hint="If the connection dropped, run the backup again; nothing was kept.",
                        progress=Progress(progress.path, progress.label, watch=part))
        elif hv.transport == "local":
            _copy_stream(open(image, "rb"), part, progress)
        else:
            proc = hv.runner.spawn(hv.command_argv(["cat", "--", image]))
            _copy_stream(proc.stdout, part, progress)
            err = proc.stderr.read().decode("utf-8", "replace")
            if proc.wait() != 0:
                if proc.returncode == 255:
                    raise VmbackupError(ssh_failure_message(hv, err))
                raise VmbackupError("reading %s on hypervisor %s failed (rc=%s): %s"
                                    % (image, hv.label, proc.returncode, err.strip()))
        sent = os.path.getsize(part)
        rel = os.path.relpath(parent_image, os.path.dirname(dest))
        runner.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", rel, "-F", "qcow2", part],
                   what="linking the delta of %s to its parent backup" % image)
        runner.run(["qemu-img", "check", "-q", "-f", "qcow2", part],
                   what="checking the delta of %s" % image,
                   hint="The overlay read from the hypervisor is not a valid qcow2; run a full backup.")
        os.rename(part, dest)
    except OSError as exc:
        _unlink(part)
        if exc.errno == 28:
            raise VmbackupError("writing %s on the backup node %s failed: the repository's file system is "
                                "full. Free space or prune old backups; the partial image was removed." % (dest, runner.host))
        raise
    except Exception:
        _unlink(part)
        raise
    finally:
        progress.close()
    return {"mode": "delta", "bytes_sent": sent}


def _copy_stream(src, path, progress):
    """Copy a byte stream into ``path`` in constant memory, fsynced."""
    sent = 0
    with src, open(path, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            out.write(block)
            sent += len(block)
            progress.update(done=sent)
        out.flush()
        os.fsync(out.fileno())


def push(runner, hv, source, target, target_format, target_is_zero=False, progress_file=None, source_format="qcow2"):
    """Write the chain whose top is ``source`` (in the repository) into ``target`` on the hypervisor.

    ``-t writeback``: qemu-img's default cache mode for its output is ``unsafe``, which never
    flushes; with writeback it sends a flush at the end, and qemu-nbd (--cache=writeback) fsyncs
    the target before answering it, so a push that returns is on stable storage.
    """
    progress = Progress(progress_file, "%s -> %s:%s" % (source, hv.label, target))
    try:
        with NbdExport(hv, target, target_format, writable=True) as nbd:
            argv = ["qemu-img", "convert", "-n", "-f", source_format, "-O", "raw", "-t", "writeback",
                    "-m", "8", "-W"]
            if target_is_zero:
                argv.append("--target-is-zero")
            convert(runner, argv + [source, nbd.url],
                    what="writing %s to %s on hypervisor %s" % (source, target, hv.label),
                    hint="The target is incomplete; nothing replaced the VM's disks. Run the restore again.",
                    progress=progress)
    finally:
        progress.close()


def _nbd_opts(nbd, size):
    """``json:`` options of the export, cut to ``size`` bytes (a target larger than the image)."""
    if nbd.tcp:
        server = {"type": "inet", "host": nbd.hv.tcp_address, "port": str(nbd.port)}
    else:
        server = {"type": "unix", "path": nbd.local_socket}
    return "json:" + json.dumps({"driver": "raw", "size": int(size),
                                 "file": {"driver": "nbd", "server": server}})


def compare(runner, hv, source, target, target_format, size=None, source_format="qcow2"):
    """Read the written ``target`` back and compare it with the chain ``source`` (qemu-img compare).

    ``size``: the image's virtual size when the target is larger (an LV rounded up to
    extents); the tail beyond it is not the restored disk's and is not compared.
    """
    with NbdExport(hv, target, target_format) as nbd:
        url = _nbd_opts(nbd, size) if size else nbd.url
        argv = ["qemu-img", "compare", "-f", source_format] + ([] if size else ["-F", "raw"]) + [source, url]
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


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
