# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The emulated TPM's state: where libvirt keeps it, and how a restore puts it back."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _libvirt_define, _tpm
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain

UUID = "6f0d1c7e-3b9a-4c55-9a39-3c2b4c1e0a01"
XML = ("<domain type='kvm'><name>vm1</name><uuid>%s</uuid><devices>%%s</devices></domain>" % UUID)


@pytest.mark.parametrize("devices, expected", [
    ("", None),
    ("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>", {"model": "tpm-crb", "version": "2.0"}),
    ("<tpm model='tpm-tis'><backend type='emulator'/></tpm>", {"model": "tpm-tis", "version": None}),
    ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>", None),
])
def test_emulator_tpm(devices, expected):
    assert _tpm.emulator_tpm(Domain(XML % devices).root) == expected


@pytest.mark.parametrize("version, existing, expected", [
    ("2.0", None, "tpm2"),
    ("1.2", None, "tpm1.2"),
    (None, "tpm1.2", "tpm1.2"),  # no version in the XML: the directory that exists decides
    (None, None, "tpm2"),
])
def test_state_dir(tmp_path, version, existing, expected):
    if existing:
        os.makedirs(str(tmp_path / UUID / existing))
    assert _tpm.state_dir(UUID, version, str(tmp_path)) == str(tmp_path / UUID / expected)


def test_describe_lists_state_files_not_the_lock(tmp_path):
    sdir = tmp_path / UUID / "tpm2"
    sdir.mkdir(parents=True)
    (sdir / ".lock").write_bytes(b"")
    (sdir / "tpm2-00.permall").write_bytes(b"state")
    root = Domain(XML % "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>").root
    assert _tpm.describe(root, UUID, str(tmp_path)) == {
        "model": "tpm-crb", "version": "2.0", "state_dir": str(sdir), "files": ["tpm2-00.permall"]}


def b64(data):
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("present, backup, writes, removals", [
    ({}, {"tpm2-00.permall": b"new"}, ["tpm2-00.permall"], []),
    ({"tpm2-00.permall": b"same"}, {"tpm2-00.permall": b"same"}, [], []),
    ({"tpm2-00.permall": b"old"}, {"tpm2-00.permall": b"new"}, ["tpm2-00.permall"], []),
    # a volatile state of a later run must not outlive the restore of the permanent one
    ({"tpm2-00.permall": b"old", "tpm2-00.volatilestate": b"v"}, {"tpm2-00.permall": b"new"},
     ["tpm2-00.permall"], ["tpm2-00.volatilestate"]),
])
def test_plan_and_write(tmp_path, present, backup, writes, removals):
    sdir = tmp_path / "swtpm" / UUID / "tpm2"
    if present:  # as libvirt leaves it
        sdir.mkdir(parents=True, mode=0o700)
        for name, data in present.items():
            (sdir / name).write_bytes(data)
            os.chmod(str(sdir / name), 0o600)
    planned, gone = _tpm.plan_writes(str(sdir), {n: b64(d) for n, d in backup.items()}, "vm1")
    assert sorted(planned) == writes and gone == removals
    _tpm.write_state(str(sdir), planned, gone)
    assert {n: (sdir / n).read_bytes() for n in os.listdir(str(sdir))} == backup
    for name in backup:
        assert stat.S_IMODE(os.stat(str(sdir / name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(sdir)).st_mode) == 0o700
    assert _tpm.plan_writes(str(sdir), {n: b64(d) for n, d in backup.items()}, "vm1") == ({}, [])


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/shadow", ".lock", "a/b", ""])
def test_names_from_the_backup_must_be_plain(tmp_path, name):
    with pytest.raises(VmbackupError, match="not a plain file name"):
        _tpm.plan_writes(str(tmp_path), {name: b64(b"x")}, "vm1")
    assert os.listdir(str(tmp_path)) == []


def test_bad_base64_writes_nothing(tmp_path):
    with pytest.raises(VmbackupError, match="not valid base64"):
        _tpm.plan_writes(str(tmp_path), {"tpm2-00.permall": "***"}, "vm1")


class FakeModule:
    def __init__(self, tpm_state, check_mode=False):
        self.params = {"tpm_state": tpm_state}
        self.check_mode = check_mode


class FakeVirsh:
    class runner:
        host = "hv1"

    def __init__(self, state="shut off"):
        self._state = state

    def state(self, name):
        return self._state


@pytest.mark.parametrize("check_mode, defined_before, vm_state, changed, written, fails", [
    (False, False, "shut off", True, True, None),
    (True, False, "shut off", True, False, None),
    (False, True, "running", None, False, "is running"),
    (False, True, "shut off", True, True, None),
])
def test_libvirt_define_restores_the_state(tmp_path, monkeypatch, check_mode, defined_before, vm_state,
                                           changed, written, fails):
    monkeypatch.setattr(_tpm, "SWTPM_DIR", str(tmp_path))
    domain = Domain(XML % "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>")
    result = {"changed": False}
    module = FakeModule({"tpm2-00.permall": b64(b"sealed")}, check_mode)
    target = tmp_path / UUID / "tpm2" / "tpm2-00.permall"
    if fails:
        with pytest.raises(VmbackupError, match=fails):
            _libvirt_define._restore_tpm_state(module, FakeVirsh(vm_state), domain, defined_before, result)
    else:
        _libvirt_define._restore_tpm_state(module, FakeVirsh(vm_state), domain, defined_before, result)
        assert result["changed"] is changed
        assert result["tpm_state_written"] == ["tpm2-00.permall"]
    assert target.exists() is written


def test_libvirt_define_refuses_state_for_a_domain_without_tpm(tmp_path, monkeypatch):
    monkeypatch.setattr(_tpm, "SWTPM_DIR", str(tmp_path))
    with pytest.raises(VmbackupError, match="has no emulated TPM"):
        _libvirt_define._restore_tpm_state(FakeModule({"tpm2-00.permall": b64(b"x")}), FakeVirsh(),
                                           Domain(XML % ""), False, {})
    assert os.listdir(str(tmp_path)) == []
