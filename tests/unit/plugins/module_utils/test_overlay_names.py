# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Overlay names of kvm_snapshot: unique per disk, both name forms recognised (issue 13)."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._kvm_snapshot import (
    overlay_id,
    overlay_path_for,
    plan_overlays,
)

ID = "20261122T010000Z"


@pytest.mark.parametrize("base, target, overlay_dir, vm, expected", [
    ("/img/data.qcow2", "vda", None, "vm1", "/img/data.qcow2.vmbackup-%s.vda.qcow2" % ID),
    ("/img/data.raw", "vdb", None, "vm1", "/img/data.raw.vmbackup-%s.vdb.qcow2" % ID),
    ("/img/disk", "sda", None, "vm1", "/img/disk.vmbackup-%s.sda.qcow2" % ID),
    ("/a/disk.qcow2", "vda", "/ovl", "vm1", "/ovl/vm1.disk.qcow2.vmbackup-%s.vda.qcow2" % ID),
    ("/b/disk.qcow2", "vdb", "/ovl", "vm1", "/ovl/vm1.disk.qcow2.vmbackup-%s.vdb.qcow2" % ID),
    ("/b/disk.qcow2", "vdb", "/ovl", "vm2", "/ovl/vm2.disk.qcow2.vmbackup-%s.vdb.qcow2" % ID),
])
def test_overlay_path_for(base, target, overlay_dir, vm, expected):
    assert overlay_path_for(base, ID, target, overlay_dir, vm) == expected


@pytest.mark.parametrize("path, target, expected", [
    # this version's names
    ("/img/data.qcow2.vmbackup-20261122T010000Z.vda.qcow2", "vda", ID),
    ("/img/data.qcow2.vmbackup-20261122T010000Z.vda.qcow2", None, ID),
    ("/img/data.raw.vmbackup-20261122T010000Z-2.vdb.qcow2", "vdb", ID + "-2"),
    ("/img/data.raw.vmbackup-20261122T010000Z-2.vdb.qcow2", None, ID + "-2"),
    ("/ovl/vm1.disk.qcow2.vmbackup-20261122T010000Z.xvda.qcow2", "xvda", ID),
    # an ID with a dot (possible with the module alone): read right when the disk is known
    ("/img/d.qcow2.vmbackup-a.b.vda.qcow2", "vda", "a.b"),
    # older versions' names: the base's extension dropped, no target
    ("/img/data.vmbackup-20261122T010000Z.qcow2", "vda", ID),
    ("/img/data.vmbackup-20261122T010000Z.qcow2", None, ID),
    ("/img/data.vmbackup-20261122T010000Z-3.qcow2", "vdb", ID + "-3"),
    ("/img/vm.vmbackup-my.id.qcow2", "vda", "my.id"),
    # not ours
    ("/img/data.qcow2", "vda", None),
    ("/img/data.vmbackup.qcow2", "vda", None),
    ("/img/data.vmbackup-.qcow2", None, None),
    (None, None, None),
])
def test_overlay_id(path, target, expected):
    assert overlay_id(path, target) == expected


def test_plan_same_stem_disks_get_distinct_overlays():
    plan = plan_overlays([("vda", "/img/data.qcow2"), ("vdb", "/img/data.raw")], ID, None, "vm1")
    assert plan == {"vda": "/img/data.qcow2.vmbackup-%s.vda.qcow2" % ID,
                    "vdb": "/img/data.raw.vmbackup-%s.vdb.qcow2" % ID}
    # the names older versions gave them were one file: /img/data.vmbackup-ID.qcow2
    assert len(set(plan.values())) == 2


def test_plan_same_file_name_under_overlay_dir():
    plan = plan_overlays([("vda", "/a/disk.qcow2"), ("vdb", "/b/disk.qcow2")], ID, "/ovl", "vm1")
    assert len(set(plan.values())) == 2


@pytest.mark.parametrize("disks", [
    # an overlay that would be another disk's own image
    [("vda", "/img/data.qcow2"), ("vdb", "/img/data.qcow2.vmbackup-%s.vda.qcow2" % ID)],
    # the same, spelled with a redundant path element
    [("vda", "/img/data.qcow2"), ("vdb", "/img/./data.qcow2.vmbackup-%s.vda.qcow2" % ID)],
    # one target twice (a broken domain XML)
    [("vda", "/img/data.qcow2"), ("vda", "/img/data.qcow2")],
])
def test_plan_refuses_collisions(disks):
    with pytest.raises(VmbackupError, match="would both use .* nothing was created"):
        plan_overlays(disks, ID, None, "vm1")
