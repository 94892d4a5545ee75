"""The TLS data channel end to end: NBD over TLS with a pre-shared key made for each transfer.

Real components only: a TCG guest on the test bed's libvirtd, the hypervisor reached over real SSH
(endpoint hv1, 127.0.0.11, host keys checked), real qemu-nbd / qemu-img / qemu-io, real
ansible-playbook runs. One guest (``h2-tls``, module-scoped) serves the playbook cases; the export
cases serve a small image of their own. On the code before the TLS channel existed every case here
fails (there was no ``tls`` channel, no ``data_address``, and ``tcp`` served restores writable
without authentication).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import COLLECTIONS, TB, image_sha256, ssh_inventory

import domains  # tests/testbed/domains.py

if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer as transfer  # noqa: E402
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh  # noqa: E402
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (  # noqa: E402
    CommandRunner, VmbackupError)

MiB = 1024 * 1024
BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
VM = "h2-tls"
RESTORED = "h2-tls-r"
WORK = "/var/tmp/h2-tls-work"
HV1 = {"address": "127.0.0.11", "port": 22}

pytestmark = pytest.mark.usefixtures("libvirt", "sshd")


class _Module:
    """What CommandRunner needs of AnsibleModule (the runner itself is the collection's own)."""

    def get_bin_path(self, name, required=False, opt_dirs=()):
        import shutil
        return shutil.which(name)

    def run_command(self, argv, data=None, environ_update=None, binary_data=False, **_kw):
        env = dict(os.environ, **(environ_update or {}))
        if isinstance(data, str):
            data = data.encode() + (b"" if binary_data else b"\n")
        cp = subprocess.run(argv, input=data, capture_output=True, env=env, check=False, timeout=900)
        return cp.returncode, cp.stdout.decode("utf-8", "replace"), cp.stderr.decode("utf-8", "replace")


def hypervisor(channel):
    runner = CommandRunner(_Module(), host="backup-node")
    return runner, _ssh.Hypervisor(runner, {
        "transport": "ssh", "ssh_host": HV1["address"], "ssh_port": HV1["port"], "ssh_user": "root",
        "ssh_private_key": os.path.join(TB, "ssh", "id_ed25519"),
        "known_hosts": os.path.join(TB, "ssh", "known_hosts"), "ssh_options": [], "ready_timeout": 120,
        "data_channel": channel, "data_address": HV1["address"], "data_port": 0})


def manifests(repo, vm=VM):
    out = []
    for path in sorted(glob.glob(os.path.join(repo, vm, "*", "manifest.json"))):
        with open(path) as fh:
            out.append(json.load(fh))
    return out


def cleanup_vm(name):
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        for src in sources:
            stem = re.sub(r"\.vmbackup-.*\.qcow2$", "", src)
            for path in glob.glob(re.sub(r"\.(qcow2|raw)$", "", stem) + ".*"):
                os.unlink(path)


def cmdlines():
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as fh:
                    out[int(entry)] = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                pass
    return out


def ppid_of(pid):
    with open("/proc/%d/stat" % pid) as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def sshd_connection_of(pid):
    """The per-connection sshd above ``pid`` (a child of hv1's listener), or None."""
    with open(os.path.join(TB, "ssh", "hv1", "sshd.pid")) as fh:
        listener = int(fh.read().strip())
    while pid > 1:
        parent = ppid_of(pid)
        if parent == listener:
            return pid
        pid = parent
    return None


def pattern_image(path, size_mib=32):
    """A qcow2 with 0x5a in its first 8 MiB and 0xa5 at 16 MiB (4 MiB): data to check by pattern."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "%dM" % size_mib], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0xa5 16M 4M", path],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def work():
    subprocess.run(["rm", "-rf", WORK], check=True)
    os.makedirs(WORK, mode=0o700)
    yield WORK
    subprocess.run(["rm", "-rf", WORK], check=False)


@pytest.fixture(scope="module")
def vm(libvirt, sshd):
    cleanup_vm(VM)
    domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 64},
                              {"target": "vdb", "format": "raw", "size_mib": 32}], running=True, replace=True)
    domains.wait_agent(VM, timeout=600)
    yield VM
    cleanup_vm(RESTORED)
    cleanup_vm(VM)


def _pidfd_getfd(pid, fd):
    """A copy of process ``pid``'s descriptor ``fd`` (pidfd_getfd(2), Linux 5.6; root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd on x86_64
        if got < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd %d/%d" % (pid, fd))
        return got
    finally:
        os.close(pidfd)


def tcp_sockets_of(pid):
    """[(listening, (address, port), nodelay)] of the TCP sockets process ``pid`` holds."""
    found = []
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return found
    for name in fds:
        try:
            if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                continue
            sock = socket.socket(fileno=_pidfd_getfd(pid, int(name)))
        except OSError:
            continue  # gone meanwhile
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                found.append((bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
                              tuple(sock.getsockname()[:2]),
                              bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))))
        except OSError:
            pass
        finally:
            sock.close()  # our copy only
    return found


class NbdWatcher:
    """Records the qemu-nbd processes that serve ``needle`` while a playbook runs: their command
    lines and the TCP sockets they hold (the listening one, the client's connection)."""

    def __init__(self, needle):
        self.needle = needle
        self.seen = {}  # command line -> set of (listening, (address, port), nodelay)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop.is_set():
            for pid, c in cmdlines().items():
                if c.startswith("qemu-nbd ") and self.needle in c:
                    self.seen.setdefault(c, set()).update(tcp_sockets_of(pid))
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.stop.set()
        self.thread.join()

    def served_over_tls(self):
        """Every export: TLS, one client, listening on the data address only, with TCP_NODELAY on
        its sockets (qemu-nbd 7.2 sets none; NBD_SERVER's socket gives it)."""
        socks = [s for found in self.seen.values() for s in found]
        # (A short-lived export may be gone before its descriptors were read; its command line counts.)
        return (bool(self.seen) and all("--tls-creds vmbackup-tls" in c and "--shared=1" in c for c in self.seen)
                and {s[1][0] for s in socks if s[0]} == {HV1["address"]}
                # TCP_NODELAY on the listening socket, which the client's connection inherits (a small
                # transfer's connection may end between two polls); on every connection seen, too.
                and all(s[2] for s in socks))


def test_backup_full_incremental_and_restore_over_tls(vm, playbook, work):
    """Full + incremental of a running guest and a restore, all over data_channel=tls: equal data."""
    repo = os.path.join(work, "repo")
    inv = playbook.inventory(ssh_inventory())
    base = {"vmbackup_vms": vm, "vmbackup_repository": repo, "vmbackup_data_channel": "tls",
            "vmbackup_data_address": HV1["address"]}
    domains.guest_write(vm, "/dev/vda", 0, 4 * MiB, seed=11)
    domains.guest_write(vm, "/dev/vdb", 2 * MiB, 2 * MiB, seed=12)
    with NbdWatcher("/%s-vd" % vm) as watch:
        playbook.run(BACKUP, inv, base)
    # The full images went through qemu-nbd with TLS on the data address, read-only.
    assert watch.served_over_tls() and all("--read-only" in c for c in watch.seen), watch.seen
    domains.guest_write(vm, "/dev/vda", 20 * MiB, 3 * MiB, seed=13)
    domains.guest_write(vm, "/dev/vdb", 10 * MiB, 1 * MiB, seed=14)
    state = {t: domains.guest_sha256(vm, "/dev/" + t) for t in ("vda", "vdb")}
    playbook.run(BACKUP, inv, base)
    found = manifests(repo)
    assert [m["type"] for m in found] == ["full", "incremental"], found
    # The incremental carried what the guest wrote (4 MiB), not the disks.
    assert found[1]["bytes_sent"] <= 4 * MiB * 1.1 + MiB

    cleanup_vm(RESTORED)
    with NbdWatcher("/%s-vd" % RESTORED) as watch:
        playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_restore_name": RESTORED, "vmbackup_repository": repo,
                                    "vmbackup_data_channel": "tls", "vmbackup_data_address": HV1["address"]})
    # Every export went over TLS: one writable per disk (the write), and the read-only ones of the
    # restore's read-back comparison (qemu-img compare of the target with the chain).
    writes = [c for c in watch.seen if "--read-only" not in c]
    assert len(writes) >= 2 and watch.served_over_tls(), watch.seen
    restored = dict(domains.domblklist(RESTORED))
    assert image_sha256(restored["vda"], "qcow2") == state["vda"]
    assert image_sha256(restored["vdb"], "raw") == state["vdb"]
    cleanup_vm(RESTORED)


def test_insecure_channel_refused_for_restore(vm, playbook, work):
    """insecure-tcp never serves a writable disk: the restore fails clearly and creates nothing."""
    repo = os.path.join(work, "repo")
    assert manifests(repo), "needs the backups of the first case"
    name = "h2-tls-insecure"
    cleanup_vm(name)
    inv = playbook.inventory(ssh_inventory())
    res = playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_restore_name": name, "vmbackup_repository": repo,
                                      "vmbackup_data_channel": "insecure-tcp"}, expect_rc=None)
    assert res.rc != 0
    assert "insecure-tcp is refused for restores" in res.output, res.output[-3000:]
    assert not domains.domain_exists(name)
    assert glob.glob(os.path.join(domains.DEFAULT_DIRECTORY, name + "*")) == []


def test_export_refuses_other_clients_and_serves_its_own(work):
    """While a TLS export is served: no-TLS, wrong-key and second clients are refused; the transfer goes on."""
    image = os.path.join(work, "probe.qcow2")
    pattern_image(image)
    runner, hv = hypervisor("tls")
    wrong = os.path.join(work, "wrong-key")
    os.makedirs(wrong, mode=0o700, exist_ok=True)
    with open(os.path.join(wrong, "keys.psk"), "w") as fh:
        fh.write("vmbackup:%s\n" % ("0f" * 32))
    os.chmod(os.path.join(wrong, "keys.psk"), 0o600)

    with transfer.NbdExport(hv, image, "qcow2") as nbd:
        host, port = HV1["address"], nbd.port
        # The server's key file exists on the hypervisor (0600 in a 0700 directory), nowhere on a command line.
        psk = os.path.join(nbd.remote_dir, "keys.psk")
        assert oct(os.stat(nbd.remote_dir).st_mode & 0o777) == "0o700"
        assert oct(os.stat(psk).st_mode & 0o777) == "0o600"
        with open(psk) as fh:
            key = fh.read().strip().split(":", 1)[1]
        assert len(key) == 64
        assert [c for c in cmdlines().values() if key in c] == []
        # Bound to the address given, nothing else.
        listening = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True, check=False).stdout
        assert "%s:%d" % (host, port) in listening and "0.0.0.0:%d" % port not in listening, listening

        plain = subprocess.run(["timeout", "30", "qemu-img", "info", "nbd://%s:%d/" % (host, port)],
                               capture_output=True, text=True, check=False)
        assert plain.returncode != 0 and "TLS" in plain.stderr, plain.stderr
        bad = subprocess.run(["timeout", "30", "qemu-img", "info", "--object",
                              "tls-creds-psk,id=t0,endpoint=client,dir=%s,username=vmbackup" % wrong,
                              "--image-opts", "driver=nbd,host=%s,port=%d,tls-creds=t0" % (host, port)],
                             capture_output=True, text=True, check=False)
        assert bad.returncode != 0 and "TLS handshake failed" in bad.stderr, bad.stderr

        # The transfer's own client (the node's key): qemu-io holds the one connection.
        client = subprocess.Popen(["qemu-io", "-r"] + [a for a in nbd.source_args() if a != "--image-opts"]
                                  + ["--image-opts", nbd.spec],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client.stdin.write("read -P 0x5a 0 8M\n")
        client.stdin.flush()
        first = client.stdout.readline() + client.stdout.readline()
        assert "read 8388608/8388608 bytes" in first, first
        # A second client with the right key while the first is connected gets nothing.
        second = subprocess.run(["timeout", "15", "qemu-img", "info"] + nbd.source_args() + [nbd.spec],
                                capture_output=True, text=True, check=False)
        assert second.returncode != 0 and "virtual size" not in second.stdout, (second.stdout, second.stderr)
        # ... and the first one goes on: the data are the image's.
        client.stdin.write("read -P 0xa5 16M 4M\nread -P 0 24M 8M\nquit\n")
        client.stdin.flush()
        rest = client.communicate(timeout=120)[0]
        assert rest.count("bytes at offset") == 2 and "Pattern verification failed" not in rest, rest
        assert client.returncode == 0
    # qemu-nbd exited cleanly (no exception); the key files on both ends are gone.
    assert not os.path.exists(nbd.remote_dir) and not os.path.exists(nbd.tmpdir)


def _drop_ssh_during(channel, work, tag):
    image = os.path.join(work, "drop-%s.qcow2" % tag)
    pattern_image(image, size_mib=64)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 32M 32M", image], check=True, capture_output=True)
    runner, hv = hypervisor(channel)
    out = os.path.join(work, "drop-%s-out.qcow2" % tag)
    killed = []

    def drop(nbd):
        # The hypervisor side of this export's session (its directory is unique), then its sshd child.
        deadline = time.time() + 60
        while time.time() < deadline:
            mine = [p for p, c in cmdlines().items() if nbd.remote_dir in c]
            conns = {c for c in (sshd_connection_of(p) for p in mine) if c}
            if conns:
                time.sleep(2)  # well inside the rate-limited copy
                for pid in conns:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(conns)
                return
            time.sleep(0.2)

    with pytest.raises(VmbackupError) as err:
        with transfer.NbdExport(hv, image, "qcow2") as nbd:
            threading.Thread(target=drop, args=(nbd,), daemon=True).start()
            # pull_full's own command, rate-limited (-r) so that the copy lasts long enough to be cut.
            transfer.convert(runner, ["qemu-img", "convert"] + nbd.source_args() + ["-r", "4M", "-O", "qcow2",
                                                                                    nbd.spec, out],
                             what="copying %s from hypervisor %s" % (image, hv.label), hint="")
    assert killed, "the export's SSH connection was not found"
    # The hypervisor's end noticed: qemu-nbd stopped, its directory (key file included) removed.
    deadline = time.time() + 60
    while os.path.exists(nbd.remote_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert not os.path.exists(nbd.remote_dir) and not os.path.exists(nbd.tmpdir)
    assert [c for c in cmdlines().values() if c.startswith("qemu-nbd ") and nbd.remote_dir in c] == []
    return err.value.msg, image


@pytest.mark.parametrize("channel", ["ssh", "tls"])
def test_dropped_ssh_connection_named_once(work, channel):
    """The SSH connection of an export killed mid-copy: one message naming it, not qemu-img's I/O errors."""
    msg, image = _drop_ssh_during(channel, work, channel)
    assert msg.startswith("lost the SSH connection from the backup node to root@127.0.0.11 port 22 while "
                          "reading %s on hypervisor 127.0.0.11 over the %s data channel"
                          % (image, "TLS" if channel == "tls" else "ssh")), msg
    # ssh's own last line: which one depends on whether it notices the close reading or writing.
    assert re.search(r"\(qemu-img convert, rc=1\): (Connection to 127\.0\.0\.11 closed by remote host|"
                     r"client_loop: send disconnect: Broken pipe)\. Nothing of this transfer is kept", msg), msg
    assert "Input/output error" not in msg and msg.count("lost the SSH connection") == 1, msg
