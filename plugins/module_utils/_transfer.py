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

import contextlib
import errno
import json
import os
import secrets
import select
import shlex
import shutil
import sys
import tempfile
import time
import uuid

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files

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

# The fast data channels (disk_transfer only): ssh (the default, inside the SSH connection),
# tls (NBD over TLS with a pre-shared key made for each transfer) and insecure-tcp (plain NBD,
# no authentication at all: a bench reference, refused for restores).
DATA_CHANNELS = ("ssh", "tls", "insecure-tcp")
DATA_CHANNEL_ARGSPEC = dict(
    data_channel=dict(type="str", default="ssh", choices=list(DATA_CHANNELS)),
    data_address=dict(type="str"),
    data_port=dict(type="int", default=0),
)
# The user name of the pre-shared key (qemu's tls-creds-psk): not a secret; the key is.
PSK_USER = "vmbackup"
# The TLS cipher order of both ends (qemu's tls-creds ``priority``, a GnuTLS priority string):
# AES-GCM first. With GnuTLS's own default (NORMAL) qemu-nbd and qemu-img agreed on
# CHACHA20-POLY1305, computed in software (libnettle's chacha core was half of qemu-nbd's CPU
# time): a TLS backup took 4-5x a local qemu-img convert here, twice what AES-128-GCM (AES-NI)
# costs. CHACHA20-POLY1305 stays as the last choice for CPUs without AES instructions; only
# AEAD ciphers are offered.
TLS_PRIORITY = "NORMAL:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"


# The cache mode of every image qemu-img writes into the repository. Without -t, qemu-img
# convert uses "unsafe" for its output: it never flushes, so a crash after it "succeeded" can
# lose the image. "writeback" goes through the page cache (O_DIRECT "none" fails on tmpfs, ZFS
# and others) and flushes (fdatasync) when the image is closed; "writethrough" would flush
# after every write, much slower for nothing more. The file is fsynced again before the
# manifest names it (Repository.commit).
OUTPUT_CACHE = "writeback"


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
        # tls / insecure-tcp: bulk data over NBD on a TCP port of the hypervisor's data_address;
        # the SSH session still sets the server up (and hands it the key) and tears it down.
        self.channel = params.get("data_channel") or "ssh"
        if self.channel not in DATA_CHANNELS:
            raise VmbackupError("data_channel %r is not one of %s (the plain channel 'tcp' is now called "
                                "'insecure-tcp'; 'tls' is its authenticated, encrypted replacement)"
                                % (self.channel, ", ".join(DATA_CHANNELS)))
        self.data_address = params.get("data_address") or self.host or "127.0.0.1"
        self.data_port = params.get("data_port") or 0
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
            lost = ssh_link_error(self, exc.rc, exc.stderr, cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            if lost:
                raise lost
            raise

    def exists(self, path):
        rc, _out, _err = self.run(["test", "-e", path], "checking %s" % path, check_rc=False)
        return rc == 0


def ssh_link_error(hv, returncode, err, doing=None, remedy=None, **details):
    """The error to raise when a command run over ssh ended with ``returncode`` 255, else None.

    ssh exits 255 for its own failures (unreachable, host key, authentication, a lost
    connection), so a 255 through it says the SSH link failed, not the command. ``details``
    go to the error as they are (cmd, rc, stderr).
    """
    if returncode != 255 or hv.transport != "ssh":
        return None
    return VmbackupError(ssh_failure_message(hv, err, doing=doing, remedy=remedy), **details)


def ssh_failure_message(hv, stderr, doing=None, remedy=None):
    """One message for an ssh that ended with 255: what failed, why, and what to do.

    ``doing`` names the transfer that was under way, for a connection lost in the middle of it.
    """
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
    elif doing or _lost_connection(err):
        last = err.splitlines()[-1].strip().rstrip(".") if err else "the ssh process ended with rc=255"
        return ("lost the SSH connection from the backup node to %s@%s port %s while %s: %s. %s"
                % (hv.user, hv.host, hv.port, doing or "it was in use", last,
                   remedy or "Check the network and the hypervisor, then run it again."))
    return "SSH from the backup node to %s@%s port %s failed: %s. %s" % (hv.user, hv.host, hv.port, err, hint)


def _lost_connection(err):
    return any(m in err for m in ("closed by remote host", "Broken pipe", "Connection reset",
                                  "Timeout, server", "client_loop:", "Connection closed"))


def _qemu_opt(value):
    """A value inside a QEMU option string (``--object``, ``--image-opts``): commas doubled."""
    return str(value).replace(",", ",,")


# The server side of an NBD export, run by python3 on the hypervisor (or the node, for
# transport=local). A fixed text: every value comes as one JSON argument, the key (if any)
# as the first line of stdin, never on a command line. It makes the export's private 0700
# directory (it must not exist yet), writes the key file (0600) there, starts qemu-nbd (no
# --fork: its exit status is the verdict on the transfer, on restores its final flush), says
# READY when qemu-nbd wrote its pid file (it listens by then), waits until the node closes
# stdin (or the connection drops). After "done" (the transfer succeeded) it waits for qemu-nbd
# to exit (its client is gone, it flushes), otherwise it stops it; it reports qemu-nbd's exit
# status and removes the directory, key and socket included, whatever happened.
# On the tls and insecure-tcp channels it also makes the listening socket, bound to the data
# address, with TCP_NODELAY (the connection qemu-nbd accepts inherits it), and hands it to
# qemu-nbd by socket activation (LISTEN_FDS, fd 3; sh's exec keeps the pid LISTEN_PID names).
# qemu-nbd before QEMU 8.0 sets no TCP_NODELAY on its connections (fixed upstream by "nbd/server:
# push pending frames after sending reply"): Nagle's algorithm then holds back its small TLS
# records, replies and tails of reads, waiting for ACKs.
NBD_SERVER = r'''
import json, os, shutil, signal, socket, subprocess, sys, time
a = json.loads(sys.argv[1])
d = a["dir"]
def stop(*_ignored):
    raise SystemExit(1)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, stop)
made = False
p = None
try:
    os.mkdir(d, 0o700)
    made = True
    key = sys.stdin.readline().strip()
    if a["tls"]:
        if len(key) < 32:
            sys.stderr.write("vmbackup: no pre-shared key arrived on stdin\n")
            raise SystemExit(3)
        fd = os.open(os.path.join(d, "keys.psk"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, ("%s:%s\n" % (a["user"], key)).encode())
        os.close(fd)
    key = None
    argv, fds = a["argv"], ()
    if a["listen"]:
        host, port = a["listen"]
        try:
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((host, port))
            s.listen(1)
        except OSError as e:
            sys.stderr.write("vmbackup: cannot listen on %s port %s: %s\n" % (host, port, e))
            raise SystemExit(4)
        lfd = s.detach()  # a bare fd: no socket object left to close it again at exit
        if lfd != 3:
            os.dup2(lfd, 3)
            os.close(lfd)
        argv, fds = ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh"] + argv, (3,)
    pid = os.path.join(d, "qemu-nbd.pid")
    p = subprocess.Popen(argv + ["--pid-file=" + pid, a["image"]], pass_fds=fds,
                         stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
    if fds:
        os.close(3)  # qemu-nbd has it; its one client is the only one it accepts
    end = time.time() + a["timeout"]
    while not os.path.exists(pid) and p.poll() is None and time.time() < end:
        time.sleep(0.05)
    if not os.path.exists(pid):
        sys.stderr.write("vmbackup: qemu-nbd did not start (rc=%s)\n" % p.poll())
        raise SystemExit(4)
    sys.stdout.write(a["ready"] + "\n")
    sys.stdout.flush()
    done = sys.stdin.read().strip() == "done"
    try:
        rc = p.wait(a["close_timeout"] if done else 2)
    except subprocess.TimeoutExpired:
        p.terminate()
        p.wait()
        rc = "still-running" if done else "stopped"
    sys.stdout.write("%s %s\n" % (a["done"], rc))
    sys.stdout.flush()
finally:
    if p is not None and p.poll() is None:
        p.kill()
        p.wait()
    if made:
        shutil.rmtree(d, ignore_errors=True)
'''
DONE = "VMBACKUP-NBD-EXIT"


def refuse_insecure_restore(hv, target):
    """Restores never go over the unauthenticated channel: whoever connects first could write the disk."""
    if hv.transport == "ssh" and hv.channel == "insecure-tcp":
        raise VmbackupError(
            "the insecure-tcp data channel is refused for restores: it would serve %s writable on "
            "hypervisor %s to whoever connects first, without authentication; nothing was written. Use "
            "data_channel=tls (authenticated and encrypted) or ssh." % (target, hv.label))


class NbdExport:
    """qemu-nbd on the hypervisor, reachable from the node through ``source_args()``/``target_args()``
    and ``spec`` (the image name for qemu-img).

    Data channels:
    - ssh (default): qemu-nbd on a unix socket in a private directory, forwarded by the SSH
      session that started it;
    - tls: qemu-nbd on ``data_address:data_port`` of the hypervisor, NBD over TLS with a
      pre-shared key made for this transfer (``tls-creds-psk`` on both ends, the key in a 0600
      file in a 0700 directory on each end, sent to the hypervisor over the SSH session's
      stdin), one client (``--shared=1``, no ``--persistent``: it exits when that client is done);
    - insecure-tcp: the same without TLS (no authentication: anyone who connects first reads
      the disk); refused for writable exports (restores).
    On close, qemu-nbd must have exited cleanly (on restores that exit is the final flush).
    """

    def __init__(self, hv, image, fmt, writable=False):
        self.hv = hv
        self.image = image
        self.fmt = fmt
        self.writable = writable
        self.remote = hv.transport == "ssh"
        self.channel = hv.channel if self.remote else "ssh"
        self.tcp = self.channel in ("tls", "insecure-tcp")
        self.tls = self.channel == "tls"
        if self.writable:
            refuse_insecure_restore(hv, image)
        self.tmpdir = tempfile.mkdtemp(prefix="vmbackup-nbd-")  # 0700, the node's end
        tag = uuid.uuid4().hex
        self.local_socket = os.path.join(self.tmpdir, "nbd.sock")
        # The server's private directory: made (0700, must not exist) by NBD_SERVER.
        self.remote_dir = os.path.join(self.tmpdir, "srv") if not self.remote else "/tmp/vmbackup-nbd-%s" % tag
        self.remote_socket = os.path.join(self.remote_dir, "nbd.sock")
        if not self.remote:
            self.local_socket = self.remote_socket
        self.port = hv.data_port or 20000 + int(tag[:4], 16) % 20000
        self.key = secrets.token_hex(32) if self.tls else None
        self.proc = None
        self.exit_status = None
        self.err = ""
        self._stdout = b""

    # --- the node's end -------------------------------------------------------------------

    @property
    def url(self):
        """An NBD URL for clients that need no TLS credentials (ssh and insecure-tcp channels)."""
        if self.tls:
            raise VmbackupError("the tls data channel has no plain URL: use source_args()/target_args() and spec")
        if self.tcp:
            return "nbd://%s:%d/" % (_url_host(self.hv.data_address), self.port)
        return "nbd+unix:///?socket=%s" % self.local_socket

    @property
    def spec(self):
        """The export as qemu-img names it: an URL, or (tls) an --image-opts string."""
        if not self.tls:
            return self.url
        return "driver=nbd,host=%s,port=%d,tls-creds=vmbackup-tls" % (_qemu_opt(self.hv.data_address), self.port)

    def _client_object(self):
        return ["--object", "tls-creds-psk,id=vmbackup-tls,endpoint=client,dir=%s,username=%s,priority=%s"
                % (_qemu_opt(self.tmpdir), PSK_USER, TLS_PRIORITY)]

    def source_args(self):
        """qemu-img convert options that read ``spec`` as the (raw) source."""
        return self._client_object() + ["--image-opts"] if self.tls else ["-f", "raw"]

    def target_args(self):
        """qemu-img convert options that write ``spec`` as the (raw) target (with -n)."""
        return self._client_object() + ["--target-image-opts"] if self.tls else ["-O", "raw"]

    # --- the hypervisor's end -------------------------------------------------------------

    def nbd_argv(self):
        """qemu-nbd's arguments (NBD_SERVER adds --pid-file and the image): nothing secret."""
        if self.tcp:
            where = ["--shared=1"]  # NBD_SERVER's socket, bound to data_address:port ("listen")
        else:
            where = ["-k", self.remote_socket, "--shared=1"]
        argv = ["qemu-nbd", "-f", self.fmt] + where
        if self.tls:
            argv += ["--object", "tls-creds-psk,id=vmbackup-tls,endpoint=server,dir=%s,priority=%s"
                     % (_qemu_opt(self.remote_dir), TLS_PRIORITY), "--tls-creds", "vmbackup-tls"]
        # writeback, not none: O_DIRECT fails on tmpfs, ZFS and others; qemu-nbd flushes
        # (fsync) before it exits, and qemu-img convert asks for a flush at the end.
        argv.append("--cache=writeback")
        if self.writable:
            argv += ["--discard=unmap", "--detect-zeroes=unmap"]
        else:
            argv += ["--read-only"]
        return argv

    def server_params(self):
        return {"dir": self.remote_dir, "argv": self.nbd_argv(), "image": self.image, "tls": self.tls,
                "user": PSK_USER, "ready": READY, "done": DONE, "timeout": self.hv.ready_timeout,
                "close_timeout": CLOSE_TIMEOUT, "listen": [self.hv.data_address, self.port] if self.tcp else None}

    def server_argv(self):
        """The command that runs NBD_SERVER: on the node (local) or through ssh (remote)."""
        params = json.dumps(self.server_params(), sort_keys=True)
        if not self.remote:
            return [sys.executable, "-c", NBD_SERVER, params]
        remote = "python3 -c %s %s" % (shlex.quote(NBD_SERVER), shlex.quote(params))
        if self.channel == "ssh":
            return self.hv.ssh_argv(forward="%s:%s" % (self.local_socket, self.remote_socket)) + [remote]
        return self.hv.ssh_argv() + [remote]

    def __enter__(self):
        try:
            if self.tls:
                fd = os.open(os.path.join(self.tmpdir, "keys.psk"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write("%s:%s\n" % (PSK_USER, self.key))
            self.proc = self.hv.runner.spawn(self.server_argv(), stdin=-1, resolve=self.remote)
            try:
                self.proc.stdin.write(("%s\n" % (self.key or "")).encode())
                self.proc.stdin.flush()
            except OSError:
                pass  # the session ended already: _wait_ready says why
            self.key = None  # in the two key files only, from now on
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.time() + self.hv.ready_timeout + 15
        buf = b""
        while time.time() < deadline:
            ready, _w, _x = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                if READY.encode() in buf:
                    self._stdout = buf
                    if self.channel != "ssh" or not self.remote:
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
        lost = ssh_link_error(self.hv, self.proc.returncode, err)
        if lost:
            raise lost
        raise VmbackupError(
            "could not serve %s (%s) with qemu-nbd on hypervisor %s: %s. Check that qemu-nbd "
            "(Debian: qemu-utils, RHEL: qemu-img) and python3 are installed there, that the image exists%s."
            % (self.image, self.fmt, self.hv.label, (err or "no answer within %ss" % self.hv.ready_timeout).strip(),
               " and that %s:%s is free on it (data_address, data_port)" % (self.hv.data_address, self.port)
               if self.tcp else ""))

    def _stop(self, done=False):
        """End the session: after ``done`` qemu-nbd exits by itself (its one client is gone),
        otherwise it is stopped. Collects qemu-nbd's exit status; returns the session's stderr."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                if done:
                    self.proc.stdin.write(b"done\n")
                    self.proc.stdin.flush()
            except OSError:
                pass  # communicate() closes stdin: the server's end of the session
            try:
                out, err = self.proc.communicate(timeout=CLOSE_TIMEOUT + 30)
            except Exception:
                self.proc.kill()
                out, err = self.proc.communicate()
            out = self._stdout + (out or b"")
            self.err = (err or b"").decode("utf-8", "replace")
            for line in out.decode("utf-8", "replace").splitlines():
                if line.startswith(DONE + " "):
                    self.exit_status = line.split(" ", 1)[1].strip()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.err

    def _doing(self):
        where = ("over the TLS data channel to %s:%s" % (self.hv.data_address, self.port) if self.tls else
                 "over the insecure-tcp data channel to %s:%s" % (self.hv.data_address, self.port) if self.tcp else
                 "over the ssh data channel")
        return "%s %s on hypervisor %s %s" % ("writing" if self.writable else "reading", self.image, self.hv.label, where)

    def __exit__(self, exc_type, exc, _tb):
        failed = exc_type is not None
        self._stop(done=not failed)
        tool = ""
        if isinstance(exc, CommandError):
            tool = " (%s, rc=%s)" % (" ".join([os.path.basename(str(exc.argv[0]))] + [str(a) for a in exc.argv[1:2]]), exc.rc)
        # One message for the lost connection, not qemu-img's dozen I/O errors.
        remedy = ("The target is incomplete: check the network and the hypervisor, then run the restore "
                  "again (force=true writes it again)." if self.writable else
                  "Nothing of this transfer is kept: check the network and the hypervisor, then run the "
                  "backup again.")
        lost = ssh_link_error(self.hv, self.proc.returncode if self.proc is not None else None, self.err,
                              doing=self._doing() + tool, remedy=remedy,
                              cmd=getattr(exc, "argv", None), rc=255, stderr=self.err.strip())
        if lost:
            raise lost
        if failed and self.tls and isinstance(exc, CommandError) and "TLS" in (exc.stderr or ""):
            first = [ln for ln in exc.stderr.splitlines() if "TLS" in ln][0].strip()
            raise VmbackupError(
                "the TLS handshake failed while %s%s: %s. The server did not accept this transfer's pre-shared "
                "key (or is not the export made for it): check that nothing else listens on %s:%s of the "
                "hypervisor and that data_address is the hypervisor's own address."
                % (self._doing(), tool, first, self.hv.data_address, self.port),
                cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
        if failed:
            if self.exit_status not in (None, "0") and isinstance(exc, CommandError):
                raise VmbackupError(
                    "the NBD server vanished while %s%s: qemu-nbd ended with %s (%s). Nothing that this transfer "
                    "wrote is kept; check the hypervisor (memory, its log) and run it again."
                    % (self._doing(), tool, _status(self.exit_status), self.err.strip() or "no message"),
                    cmd=exc.argv, rc=exc.rc, stderr=self.err.strip())
            return False
        if self.exit_status != "0":
            raise VmbackupError(
                "qemu-nbd did not exit cleanly after %s: %s%s. %s"
                % (self._doing(), _status(self.exit_status), "; stderr: %s" % self.err.strip() if self.err.strip() else "",
                   "The target may not be flushed: run the restore again with force=true."
                   if self.writable else "Run the backup again; nothing of this transfer is kept."),
                rc=self.proc.returncode if self.proc else None, stderr=self.err.strip())
        return False


CLOSE_TIMEOUT = 300  # seconds qemu-nbd may take to flush and exit once its client is done


def _status(status):
    if status is None:
        return "no exit status (the server's session ended without reporting one)"
    if status == "still-running":
        return "still running %d s after its client was done (stopped)" % CLOSE_TIMEOUT
    try:
        rc = int(status)
    except ValueError:
        return "status %s" % status
    return "signal %d" % -rc if rc < 0 else "rc=%d" % rc


def _url_host(address):
    return "[%s]" % address if ":" in address else address


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
        _files.write_progress(self.path, state)  # never fails a transfer

    def close(self):
        if self.path:
            _files.unlink_quietly(self.path)


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


@contextlib.contextmanager
def writing_part(dest, host, what="image"):
    """``dest + ".part"``, for the block that writes it: removed if the block fails, and a full
    file system (ENOSPC) said so in one message."""
    part = dest + ".part"
    try:
        yield part
    except BaseException as exc:
        _files.unlink_quietly(part)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise VmbackupError("writing %s on the backup node %s failed: the repository's file system is "
                                "full. Free space or prune old backups; the partial %s was removed." % (dest, host, what))
        raise


def pull_full(runner, hv, image, fmt, dest, progress_file=None):
    """Copy the guest-visible content of ``image`` into a new qcow2 ``dest``."""
    out = ["-O", "qcow2", "-o", "compat=1.1", "-m", "8", "-W"]
    what = "copying %s from hypervisor %s" % (image, hv.label)
    progress = Progress(progress_file, "%s:%s -> %s" % (hv.label, image, dest), watch=dest + ".part")
    with writing_part(dest, runner.host) as part, contextlib.closing(progress):
        with _files.private_umask():  # qemu-img creates the image 0600
            _pull_full(runner, hv, image, fmt, part, out, what, progress)
        _finish(part, dest)
    return {"mode": "full", "bytes_sent": data_bytes(runner, dest)}


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


def pull_delta(runner, hv, image, dest, parent_image, progress_file=None):
    """Stream the frozen overlay ``image`` and rebase it onto ``parent_image`` (in the repository)."""
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
            _copy_stream(open(image, "rb"), part, progress)
        else:
            proc = hv.runner.spawn(hv.command_argv(["cat", "--", image]))
            _copy_stream(proc.stdout, part, progress)
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
        _finish(part, dest)
    return {"mode": "delta", "bytes_sent": sent}


def _finish(part, dest):
    """Make a finished image durable and private, then give it its name (and fsync that name)."""
    _files.make_private(part, _files.FILE_MODE)
    _files.commit_part(part, dest)


def _copy_stream(src, path, progress):
    """Copy a byte stream into ``path`` (0600 from creation on) in constant memory, fsynced."""
    sent = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _files.FILE_MODE)
    with src, os.fdopen(fd, "wb") as out:
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
        src = "driver=%s,file.driver=file,file.filename=%s" % (source_format, _qemu_opt(source))
        tgt = "driver=raw,%sfile.driver=nbd,file.host=%s,file.port=%d,file.tls-creds=vmbackup-tls" % (
            "size=%d," % int(size) if size else "", _qemu_opt(nbd.hv.data_address), nbd.port)
        return ["qemu-img", "compare"] + nbd._client_object() + ["--image-opts", src, tgt]
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
