# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data channels of _nbd_export.NbdExport (through _transfer) at the runner's two entry points.

The runner is faked at its two entry points: ``run`` (qemu-img convert and map; recorded) and
``spawn`` (the export's session; recorded, and answered by a stand-in process that speaks the
session's protocol: it reads the script, parameters and key lines, says READY, reads until stdin
closes, reports qemu-nbd's exit status). No ssh, no qemu-nbd: the argv and what crosses stdin are the subject.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _nbd_export
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer as transfer
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandError, VmbackupError

STAND_IN = r'''
import sys, time
mode, log = sys.argv[1], sys.argv[2]
first = "".join(sys.stdin.readline() for _i in range(3))  # script, parameters, key
sys.stdout.write("VMBACKUP-NBD-READY\n"); sys.stdout.flush()
if mode == "drop":
    time.sleep(0.2)
    sys.stderr.write("Connection to 127.0.0.11 closed by remote host.\n")
    open(log, "w").write(first)
    sys.exit(255)
rest = sys.stdin.read()
open(log, "w").write(first + rest)
status = {"ok": "0", "unclean": "1", "killed": "-9", "silent": None}[mode]
if status is not None:
    sys.stdout.write("VMBACKUP-NBD-EXIT %s\n" % status)
sys.exit(0)
'''

IO_ERRORS = "\n".join("qemu-img: error while reading at byte %d: Input/output error" % (i * 65536) for i in range(12))


class FakeRunner:
    host = "node1"

    def __init__(self, tmp_path, mode="ok", convert_fails=None):
        self.tmp_path = tmp_path
        self.mode = mode
        self.convert_fails = convert_fails
        self.spawned = []
        self.ran = []
        self.stdin_log = str(tmp_path / "stdin.log")
        self.key_files = []

    def spawn(self, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, resolve=True):
        self.spawned.append(list(argv))
        if "-L" in argv:  # ssh would make the forwarded socket on the node
            open(argv[argv.index("-L") + 1].split(":")[0], "w").close()
        return subprocess.Popen([sys.executable, "-c", STAND_IN, self.mode, self.stdin_log],
                                stdin=stdin, stdout=stdout, stderr=stderr)

    def run(self, argv, what=None, hint=None, check_rc=True, data=None):
        self.ran.append(list(argv))
        if argv[:2] == ["qemu-img", "convert"]:
            for i, a in enumerate(argv):  # the node's key file, while the transfer runs
                if a == "--object":
                    opts = dict(kv.split("=", 1) for kv in argv[i + 1].split(",")[1:])
                    path = os.path.join(opts["dir"], "keys.psk")
                    self.key_files.append((stat.S_IMODE(os.stat(opts["dir"]).st_mode),
                                           stat.S_IMODE(os.stat(path).st_mode), open(path).read(), opts))
            if self.convert_fails:
                raise CommandError(argv, 1, "", self.convert_fails, what=what, hint=hint, host=self.host)
            if argv[-1].endswith(".part"):
                open(argv[-1], "w").close()
            return 0, "", ""
        if argv[:2] == ["qemu-img", "map"]:
            return 0, "[]", ""
        return 0, "", ""


def hv_for(runner, channel, tmp_path, transport="ssh"):
    known = tmp_path / "known_hosts"
    known.write_text("")
    return _ssh.Hypervisor(runner, dict(
        transport=transport, ssh_host="hv1.example.com", ssh_port=2222, ssh_user="root", ssh_private_key=None,
        known_hosts=str(known), ssh_options=[], ready_timeout=10, data_channel=channel,
        data_address="192.0.2.7", data_port=0))


def stdin_lines(runner):
    """What the session read after the script and its parameters: the key line, then the rest."""
    with open(runner.stdin_log) as fh:
        return fh.read().splitlines()[2:]


def server_params(runner, argv):
    """NBD_SERVER's parameters, from the session's stdin; its command line is the fixed bootstrap."""
    assert argv[-1] == "python3 -c '%s'" % _nbd_export.SERVER_BOOTSTRAP, argv[-1]
    with open(runner.stdin_log) as fh:
        script, params = fh.read().splitlines()[:2]
    assert json.loads(script) == _nbd_export.NBD_SERVER
    return json.loads(params)


# channel, the qemu-nbd arguments that must be there, those that must not, the forward
CHANNELS = [
    ("ssh", ["-k", "--shared=1", "--read-only", "--cache=writeback"], ["-b", "-p", "--tls-creds", "--persistent", "--fork"], True),
    # tls and insecure-tcp: no -b/-p; NBD_SERVER makes the socket ("listen") for socket activation.
    ("tls", ["--shared=1", "--tls-creds", "vmbackup-tls", "--read-only"],
     ["-b", "-p", "-k", "--persistent", "--fork"], False),
    ("insecure-tcp", ["--shared=1", "--read-only"], ["-b", "-p", "-k", "--tls-creds", "--persistent", "--fork"], False),
]


@pytest.mark.parametrize("channel,present,absent,forward", CHANNELS, ids=[c[0] for c in CHANNELS])
def test_backup_argv_per_channel(tmp_path, channel, present, absent, forward):
    runner = FakeRunner(tmp_path)
    hv = hv_for(runner, channel, tmp_path)
    dest = str(tmp_path / "vda.qcow2")
    transfer.pull_full(runner, hv, "/img/vm1.qcow2", "qcow2", dest)
    (argv,) = runner.spawned
    params = server_params(runner, argv)
    nbd = params["argv"]
    for a in present:
        assert a in nbd, (a, nbd)
    for a in absent:
        assert a not in nbd, (a, nbd)
    assert params["image"] == "/img/vm1.qcow2" and params["tls"] == (channel == "tls")
    assert ("-L" in argv) == forward
    convert = [a for a in runner.ran if a[:2] == ["qemu-img", "convert"]][0]
    if channel == "ssh":
        assert params["listen"] is None
    else:  # NBD_SERVER listens where the node connects
        host, port = params["listen"]
        assert host == "192.0.2.7"
        assert "port=%d" % port in " ".join(convert) or "192.0.2.7:%d" % port in " ".join(convert), convert
    lines = stdin_lines(runner)
    if channel == "tls":
        key = lines[0]
        assert len(key) == 64 and int(key, 16) >= 0
        # The key is nowhere on a command line: not in the session's argv, not in qemu-img's.
        for recorded in runner.spawned + runner.ran:
            assert not any(key in str(a) for a in recorded), recorded
        assert "--image-opts" in convert and convert[-2].startswith("driver=nbd,host=192.0.2.7,port=")
        assert "tls-creds=vmbackup-tls" in convert[-2]
        ((dmode, fmode, content, opts),) = runner.key_files
        assert (dmode, fmode) == (0o700, 0o600)
        assert content == "vmbackup:%s\n" % key and opts["username"] == "vmbackup" and opts["endpoint"] == "client"
        assert not os.path.exists(opts["dir"])  # removed at the end
    else:
        assert lines[0] == "" and runner.key_files == []
        assert convert[2:6] == ["-t", "writeback", "-f", "raw"]  # flushed output (h1), raw NBD source
    assert lines[-1] == "done"  # the node told the server the transfer succeeded
    assert os.path.exists(dest)


@pytest.mark.parametrize("direction", ["backup", "restore"])
def test_tls_both_ends_prefer_aes_gcm(tmp_path, direction):
    """Both tls-creds-psk objects carry the same priority: AES-GCM before CHACHA20-POLY1305
    (GnuTLS's default order made the two qemu ends agree on software ChaCha20, half the speed)."""
    runner = FakeRunner(tmp_path)
    hv = hv_for(runner, "tls", tmp_path)
    if direction == "backup":
        transfer.pull_full(runner, hv, "/img/vm1.qcow2", "qcow2", str(tmp_path / "vda.qcow2"))
    else:
        transfer.push(runner, hv, str(tmp_path / "top.qcow2"), "/img/new.raw", "raw", target_is_zero=True)
    nbd = server_params(runner, runner.spawned[0])["argv"]
    convert = [a for a in runner.ran if a[:2] == ["qemu-img", "convert"]][0]
    prio = "priority=NORMAL:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
    server = nbd[nbd.index("--object") + 1]
    client = convert[convert.index("--object") + 1]
    assert server.startswith("tls-creds-psk,id=vmbackup-tls,endpoint=server,") and server.endswith("," + prio)
    assert client.startswith("tls-creds-psk,id=vmbackup-tls,endpoint=client,") and client.endswith("," + prio)


def test_each_transfer_gets_its_own_key(tmp_path):
    keys = []
    for i in range(3):
        runner = FakeRunner(tmp_path)
        transfer.pull_full(runner, hv_for(runner, "tls", tmp_path), "/img/a.qcow2", "qcow2", str(tmp_path / ("%d.qcow2" % i)))
        keys.append(stdin_lines(runner)[0])
    assert len(set(keys)) == 3


def test_restore_over_tls_writes_through_target_image_opts(tmp_path):
    runner = FakeRunner(tmp_path)
    transfer.push(runner, hv_for(runner, "tls", tmp_path), str(tmp_path / "top.qcow2"), "/img/new.raw", "raw",
                  target_is_zero=True)
    params = server_params(runner, runner.spawned[0])
    assert "--read-only" not in params["argv"] and "--discard=unmap" in params["argv"]
    convert = runner.ran[0]
    assert "--target-image-opts" in convert and "-O" not in convert
    assert convert[-1].startswith("driver=nbd,host=192.0.2.7,") and "--target-is-zero" in convert
    key = stdin_lines(runner)[0]
    assert not any(key in a for a in convert + runner.spawned[0])


def test_insecure_channel_refused_for_restores(tmp_path):
    runner = FakeRunner(tmp_path)
    with pytest.raises(VmbackupError) as err:
        transfer.push(runner, hv_for(runner, "insecure-tcp", tmp_path), "/r/top.qcow2", "/img/new.raw", "raw")
    assert "insecure-tcp data channel is refused for restores" in err.value.msg
    assert runner.spawned == [] and runner.ran == []


def test_old_tcp_channel_name_is_explained(tmp_path):
    with pytest.raises(VmbackupError) as err:
        hv_for(FakeRunner(tmp_path), "tcp", tmp_path)
    assert "insecure-tcp" in err.value.msg and "tls" in err.value.msg


def test_local_transport_serves_a_private_unix_socket(tmp_path):
    runner = FakeRunner(tmp_path)
    hv = hv_for(runner, "tls", tmp_path, transport="local")
    transfer.push(runner, hv, "/r/top.qcow2", "/img/new.raw", "raw")
    argv = runner.spawned[0]
    assert argv == [sys.executable, "-c", _nbd_export.SERVER_BOOTSTRAP]
    with open(runner.stdin_log) as fh:
        params = json.loads(fh.read().splitlines()[1])
    assert "-k" in params["argv"] and not params["tls"]
    assert runner.ran[0][-1].startswith("nbd+unix:///?socket=")


@pytest.mark.parametrize("channel", ["ssh", "tls"])
def test_dropped_ssh_connection_is_named_once(tmp_path, channel):
    runner = FakeRunner(tmp_path, mode="drop", convert_fails=IO_ERRORS)
    with pytest.raises(VmbackupError) as err:
        transfer.pull_full(runner, hv_for(runner, channel, tmp_path), "/img/vm1.qcow2", "qcow2", str(tmp_path / "o.qcow2"))
    msg = err.value.msg
    assert msg.startswith("lost the SSH connection from the backup node to root@hv1.example.com port 2222 "
                          "while reading /img/vm1.qcow2 on hypervisor hv1.example.com over the %s data channel"
                          % channel.upper() if channel == "tls" else
                          "lost the SSH connection from the backup node to root@hv1.example.com port 2222 "
                          "while reading /img/vm1.qcow2 on hypervisor hv1.example.com over the ssh data channel"), msg
    assert "closed by remote host. Nothing of this transfer is kept" in msg and "(qemu-img convert, rc=1)" in msg
    assert "Input/output error" not in msg
    assert not os.path.exists(str(tmp_path / "o.qcow2")) and not os.path.exists(str(tmp_path / "o.qcow2.part"))


@pytest.mark.parametrize("mode,expect", [
    ("unclean", "qemu-nbd did not exit cleanly after writing /img/new.raw on hypervisor hv1.example.com over the "
                "TLS data channel to 192.0.2.7:"),
    ("killed", "signal 9"),
    ("silent", "no exit status"),
])
def test_restore_fails_unless_qemu_nbd_exits_cleanly(tmp_path, mode, expect):
    runner = FakeRunner(tmp_path, mode=mode)
    with pytest.raises(VmbackupError) as err:
        transfer.push(runner, hv_for(runner, "tls", tmp_path), "/r/top.qcow2", "/img/new.raw", "raw")
    assert expect in err.value.msg and "The target may not be flushed" in err.value.msg


def test_vanished_server_is_named(tmp_path):
    runner = FakeRunner(tmp_path, mode="killed", convert_fails=IO_ERRORS)
    with pytest.raises(VmbackupError) as err:
        transfer.pull_full(runner, hv_for(runner, "ssh", tmp_path), "/img/vm1.qcow2", "qcow2", str(tmp_path / "o.qcow2"))
    assert err.value.msg.startswith("the NBD server vanished while reading /img/vm1.qcow2 on hypervisor hv1.example.com")
    assert "signal 9" in err.value.msg and "Input/output error" not in err.value.msg


def test_tls_handshake_failure_is_explained(tmp_path):
    stderr = ("qemu-img: Could not open 'driver=nbd,...': TLS handshake failed: "
              "The TLS connection was non-properly terminated.")
    runner = FakeRunner(tmp_path, convert_fails=stderr)
    with pytest.raises(VmbackupError) as err:
        transfer.pull_full(runner, hv_for(runner, "tls", tmp_path), "/img/vm1.qcow2", "qcow2", str(tmp_path / "o.qcow2"))
    assert err.value.msg.startswith("the TLS handshake failed while reading /img/vm1.qcow2 on hypervisor hv1.example.com over the "
                                    "TLS data channel to 192.0.2.7:")
    assert "pre-shared key" in err.value.msg


def test_a_plain_failure_stays_the_tools_own(tmp_path):
    runner = FakeRunner(tmp_path, convert_fails="qemu-img: No space left on device")
    with pytest.raises(VmbackupError) as err:
        transfer.pull_full(runner, hv_for(runner, "ssh", tmp_path), "/img/vm1.qcow2", "qcow2", str(tmp_path / "o.qcow2"))
    assert "repository's file system is full" in err.value.msg
    assert stdin_lines(runner)[-1] != "done"  # the server was told to stop, not to wait


# qemu-nbd faked at the command boundary: it reports what socket activation handed it.
FAKE_QEMU_NBD = r"""
import json, os, socket, sys
pidfile = [a for a in sys.argv if a.startswith("--pid-file=")][0].split("=", 1)[1]
report = {"listen_pid_is_mine": os.environ.get("LISTEN_PID") == str(os.getpid()),
          "listen_fds": os.environ.get("LISTEN_FDS"), "argv": sys.argv[1:]}
s = socket.socket(fileno=3)
report["listening_on"] = list(s.getsockname())
report["listening_nodelay"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
open(pidfile, "w").write(str(os.getpid()))
conn, _peer = s.accept()
report["accepted_nodelay"] = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
conn.close()
open(os.environ["FAKE_REPORT"], "w").write(json.dumps(report))
"""


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nbd_server_hands_a_nodelay_socket_to_qemu_nbd(tmp_path):
    """On tcp channels NBD_SERVER binds data_address:port itself, with TCP_NODELAY (qemu-nbd 7.2
    sets none, and Nagle holds back its TLS records), and passes it by socket activation."""
    import socket
    fake = tmp_path / "qemu-nbd.py"
    fake.write_text(FAKE_QEMU_NBD)
    report = tmp_path / "report.json"
    port = _free_port()
    params = {"dir": str(tmp_path / "srv"), "argv": [sys.executable, str(fake), "--shared=1", "--read-only"],
              "image": "/img/vm1.qcow2", "tls": False, "user": "vmbackup", "ready": _nbd_export.READY,
              "done": _nbd_export.DONE, "timeout": 20, "close_timeout": 20, "listen": ["127.0.0.1", port]}
    env = dict(os.environ, FAKE_REPORT=str(report))
    proc = subprocess.Popen([sys.executable, "-c", _nbd_export.SERVER_BOOTSTRAP], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(_nbd_export.server_input(params))
    proc.stdin.flush()
    assert proc.stdout.readline().decode().strip() == _nbd_export.READY
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.recv(1)  # the fake closes after its checks
    out, err = proc.communicate(b"done\n", timeout=30)
    assert out.decode().split() == [_nbd_export.DONE, "0"], err
    got = json.loads(report.read_text())
    assert got["listen_pid_is_mine"] and got["listen_fds"] == "1"
    assert got["listening_on"] == ["127.0.0.1", port]
    assert got["listening_nodelay"] and got["accepted_nodelay"]
    assert got["argv"] == ["--shared=1", "--read-only", "--pid-file=%s/qemu-nbd.pid" % params["dir"], "/img/vm1.qcow2"]
    assert not os.path.exists(params["dir"])  # removed, socket and all


def test_nbd_server_says_which_address_it_cannot_listen_on(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        params = {"dir": str(tmp_path / "srv"), "argv": ["false"], "image": "/img/x", "tls": False, "user": "u",
                  "ready": _nbd_export.READY, "done": _nbd_export.DONE, "timeout": 5, "close_timeout": 5,
                  "listen": ["127.0.0.1", port]}
        cp = subprocess.run([sys.executable, "-c", _nbd_export.SERVER_BOOTSTRAP], input=_nbd_export.server_input(params),
                            capture_output=True, timeout=30, check=False)
    assert cp.returncode == 4 and _nbd_export.READY.encode() not in cp.stdout
    assert ("cannot listen on 127.0.0.1 port %d" % port).encode() in cp.stderr
    assert not os.path.exists(params["dir"])
