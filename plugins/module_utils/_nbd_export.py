# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD export of a disk on the hypervisor, for the length of one transfer.

``NbdExport`` starts ``NBD_SERVER`` (a fixed Python text) through the SSH session (or on the
node itself), which runs ``qemu-nbd`` on the image; the node reads or writes it with
``qemu-img`` over the data channel (the forwarded unix socket, NBD over TLS with a pre-shared
key made for the transfer, or plain TCP) and, at the end, learns whether qemu-nbd exited cleanly.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import sys
import tempfile
import time
import uuid

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._ssh import ssh_link_error

READY = "VMBACKUP-NBD-READY"
# The user name of the pre-shared key (qemu's tls-creds-psk): not a secret; the key is.
PSK_USER = "vmbackup"
# The TLS cipher order of both ends (qemu's tls-creds ``priority``, a GnuTLS priority string):
# AES-GCM first. With GnuTLS's own default (NORMAL) qemu-nbd and qemu-img agreed on
# CHACHA20-POLY1305, computed in software (libnettle's chacha core was half of qemu-nbd's CPU
# time): a TLS backup took 4-5x a local qemu-img convert here, twice what AES-128-GCM (AES-NI)
# costs. CHACHA20-POLY1305 stays as the last choice for CPUs without AES instructions; only
# AEAD ciphers are offered.
TLS_PRIORITY = "NORMAL:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"


def qemu_opt(value):
    """A value inside a QEMU option string (``--object``, ``--image-opts``): commas doubled."""
    return str(value).replace(",", ",,")


# The server side of an NBD export, run by python3 on the hypervisor (or the node, for
# transport=local). A fixed text, and so is its command line (SERVER_BOOTSTRAP): the script,
# its parameters (one JSON line) and the key (if any) come on stdin, in that order, so nothing
# is quoted for the remote shell and no value (the key least of all) is on a command line.
# It makes the export's private 0700 directory (it must not exist yet), writes the key file
# (0600) there, starts qemu-nbd (no --fork: its exit status is the verdict on the transfer, on
# restores its final flush), says
# READY when qemu-nbd wrote its pid file (it listens by then), waits until the node closes
# stdin (or the connection drops). After "done" (the transfer succeeded) it waits for qemu-nbd
# to exit (its client is gone, it flushes), otherwise it stops it; it reports qemu-nbd's exit
# status and removes the directory, key and socket included, whatever happened.
# On the tls and insecure-tcp channels it also makes the listening socket, bound to the data
# address, with TCP_NODELAY (the connection qemu-nbd accepts inherits it), and hands it to
# qemu-nbd by socket activation (LISTEN_FDS, fd 3; sh's exec keeps the pid LISTEN_PID names;
# sh's text is fixed too, qemu-nbd's argv reaches it as "$@").
# qemu-nbd before QEMU 8.0 sets no TCP_NODELAY on its connections (fixed upstream by "nbd/server:
# push pending frames after sending reply"): Nagle's algorithm then holds back its small TLS
# records, replies and tails of reads, waiting for ACKs.
NBD_SERVER = r'''
import json, os, shutil, signal, socket, subprocess, sys, time
a = json.loads(sys.stdin.readline())
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
# The session's whole command line: python3 reads NBD_SERVER (a JSON string) from stdin and runs
# it; the script goes on reading the same stdin. A constant: nothing in it comes from the export.
SERVER_BOOTSTRAP = "import json, sys; exec(json.loads(sys.stdin.readline()))"


def server_input(params, key=None):
    """What the session reads first on stdin: the script, its parameters, the key line."""
    return ("%s\n%s\n%s\n" % (json.dumps(NBD_SERVER), json.dumps(params, sort_keys=True), key or "")).encode()


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
        return "driver=nbd,host=%s,port=%d,tls-creds=vmbackup-tls" % (qemu_opt(self.hv.data_address), self.port)

    def client_object(self):
        return ["--object", "tls-creds-psk,id=vmbackup-tls,endpoint=client,dir=%s,username=%s,priority=%s"
                % (qemu_opt(self.tmpdir), PSK_USER, TLS_PRIORITY)]

    def source_args(self):
        """qemu-img convert options that read ``spec`` as the (raw) source."""
        return self.client_object() + ["--image-opts"] if self.tls else ["-f", "raw"]

    def target_args(self):
        """qemu-img convert options that write ``spec`` as the (raw) target (with -n)."""
        return self.client_object() + ["--target-image-opts"] if self.tls else ["-O", "raw"]

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
                     % (qemu_opt(self.remote_dir), TLS_PRIORITY), "--tls-creds", "vmbackup-tls"]
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
        """The command that runs NBD_SERVER: on the node (local) or through ssh (remote); the
        same fixed text for every export, whose values all go on stdin (``server_input``)."""
        python = "python3" if self.remote else sys.executable
        forward = "%s:%s" % (self.local_socket, self.remote_socket) if self.remote and self.channel == "ssh" else None
        return self.hv.command_argv([python, "-c", SERVER_BOOTSTRAP], forward=forward)

    def __enter__(self):
        try:
            if self.tls:
                fd = os.open(os.path.join(self.tmpdir, "keys.psk"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write("%s:%s\n" % (PSK_USER, self.key))
            self.proc = self.hv.runner.spawn(self.server_argv(), stdin=-1, resolve=self.remote)
            try:
                self.proc.stdin.write(server_input(self.server_params(), self.key))
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
