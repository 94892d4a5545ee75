# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pull_full, pull_delta, push and compare through a real CommandRunner, faked only at the two
command boundaries: ``AnsibleModule.run_command`` (qemu-img; conftest's RunCommandMock) and
``_command.popen`` (the streams: the export's SSH session, ``cat`` over ssh, ``qemu-img -p``),
answered by stand-in processes. Each case: the channel, the exact commands in order, and the
result or the error message.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _command
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _nbd_export
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _stream
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError

# A stream: writes ``out`` and ``err``, logs its stdin, creates ``creates`` (qemu-img's output), exits ``rc``.
STREAM = r'''
import json, sys
s = json.loads(sys.argv[1])
if s.get("creates"):
    open(s["creates"], "wb").write(b"QFI\xfb")
sys.stdout.buffer.write(s["out"].encode("latin-1"))
sys.stdout.flush()
sys.stderr.write(s["err"])
sys.exit(s["rc"])
'''

# The export's session (NBD_SERVER behind ssh): reads the script, parameters and key lines, says
# READY, then (ok) reads until stdin closes and reports qemu-nbd's exit status, (drop) loses the
# connection, (refused) fails before anything (ssh's own error, rc 255).
SESSION = r'''
import json, sys, time
s = json.loads(sys.argv[1])
if s["mode"] == "refused":
    sys.stderr.write("root@hv1: Permission denied (publickey).\n")
    sys.exit(255)
head = [sys.stdin.readline() for _i in range(3)]
sys.stdout.write("VMBACKUP-NBD-READY\n")
sys.stdout.flush()
if s["mode"] == "drop":
    time.sleep(0.2)
    open(s["log"], "w").write(json.dumps(head))
    sys.stderr.write("client_loop: send disconnect: Broken pipe\nConnection to hv1 closed by remote host.\n")
    sys.exit(255)
rest = sys.stdin.read()
open(s["log"], "w").write(json.dumps(head + [rest]))
sys.stdout.write("VMBACKUP-NBD-EXIT 0\n")
'''

KNOWN_HOSTS = "/kh/known_hosts"
CIPHERS = "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
SSH = ["ssh", "-T", "-p", "2222", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
       "-o", "UserKnownHostsFile=" + KNOWN_HOSTS, "-o", "GlobalKnownHostsFile=/dev/null",
       "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6", "-o", "Compression=no", "-o", CIPHERS]
LOGIN = ["-l", "root", "hv1", "--"]
FORWARD = ["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
           "-L", {"regex": r"/vmbackup-nbd-[^/]+/nbd\.sock:/tmp/vmbackup-nbd-[0-9a-f]{32}/nbd\.sock$"}]
BOOTSTRAP = "python3 -c '%s'" % _nbd_export.SERVER_BOOTSTRAP
SESSION_SSH = SSH + FORWARD + LOGIN + [BOOTSTRAP]  # the ssh data channel: qemu-nbd's socket forwarded
SESSION_TCP = SSH + LOGIN + [BOOTSTRAP]  # tls: the session only sets the export up
SESSION_LOCAL = [sys.executable, "-c", _nbd_export.SERVER_BOOTSTRAP]

UNIX_URL = {"regex": r"^nbd\+unix:///\?socket=.*/vmbackup-nbd-[^/]+/(srv/)?nbd\.sock$"}
TLS_CLIENT = ["--object", {"regex": r"^tls-creds-psk,id=vmbackup-tls,endpoint=client,dir=.*/vmbackup-nbd-[^/,]+,"
                                    r"username=vmbackup,priority=NORMAL:-CIPHER-ALL:\+AES-128-GCM:\+AES-256-GCM:"
                                    r"\+CHACHA20-POLY1305$"}]
TLS_SPEC = {"regex": r"^driver=nbd,host=192\.0\.2\.7,port=\d+,tls-creds=vmbackup-tls$"}
PART = {"regex": r"/vda\.qcow2\.part$"}
CONVERT = ["qemu-img", "convert", "-t", "writeback"]
FULL_OUT = ["-O", "qcow2", "-o", "compat=1.1", "-m", "8", "-W"]
MAP = ["qemu-img", "map", "--output=json", "-f", "qcow2", {"regex": r"/vda\.qcow2$"}]
MAP_OUT = json.dumps([{"start": 0, "length": 65536, "depth": 0, "data": True},
                      {"start": 65536, "length": 4096, "depth": 0, "data": False},
                      {"start": 69632, "length": 512, "depth": 1, "data": True}])
REBASE = ["qemu-img", "rebase", "-u", "-t", "writeback", "-f", "qcow2", "-b", "../B1/vda.qcow2", "-F", "qcow2", PART]
CHECK = ["qemu-img", "check", "-q", "-f", "qcow2", PART]
PUSH_ARGS = ["-n", "-f", "qcow2"]
PUSH_TAIL = ["-m", "8", "-W", "--target-is-zero", "/r/B2/vda.qcow2"]
IO_ERRORS = "\n".join("qemu-img: error while reading at byte %d: Input/output error" % (i * 65536) for i in range(12))


class Streams:
    """Stands in for ``_command.popen``: the expected streams, in order, each answered by a
    stand-in process (STREAM or SESSION); ssh's forwarded socket is made as ssh would."""

    def __init__(self, harness, calls, tmp_path):
        self.harness = harness
        self.expected = list(calls)
        self.calls = []
        self.tmp_path = tmp_path

    def __call__(self, argv, **kwargs):
        index = len(self.calls)
        self.calls.append(list(argv))
        if index >= len(self.expected):
            pytest.fail("unexpected stream #%d: %s" % (index + 1, argv))
        call = self.expected[index]
        if not self.harness.argv_matches(call["command"], argv):
            pytest.fail("stream #%d differs\n  expected: %s\n  actual:   %s" % (index + 1, call["command"], argv))
        assert kwargs["env"]["LC_ALL"] == "C"
        if "-L" in argv:
            open(argv[argv.index("-L") + 1].split(":")[0], "w").close()
        if "session" in call:
            script, spec = SESSION, {"mode": call["session"], "log": str(self.tmp_path / "session.log")}
        else:
            creates = argv[-1] if call.get("creates") else None
            script, spec = STREAM, {"out": call.get("out", ""), "err": call.get("err", ""),
                                    "rc": call.get("rc", 0), "creates": creates}
        return _command.subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)], stdin=kwargs["stdin"],
                                         stdout=kwargs["stdout"], stderr=kwargs["stderr"])

    def assert_all_called(self):
        assert len(self.calls) == len(self.expected), "streams run: %s" % self.calls


class Bed:
    def __init__(self, harness, tmp_path, monkeypatch):
        self.harness = harness
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.runs = self.streams = None

    def runner(self, runs, streams=()):
        """A CommandRunner whose commands are ``runs`` (``writes``: qemu-img creates its output) and
        whose streams are ``streams``."""
        self.runs = self.harness.RunCommandMock(runs)

        def run_command(module, args, **kwargs):
            answer = self.runs(module, args, **kwargs)
            if self.runs.expected[len(self.runs.calls) - 1].get("writes"):
                with open(args[-1], "wb") as fh:
                    fh.write(b"QFI\xfb")
            return answer

        self.monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
        self.streams = Streams(self.harness, streams, self.tmp_path)
        self.monkeypatch.setattr(_command, "popen", self.streams)
        with self.harness.set_module_args({}):
            return CommandRunner(AnsibleModule(argument_spec={}), host="node1")

    def hv(self, runner, channel):
        params = dict(transport="local") if channel == "local" else dict(
            transport="ssh", ssh_host="hv1", ssh_port=2222, ssh_user="root", known_hosts=KNOWN_HOSTS,
            ready_timeout=10, data_channel=channel, data_address="192.0.2.7")
        self.monkeypatch.setattr(os.path, "exists", lambda p, real=os.path.exists: p == KNOWN_HOSTS or real(p))
        return _ssh.Hypervisor(runner, params)

    def session(self):
        """What the session read: the script, its parameters, the key line, the rest (the verdict)."""
        with open(str(self.tmp_path / "session.log")) as fh:
            head = json.load(fh)
        return json.loads(head[0]), json.loads(head[1]), head[2].strip(), head[3:]

    def assert_all_called(self):
        self.runs.assert_all_called()
        self.streams.assert_all_called()


@pytest.fixture
def bed(harness, tmp_path, monkeypatch):
    return Bed(harness, tmp_path, monkeypatch)


def _dest(tmp_path):
    os.makedirs(str(tmp_path / "r" / "B2"), exist_ok=True)
    return str(tmp_path / "r" / "B2" / "vda.qcow2")


# --- pull_full ----------------------------------------------------------------------------

PULL_FULL = [
    ("ssh", [{"command": SESSION_SSH, "session": "ok"}],
     CONVERT + ["-f", "raw"] + FULL_OUT + [UNIX_URL, PART]),
    ("tls", [{"command": SESSION_TCP, "session": "ok"}],
     CONVERT + TLS_CLIENT + ["--image-opts"] + FULL_OUT + [TLS_SPEC, PART]),
    ("insecure-tcp", [{"command": SESSION_TCP, "session": "ok"}],
     CONVERT + ["-f", "raw"] + FULL_OUT + [{"regex": r"^nbd://192\.0\.2\.7:\d+/$"}, PART]),
    # one machine: qemu-img reads the frozen image itself, no export
    ("local", [], CONVERT + ["-U", "-f", "qcow2"] + FULL_OUT + ["/img/vm1.qcow2", PART]),
]


@pytest.mark.parametrize("channel, streams, convert", PULL_FULL, ids=[c[0] for c in PULL_FULL])
def test_pull_full_commands_per_channel(bed, tmp_path, channel, streams, convert):
    runner = bed.runner([{"command": convert, "writes": True}, {"command": MAP, "out": MAP_OUT}], streams)
    dest = _dest(tmp_path)
    result = _transfer.pull_full(runner, bed.hv(runner, channel), "/img/vm1.qcow2", "qcow2", dest)
    bed.assert_all_called()
    assert result == {"mode": "full", "bytes_sent": 65536, "compression": "none"}  # this layer's data only
    assert os.path.exists(dest) and not os.path.exists(dest + ".part")
    if streams:
        script, params, key, rest = bed.session()
        assert script == _nbd_export.NBD_SERVER and params["image"] == "/img/vm1.qcow2"
        assert "--read-only" in params["argv"] and params["tls"] == (channel == "tls")
        assert (len(key) == 64) == (channel == "tls") and rest == ["done\n"]


ZSTD_OUT = ["-O", "qcow2", "-o", "compat=1.1,compression_type=zstd", "-c", "-m", "8", "-W"]


def test_pull_full_compressed_writes_zstd_clusters(bed, tmp_path):
    convert = CONVERT + ["-U", "-f", "qcow2"] + ZSTD_OUT + ["/img/vm1.qcow2", PART]
    runner = bed.runner([{"command": convert, "writes": True}, {"command": MAP, "out": MAP_OUT}], [])
    result = _transfer.pull_full(runner, bed.hv(runner, "local"), "/img/vm1.qcow2", "qcow2", _dest(tmp_path),
                                 compression="zstd")
    bed.assert_all_called()
    assert result["compression"] == "zstd"


def test_qcow2_output_refuses_an_unknown_compression():
    with pytest.raises(VmbackupError, match="compression must be one of none, zstd, not 'lz4'"):
        _transfer.qcow2_output("lz4")


# --- pull_delta ---------------------------------------------------------------------------

OVERLAY = "QFI\xfb" + "\x00" * 3000
PULL_DELTA = [
    # the overlay's bytes: cat over the SSH session itself
    ("ssh", [{"command": SSH + LOGIN + ["cat -- /img/vm1.snap.qcow2"], "out": OVERLAY}], [], 3004),
    # the TCP channels: the overlay file served raw by qemu-nbd
    ("tls", [{"command": SESSION_TCP, "session": "ok"}],
     [CONVERT + TLS_CLIENT + ["--image-opts", "-O", "raw", TLS_SPEC, PART]], 4),
    ("local", [], [], 3004),
]


@pytest.mark.parametrize("channel, streams, copy, sent", PULL_DELTA, ids=[c[0] for c in PULL_DELTA])
def test_pull_delta_commands_per_channel(bed, tmp_path, channel, streams, copy, sent):
    runs = [{"command": c, "writes": True} for c in copy] + [{"command": REBASE}, {"command": CHECK}]
    runner = bed.runner(runs, streams)
    image = "/img/vm1.snap.qcow2"
    if channel == "local":
        image = str(tmp_path / "vm1.snap.qcow2")
        with open(image, "wb") as fh:
            fh.write(OVERLAY.encode("latin-1"))
    dest = _dest(tmp_path)
    result = _transfer.pull_delta(runner, bed.hv(runner, channel), image, dest, str(tmp_path / "r" / "B1" / "vda.qcow2"))
    bed.assert_all_called()
    assert result == {"mode": "delta", "bytes_sent": sent, "compression": "none"}
    assert os.path.exists(dest)


# --- push and compare ---------------------------------------------------------------------

PUSH = [
    ("ssh", SESSION_SSH, CONVERT + PUSH_ARGS + ["-O", "raw"] + PUSH_TAIL + [UNIX_URL]),
    ("tls", SESSION_TCP, CONVERT + PUSH_ARGS + TLS_CLIENT + ["--target-image-opts"] + PUSH_TAIL + [TLS_SPEC]),
    ("local", SESSION_LOCAL, CONVERT + PUSH_ARGS + ["-O", "raw"] + PUSH_TAIL + [UNIX_URL]),
]


@pytest.mark.parametrize("channel, session, convert", PUSH, ids=[c[0] for c in PUSH])
def test_push_commands_per_channel(bed, channel, session, convert):
    runner = bed.runner([{"command": convert}], [{"command": session, "session": "ok"}])
    _transfer.push(runner, bed.hv(runner, channel), "/r/B2/vda.qcow2", "/dev/vg0/new", "raw", target_is_zero=True)
    bed.assert_all_called()
    _script, params, _key, rest = bed.session()
    assert params["image"] == "/dev/vg0/new" and "--read-only" not in params["argv"]
    assert "--discard=unmap" in params["argv"] and rest == ["done\n"]


COMPARE = [
    ("ssh", None, SESSION_SSH, ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", "/r/B2/vda.qcow2", UNIX_URL]),
    # a target larger than the image (an LV rounded up to extents): only the image's size is compared
    ("ssh", 1048576, SESSION_SSH,
     ["qemu-img", "compare", "-f", "qcow2", "/r/B2/vda.qcow2",
      {"regex": r'^json:\{"driver": "raw", "size": 1048576, "file": \{"driver": "nbd", "server": '
                r'\{"type": "unix", "path": ".*/nbd\.sock"\}\}\}$'}]),
    ("tls", 1048576, SESSION_TCP,
     ["qemu-img", "compare"] + TLS_CLIENT + [
         "--image-opts", "driver=qcow2,file.driver=file,file.filename=/r/B2/vda.qcow2",
         {"regex": r"^driver=raw,size=1048576,file\.driver=nbd,file\.host=192\.0\.2\.7,file\.port=\d+,"
                   r"file\.tls-creds=vmbackup-tls$"}]),
    ("local", None, SESSION_LOCAL, ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", "/r/B2/vda.qcow2", UNIX_URL]),
]


@pytest.mark.parametrize("channel, size, session, compare", COMPARE,
                         ids=["%s-%s" % (c[0], "cut" if c[1] else "whole") for c in COMPARE])
def test_compare_commands_per_channel(bed, channel, size, session, compare):
    runner = bed.runner([{"command": compare}], [{"command": session, "session": "ok"}])
    _transfer.compare(runner, bed.hv(runner, channel), "/r/B2/vda.qcow2", "/dev/vg0/new", "raw", size=size)
    bed.assert_all_called()
    assert "--read-only" in bed.session()[1]["argv"]  # reading back never writes


# --- errors: a command that fails, a connection that is lost ---------------------------------

def _pull_full(bed, tmp_path, channel):
    return lambda runner: _transfer.pull_full(runner, bed.hv(runner, channel), "/img/vm1.qcow2", "qcow2",
                                              _dest(tmp_path))


def _pull_delta(bed, tmp_path, channel):
    return lambda runner: _transfer.pull_delta(runner, bed.hv(runner, channel), "/img/vm1.snap.qcow2",
                                               _dest(tmp_path), str(tmp_path / "r" / "B1" / "vda.qcow2"))


def _push(bed, tmp_path, channel):
    return lambda runner: _transfer.push(runner, bed.hv(runner, channel), "/r/B2/vda.qcow2", "/dev/vg0/new", "raw",
                                         target_is_zero=True)


def _compare(bed, tmp_path, channel):
    return lambda runner: _transfer.compare(runner, bed.hv(runner, channel), "/r/B2/vda.qcow2", "/dev/vg0/new", "raw")


PULL_SSH = CONVERT + ["-f", "raw"] + FULL_OUT + [UNIX_URL, PART]
CAT = SSH + LOGIN + ["cat -- /img/vm1.snap.qcow2"]
ERRORS = [
    ("pull_full-rc", _pull_full, "ssh",
     [{"command": PULL_SSH, "rc": 1, "err": "qemu-img: Could not read image: Invalid argument"}],
     [{"command": SESSION_SSH, "session": "ok"}],
     ["copying /img/vm1.qcow2 from hypervisor hv1 failed on host node1: command '/usr/bin/qemu-img convert -t "
      "writeback -f raw", "exited with rc=1; stderr: qemu-img: Could not read image: Invalid argument. If the "
      "connection dropped, run the backup again; nothing was kept."]),
    ("pull_full-local-rc", _pull_full, "local",
     [{"command": CONVERT + ["-U", "-f", "qcow2"] + FULL_OUT + ["/img/vm1.qcow2", PART], "rc": 1,
       "err": "qemu-img: Could not open '/img/vm1.qcow2': No such file or directory"}], [],
     ["copying /img/vm1.qcow2 from hypervisor localhost failed on host node1", "rc=1",
      "No such file or directory. Check that the image is readable"]),
    ("pull_full-full-repository", _pull_full, "ssh",
     [{"command": PULL_SSH, "rc": 1, "err": "qemu-img: error while writing at byte 0: No space left on device"}],
     [{"command": SESSION_SSH, "session": "ok"}],
     ["copying /img/vm1.qcow2 from hypervisor hv1 failed on the backup node node1: the repository's file system "
      "is full (qemu-img: error while writing at byte 0: No space left on device). Free space or prune old "
      "backups; the partial image was removed."]),
    ("pull_full-lost-ssh", _pull_full, "ssh", [{"command": PULL_SSH, "rc": 1, "err": IO_ERRORS}],
     [{"command": SESSION_SSH, "session": "drop"}],
     ["lost the SSH connection from the backup node to root@hv1 port 2222 while reading /img/vm1.qcow2 on "
      "hypervisor hv1 over the ssh data channel (qemu-img convert, rc=1): Connection to hv1 closed by remote "
      "host. Nothing of this transfer is kept: check the network and the hypervisor, then run the backup again."]),
    ("pull_full-ssh-refused", _pull_full, "tls", [], [{"command": SESSION_TCP, "session": "refused"}],
     ["SSH from the backup node to root@hv1 port 2222 failed: root@hv1: Permission denied (publickey)",
      "The backup node's key is not authorized for root@hv1: run the vmbackup.libvirt.prep playbook."]),
    ("pull_delta-rc", _pull_delta, "ssh", [],
     [{"command": CAT, "rc": 1, "err": "cat: /img/vm1.snap.qcow2: No such file or directory\n"}],
     ["reading /img/vm1.snap.qcow2 on hypervisor hv1 failed (rc=1): cat: /img/vm1.snap.qcow2: No such file "
      "or directory"]),
    ("pull_delta-lost-ssh", _pull_delta, "ssh", [],
     [{"command": CAT, "rc": 255, "out": "QFI", "err": "Connection to hv1 closed by remote host.\n"}],
     ["lost the SSH connection from the backup node to root@hv1 port 2222 while it was in use: Connection to "
      "hv1 closed by remote host. Check the network and the hypervisor, then run it again."]),
    ("pull_delta-not-qcow2", _pull_delta, "ssh",
     [{"command": REBASE}, {"command": CHECK, "rc": 2, "err": "qemu-img: Image is not in qcow2 format"}],
     [{"command": CAT, "out": "garbage"}],
     ["checking the delta of /img/vm1.snap.qcow2 failed on host node1", "rc=2",
      "The overlay read from the hypervisor is not a valid qcow2; run a full backup."]),
    ("push-rc", _push, "tls",
     [{"command": CONVERT + PUSH_ARGS + TLS_CLIENT + ["--target-image-opts"] + PUSH_TAIL + [TLS_SPEC], "rc": 1,
       "err": "qemu-img: error while writing sector 0: Operation not permitted"}],
     [{"command": SESSION_TCP, "session": "ok"}],
     ["writing /r/B2/vda.qcow2 to /dev/vg0/new on hypervisor hv1 failed on host node1", "rc=1",
      "Operation not permitted. The target is incomplete; nothing replaced the VM's disks. Run the restore again."]),
    ("push-lost-ssh", _push, "ssh",
     [{"command": CONVERT + PUSH_ARGS + ["-O", "raw"] + PUSH_TAIL + [UNIX_URL], "rc": 1, "err": IO_ERRORS}],
     [{"command": SESSION_SSH, "session": "drop"}],
     ["lost the SSH connection from the backup node to root@hv1 port 2222 while writing /dev/vg0/new on "
      "hypervisor hv1 over the ssh data channel (qemu-img convert, rc=1): Connection to hv1 closed by remote "
      "host. The target is incomplete: check the network and the hypervisor, then run the restore again "
      "(force=true writes it again)."]),
    ("compare-differs", _compare, "ssh",
     [{"command": ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", "/r/B2/vda.qcow2", UNIX_URL], "rc": 1,
       "out": "Content mismatch at offset 0!"}],
     [{"command": SESSION_SSH, "session": "ok"}],
     ["the restored /dev/vg0/new on hypervisor hv1 does not read back equal to the backup /r/B2/vda.qcow2 "
      "(qemu-img compare rc=1: Content mismatch at offset 0!); it is not used."]),
]


@pytest.mark.parametrize("case, call, channel, runs, streams, messages", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_say_what_failed(bed, tmp_path, case, call, channel, runs, streams, messages):
    runner = bed.runner(runs, streams)
    with pytest.raises(VmbackupError) as raised:
        call(bed, tmp_path, channel)(runner)
    bed.assert_all_called()
    for text in messages:
        assert text in raised.value.msg, raised.value.msg
    assert "Input/output error" not in raised.value.msg  # one message for a lost link, not qemu-img's dozen
    if os.path.isdir(str(tmp_path / "r" / "B2")):
        assert os.listdir(str(tmp_path / "r" / "B2")) == []  # the part file went with the failure


# --- progress -----------------------------------------------------------------------------

@pytest.mark.parametrize("output, percent", [
    (b"", None),
    (b"    (0.00/100%)\r", 0.0),
    (b"    (0.00/100%)\r    (12.50/100%)\r", 12.5),
    (b"    (12.50/100%)\r    (99.", 12.5),  # a mark cut by the read: the last whole one
    (b"    (100.00/100%)\r\n", 100.0),
    (b"qemu-img: warning\n    (3.01/100%)\r", 3.01),
    (b"    (x/100%)\r", None),
])
def test_last_percent_of_qemu_img_progress(output, percent):
    assert _stream.last_percent(output) == percent


def test_pull_full_with_progress_runs_qemu_img_p_and_reports_it(bed, tmp_path, monkeypatch):
    states = []
    monkeypatch.setattr(_files, "write_progress", lambda path, state: states.append((path, state)))
    convert = ["qemu-img", "convert", "-p", "-t", "writeback", "-U", "-f", "qcow2"] + FULL_OUT + ["/img/vm1.qcow2", PART]
    runner = bed.runner([{"command": MAP, "out": MAP_OUT}],
                        [{"command": convert, "creates": True, "out": "    (0.00/100%)\r    (42.00/100%)\r"}])
    progress_file = str(tmp_path / "progress.json")
    _transfer.pull_full(runner, bed.hv(runner, "local"), "/img/vm1.qcow2", "qcow2", _dest(tmp_path), progress_file)
    bed.assert_all_called()
    assert [(p, s["percent"], s["label"]) for p, s in states] == [
        (progress_file, 42.0, "localhost:/img/vm1.qcow2 -> %s" % _dest(tmp_path))]


def test_progress_convert_failure_names_the_command(bed, tmp_path):
    convert = ["qemu-img", "convert", "-p", "-t", "writeback", "-U", "-f", "qcow2"] + FULL_OUT + ["/img/vm1.qcow2", PART]
    runner = bed.runner([], [{"command": convert, "rc": 1, "err": "qemu-img: Could not open '/img/vm1.qcow2'"}])
    with pytest.raises(VmbackupError) as raised:
        _transfer.pull_full(runner, bed.hv(runner, "local"), "/img/vm1.qcow2", "qcow2", _dest(tmp_path),
                            str(tmp_path / "progress.json"))
    assert raised.value.msg.startswith("copying /img/vm1.qcow2 from hypervisor localhost failed on host node1: "
                                       "command 'qemu-img convert -t writeback -U -f qcow2")
    assert "rc=1; stderr: qemu-img: Could not open '/img/vm1.qcow2'" in raised.value.msg
    assert not os.path.exists(str(tmp_path / "progress.json"))


def test_delta_progress_counts_the_bytes_streamed(bed, tmp_path, monkeypatch):
    states = []
    monkeypatch.setattr(_files, "write_progress", lambda path, state: states.append(state))
    runner = bed.runner([{"command": REBASE}, {"command": CHECK}], [{"command": CAT, "out": OVERLAY}])
    _transfer.pull_delta(runner, bed.hv(runner, "ssh"), "/img/vm1.snap.qcow2", _dest(tmp_path),
                         str(tmp_path / "r" / "B1" / "vda.qcow2"), str(tmp_path / "progress.json"))
    assert [s["done"] for s in states] == [3004]


def test_pull_delta_compressed_rewrites_the_delta_above_the_same_parent(bed, tmp_path):
    packed = {"regex": r"/vda\.qcow2\.part\.z$"}
    compress = CONVERT + ["-f", "qcow2"] + ZSTD_OUT + ["-B", "../B1/vda.qcow2", "-F", "qcow2", PART, packed]
    runner = bed.runner([{"command": REBASE}, {"command": CHECK}, {"command": compress, "writes": True}], [])
    image = str(tmp_path / "vm1.snap.qcow2")
    with open(image, "wb") as fh:
        fh.write(OVERLAY.encode("latin-1"))
    dest = _dest(tmp_path)
    result = _transfer.pull_delta(runner, bed.hv(runner, "local"), image, dest, str(tmp_path / "r" / "B1" / "vda.qcow2"),
                                  compression="zstd")
    bed.assert_all_called()
    assert result == {"mode": "delta", "bytes_sent": 3004, "compression": "zstd"}
    assert os.path.exists(dest) and not os.path.exists(dest + ".part.z")
