# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helpers that replace copies: human sizes, the ssh exit-255 mapping, the running states,
and the repository names outside a backup's directory."""

from __future__ import annotations

import os

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lvm
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import Repository, entry_id
from ansible_collections.vmbackup.libvirt.plugins.module_utils._units import human_size
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import RUNNING_STATES
from ansible_collections.vmbackup.libvirt.plugins.plugin_utils._progress import describe

KIB, MIB, GIB, TIB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4


@pytest.mark.parametrize("num, kwargs, expected", [
    (None, {}, "0.0 B"),
    (0, {}, "0.0 B"),
    (512, {}, "512.0 B"),
    (1536, {}, "1.5 KiB"),
    (5 * GIB, {}, "5.0 GiB"),
    (3 * 1024 * TIB, {}, "3072.0 TiB"),
    (512, {"digits": 2, "whole_bytes": True}, "512 B"),
    (1536, {"digits": 2, "whole_bytes": True}, "1.50 KiB"),
    (-2 * MIB, {"digits": 2, "whole_bytes": True}, "-2.00 MiB"),
])
def test_human_size(num, kwargs, expected):
    assert human_size(num, **kwargs) == expected


@pytest.mark.parametrize("num, expected", [
    (0, "0 B (0 bytes)"),
    (1023, "1023 B (1023 bytes)"),
    (4 * MIB, "4.00 MiB (4194304 bytes)"),
    (10 * GIB + 512 * MIB, "10.50 GiB (11274289152 bytes)"),
])
def test_lvm_human_keeps_its_format(num, expected):
    assert _lvm.human(num) == expected


def test_progress_lines_keep_their_format():
    assert describe({"label": "vda", "done": 1536, "rate": 3 * MIB}) == "vda: 1.5 KiB done, 3.0 MiB/s"
    assert describe({"label": "vda", "done": 100, "percent": 50}) == "vda: 100.0 B done, 50%"


class Hv:
    user, host, port, known_hosts = "root", "hv1", 22, "/k/known_hosts"

    def __init__(self, transport):
        self.transport = transport


@pytest.mark.parametrize("transport, rc, err, kwargs, expected", [
    ("ssh", 255, "ssh: connect to host hv1 port 22: No route to host", {},
     "SSH from the backup node to root@hv1 port 22 failed: ssh: connect to host hv1 port 22: No route to host. "
     "Check that the hypervisor is reachable and that the backup node's key is authorized there."),
    ("ssh", 255, "root@hv1: Permission denied (publickey)", {},
     "SSH from the backup node to root@hv1 port 22 failed: root@hv1: Permission denied (publickey). "
     "The backup node's key is not authorized for root@hv1: run the vmbackup.libvirt.prep playbook."),
    ("ssh", 255, "Connection closed by 10.0.0.1 port 22", {"doing": "reading vda", "remedy": "Run it again."},
     "lost the SSH connection from the backup node to root@hv1 port 22 while reading vda: "
     "Connection closed by 10.0.0.1 port 22. Run it again."),
    ("ssh", 1, "rbd: error", {}, None),        # the command's own failure
    ("local", 255, "exit 255", {}, None),      # no ssh: 255 is the command's
    ("ssh", 0, "", {}, None),
    ("ssh", None, "", {}, None),               # never started
])
def test_ssh_link_error(transport, rc, err, kwargs, expected):
    got = _transfer.ssh_link_error(Hv(transport), rc, err, cmd=["rbd"], rc=rc, stderr=err, **kwargs)
    if expected is None:
        assert got is None
    else:
        assert isinstance(got, VmbackupError) and got.msg == expected
        assert got.details == {"cmd": ["rbd"], "rc": rc, "stderr": err}


def test_ssh_link_error_passes_only_the_details_given():
    assert _transfer.ssh_link_error(Hv("ssh"), 255, "x").details == {}


@pytest.mark.parametrize("state, running", [
    ("running", True), ("paused", True), ("in shutdown", True), ("pmsuspended", True),
    ("shut off", False), ("crashed", False), ("idle", False),
])
def test_running_states(state, running):
    assert (state in RUNNING_STATES) is running


@pytest.mark.parametrize("entry, expected", [
    ("20261122T010000Z", "20261122T010000Z"),
    (".partial-20261122T010000Z-2", "20261122T010000Z-2"),
    (".deleting-20261122T010000Z", ".deleting-20261122T010000Z"),
])
def test_entry_id(entry, expected):
    assert entry_id(entry) == expected


def test_repository_names_its_own_paths(tmp_path):
    repo = Repository(str(tmp_path))
    assert repo.lock_path("web1") == str(tmp_path / ".locks" / "web1.lock")
    assert repo.partial_dir("web1", "20261122T010000Z") == str(tmp_path / "web1" / ".partial-20261122T010000Z")
    assert repo.deleting_dir("web1", "20261122T010000Z") == str(tmp_path / "web1" / ".deleting-20261122T010000Z")
    with pytest.raises(VmbackupError):
        repo.deleting_dir("web1", "../x")


@pytest.mark.parametrize("error, what, raised, msg", [
    (None, "image", None, None),
    (OSError(28, "No space left on device"), "image", VmbackupError,
     "writing {dest} on the backup node node1 failed: the repository's file system is full. Free space or "
     "prune old backups; the partial image was removed."),
    (OSError(28, "No space left on device"), "file", VmbackupError,
     "writing {dest} on the backup node node1 failed: the repository's file system is full. Free space or "
     "prune old backups; the partial file was removed."),
    (OSError(5, "Input/output error"), "image", OSError, None),
    (VmbackupError("qemu-img failed"), "image", VmbackupError, "qemu-img failed"),
    (KeyboardInterrupt(), "image", KeyboardInterrupt, None),
])
def test_writing_part(tmp_path, error, what, raised, msg):
    dest = str(tmp_path / "vda.qcow2")

    def write():
        with _transfer.writing_part(dest, "node1", what) as part:
            assert part == dest + ".part"
            with open(part, "wb") as fh:
                fh.write(b"QFI\xfb")
            if error is not None:
                raise error
            os.rename(part, dest)

    if raised is None:
        write()
        assert os.listdir(str(tmp_path)) == ["vda.qcow2"]
        return
    with pytest.raises(raised) as got:
        write()
    assert os.listdir(str(tmp_path)) == []  # the part file is gone, whatever failed
    if msg:
        assert got.value.msg == msg.format(dest=dest)
