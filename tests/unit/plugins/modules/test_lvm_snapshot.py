# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm_snapshot and lvm_volume, driven by fixtures/lvm_snapshot.yaml and fixtures/lvm_volume.yaml
(format: tests/unit/conftest.py). Warnings go through ``AnsibleModule.warn``; a case lists them
under ``module_warnings`` (substrings, each in some warning)."""

from __future__ import annotations

import os
import socket
from unittest import mock

import pytest
import yaml

from ansible.module_utils import basic

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lvm
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.modules import lvm_snapshot, lvm_volume

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _cases(name):
    with open(os.path.join(FIXTURES, name)) as fh:
        return [pytest.param(c, id=c["id"]) for c in yaml.safe_load(fh)["test_cases"]]


def _run(module_case, main, case):
    warned = []
    with mock.patch.object(basic.AnsibleModule, "warn", autospec=True,
                           side_effect=lambda self, text: warned.append(text)):
        module_case(main, case)
    for text in case.get("module_warnings") or []:
        text = text.replace("@@host@@", socket.gethostname())
        assert any(text in w for w in warned), "no warning with %r: %s" % (text, warned)
    if "module_warnings" in case and not case["module_warnings"]:
        assert not warned, warned


@pytest.mark.parametrize("case", _cases("lvm_snapshot.yaml"))
def test_lvm_snapshot(case, module_case):
    _run(module_case, lvm_snapshot.main, case)


@pytest.mark.parametrize("case", _cases("lvm_volume.yaml"))
def test_lvm_volume(case, module_case):
    _run(module_case, lvm_volume.main, case)


# --- names and sizes ------------------------------------------------------------------
@pytest.mark.parametrize("text, origin, expected", [
    ("10%", 64 << 20, 8 << 20),            # 6.4 MiB -> 2 extents minimum
    ("20%", 1 << 30, 208 << 20),           # 204.8 MiB -> rounded up to 52 extents
    ("512M", 1 << 30, 512 << 20),
    ("512MiB", 1 << 30, 512 << 20),
    ("1g", 4 << 30, 1 << 30),
    ("536870912", 1 << 30, 512 << 20),
    ("1M", 1 << 30, 8 << 20),              # at least 2 extents
    ("100%", 64 << 20, 64 << 20),
    ("101%", 64 << 20, 68 << 20),          # whole extents
    ("5G", 64 << 20, 68 << 20),            # capped like LVM caps it
    ("20%ORIGIN", 1 << 30, 208 << 20),
])
def test_parse_size(text, origin, expected):
    assert _lvm.parse_size(text, origin, 4 << 20) == expected


@pytest.mark.parametrize("text", ["", "ten", "-5M", "0", "0%", "5X"])
def test_parse_size_rejects(text):
    with pytest.raises(VmbackupError):
        _lvm.parse_size(text, 1 << 30, 4 << 20)


@pytest.mark.parametrize("given, expected", [
    ("/dev/vg0/lv1", ("vg0", "lv1")),
    ("vg0/lv1", ("vg0", "lv1")),
    ("/dev/mapper/vg0-lv1", ("vg0", "lv1")),
    ("/dev/mapper/my--vg-web--1", ("my-vg", "web-1")),
])
def test_parse_volume(given, expected):
    assert _lvm.parse_volume(given) == expected


@pytest.mark.parametrize("given", ["lv1", "/dev/sda", "/dev/vg0/", "/dev/mapper/novg"])
def test_parse_volume_rejects(given):
    with pytest.raises(VmbackupError):
        _lvm.parse_volume(given)


def test_snapshot_name_fits_lvm_limits():
    assert _lvm.snapshot_name("vg0", "lv1", "20261122T010000Z") == "lv1-vmbackup-20261122T010000Z"
    long_lv = "web-" + "x" * 100
    name = _lvm.snapshot_name("vg-0", long_lv, "20261122T010000Z")
    assert name.endswith("-vmbackup-20261122T010000Z") and len(name) <= 127
    assert _lvm.dm_len("vg-0", name) + 4 <= 127
    assert _lvm.name_is_for(name, long_lv) and not _lvm.name_is_for(name, "web-y")
    assert _lvm.name_is_for("lv1-vmbackup-X", "lv1") and not _lvm.name_is_for("lv10-vmbackup-X", "lv1")
    with pytest.raises(VmbackupError, match="too long"):
        _lvm.snapshot_name("vg0", "lv1", "9" * 125)


@pytest.mark.parametrize("bad", ["-x", "a/b", "a b", "x_tmeta", ""])
def test_snapshot_id_rejects(bad):
    with pytest.raises(VmbackupError):
        _lvm.check_snapshot_id(bad)
