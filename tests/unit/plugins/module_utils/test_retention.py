# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_retention: the policy (pure), full_due, and backup_prune on a repository in a temp dir.

The module runs for real with only ``AnsibleModule.run_command`` faked (tests/unit/conftest.py).
"""

from __future__ import annotations

import datetime
import json
import os
import struct

import pytest

from conftest import AnsibleExitJson, AnsibleFailJson, set_module_args

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _retention as ret
from ansible_collections.vmbackup.libvirt.plugins.modules import backup_prune

UTC = datetime.timezone.utc


def bid(day, hour=1, month=11, year=2026, suffix=""):
    return "%04d%02d%02dT%02d0000Z%s" % (year, month, day, hour, suffix)


def m(backup_id, parent=None, disks=None, **extra):
    out = {"backup_id": backup_id, "type": "incremental" if parent else "full", "parent": parent,
           "disks": disks if disks is not None else [
               {"target": "vda", "file": "vda.qcow2", "mode": "delta" if parent else "full"}]}
    out.update(extra)
    return out


def chainset(*spec):
    """chainset((day, 'F'), (day, 'I'), ...) -> manifests; each I's parent is the previous one."""
    out = []
    for day, kind, *hour in spec:
        i = bid(day, *(hour or [1]))
        out.append(m(i, None if kind == "F" else out[-1]["backup_id"]))
    return out


NOW = datetime.datetime(2026, 11, 30, 12, tzinfo=UTC)


def ids(entries):
    return [e["backup_id"] for e in entries]


# --------------------------------------------------------------------------
# plan

def test_keep_last_keeps_whole_chain_of_kept_incremental():
    ms = chainset((1, "F"), (2, "I"), (3, "I"), (4, "F"), (5, "I"))
    kept, removed, warnings = ret.plan(ms, {"keep_last": 1}, NOW)
    assert ids(kept) == [bid(5), bid(4)]
    assert kept[1]["reasons"] == ["needed by %s" % bid(5)]
    # Deletion order: newest first, so children go before their parents.
    assert ids(removed) == [bid(3), bid(2), bid(1)]
    assert warnings == []


def test_keep_last_two_into_older_chain():
    ms = chainset((1, "F"), (2, "I"), (3, "I"), (4, "F"), (5, "I"))
    kept, removed, _w = ret.plan(ms, {"keep_last": 1, "keep_daily": 3}, NOW)
    # daily keeps 5, 4, 3; 3 needs 2 and 1.
    assert ids(kept) == [bid(5), bid(4), bid(3), bid(2), bid(1)]
    assert removed == []


def test_buckets_keep_newest_of_each_and_count_only_buckets_with_backups():
    # two backups a day for days 1..10 (all fulls: no chains)
    ms = [m(bid(d, h)) for d in range(1, 11) for h in (1, 13)]
    kept, removed, _w = ret.plan(ms, {"keep_daily": 3}, NOW)
    assert ids(kept) == [bid(10, 13), bid(9, 13), bid(8, 13)]
    assert len(removed) == 17
    kept, _r, _w = ret.plan(ms, {"keep_weekly": 2}, NOW)
    # ISO weeks: 2026-11-09..15 (W46) holds day 10 (Tue); W45 holds 2..8; W44 holds day 1 (Sun).
    assert ids(kept) == [bid(10, 13), bid(8, 13)]
    kept, _r, _w = ret.plan(ms + [m(bid(20, 1, month=10))], {"keep_monthly": 5}, NOW)
    assert ids(kept) == [bid(10, 13), bid(20, 1, month=10)]
    assert kept[1]["reasons"] == ["keep_monthly 2026-10"]


def test_reasons_accumulate_and_newest_always_kept():
    ms = [m(bid(d)) for d in range(1, 5)]
    kept, _r, _w = ret.plan(ms, {"keep_last": 1, "keep_daily": 1}, NOW)
    assert kept[0]["reasons"] == ["newest backup (the next incremental builds on it)", "keep_last 1",
                                  "keep_daily 2026-11-04"]
    kept, removed, _w = ret.plan(ms, {"keep_monthly": 0}, NOW)
    assert ids(kept) == [bid(4)]


def test_min_age_protects_young_backups():
    ms = [m(bid(d)) for d in range(25, 31)]
    kept, removed, _w = ret.plan(ms, {"keep_last": 1, "min_age": 3 * 86400}, NOW)
    # NOW is the 30th 12:00; 28th 01:00 is 2.46 days old, 27th 01:00 3.46 days.
    assert ids(kept) == [bid(30), bid(29), bid(28)]
    assert kept[-1]["reasons"] == ["younger than min_age"]
    assert ids(removed) == [bid(27), bid(26), bid(25)]


def test_per_disk_backing_keeps_a_backup_the_manifest_chain_does_not_name():
    # A damaged or hand-made repository: B3 is "full" per manifest, but its vdb image
    # is a delta backed by B2's image. The qcow2 header wins: B2 stays.
    ms = [m(bid(1)), m(bid(2)), m(bid(3))]
    kept, _r, _w = ret.plan(ms, {"keep_last": 1}, NOW, backing={bid(3): {bid(2)}})
    assert ids(kept) == [bid(3), bid(2)]


def test_disk_full_inside_incremental_keeps_manifest_chain():
    # B3: vda delta on B2, vdb full (a new disk). B2: vda full, vdb delta on B1.
    ms = [m(bid(1), disks=[{"target": "vdb", "file": "vdb.qcow2", "mode": "full"}]),
          m(bid(2), bid(1), disks=[{"target": "vda", "file": "vda.qcow2", "mode": "full"},
                                   {"target": "vdb", "file": "vdb.qcow2", "mode": "delta"}]),
          m(bid(3), bid(2), disks=[{"target": "vda", "file": "vda.qcow2", "mode": "delta"},
                                   {"target": "vdb", "file": "vdb.qcow2", "mode": "full"}])]
    kept, removed, _w = ret.plan(ms, {"keep_last": 1}, NOW)
    assert ids(kept) == [bid(3), bid(2), bid(1)] and removed == []


def test_broken_chain_is_reported():
    ms = [m(bid(3), bid(2))]
    kept, _r, warnings = ret.plan(ms, {"keep_last": 1}, NOW)
    assert ids(kept) == [bid(3)]
    assert "needs backup %s" % bid(2) in warnings[0]


def test_synthetic_full_replaces_its_chain():
    ms = chainset((1, "F"), (2, "I"), (3, "I"))
    ms.append(m(bid(3, suffix="-1"), synthesized_from=bid(3)))
    kept, removed, _w = ret.plan(ms, {"keep_last": 1}, NOW)
    assert ids(kept) == [bid(3, suffix="-1")]
    assert ids(removed) == [bid(3), bid(2), bid(1)]
    assert removed[0]["reasons"] == ["same point in time as %s (synthetic full)" % bid(3, suffix="-1")]
    # keep_last counts points in time: the synthetic full and its source are one.
    kept, removed, _w = ret.plan(ms, {"keep_last": 2}, NOW)
    assert ids(kept) == [bid(3, suffix="-1"), bid(2), bid(1)]
    assert ids(removed) == [bid(3)]


def test_parse_duration():
    assert ret.parse_duration("90") == 90
    assert ret.parse_duration("36h") == 36 * 3600
    assert ret.parse_duration("2w") == 14 * 86400
    assert ret.parse_duration("never") is None
    with pytest.raises(ret.VmbackupError, match="not a duration"):
        ret.parse_duration("3 days")


# --------------------------------------------------------------------------
# full_due

def test_full_due():
    assert ret.full_due([], 5, 0, NOW) == (True, "no previous backup")
    ms = chainset((26, "F"), (27, "I"), (28, "I"))
    due, why = ret.full_due(ms, 4, 0, NOW)
    assert not due and "2 incremental(s) since the full backup %s" % bid(26) == why
    assert ret.full_due(ms, 3, 0, NOW)[0]           # full + 2 incrementals: with N=3 the next is a full
    assert ret.full_due(ms, 0, 0, NOW)[0] is False   # no limits
    assert ret.full_due(ms, 0, 4, NOW)[0] is True    # full of the 26th is 4.5 days old
    assert ret.full_due(ms, 0, 5, NOW)[0] is False
    assert ret.full_due(ms + [m(bid(29))], 2, 0, NOW)[0] is False  # newest is a full
    broken = [m(bid(28), bid(27))]
    assert ret.full_due(broken, 0, 0, NOW)[0] is True
    synthetic = ms + [m(bid(28, suffix="-1"), synthesized_from=bid(28))]
    assert ret.full_due(synthetic, 2, 0, NOW)[0] is False


# --------------------------------------------------------------------------
# the module on a repository

def qcow2_header(backing=None):
    """Just enough of a qcow2 file for qcow2_backing(): magic, version, backing offset/size."""
    name = (backing or "").encode()
    head = b"QFI\xfb" + struct.pack(">I", 3) + struct.pack(">QI", 72 if name else 0, len(name))
    return head.ljust(72, b"\0") + name


def make_repo(root, vm, manifests):
    for man in manifests:
        d = os.path.join(root, vm, man["backup_id"])
        os.makedirs(d)
        for disk in man["disks"]:
            backing = "../%s/%s" % (man["parent"], disk["file"]) if disk["mode"] == "delta" else None
            with open(os.path.join(d, disk["file"]), "wb") as fh:
                fh.write(qcow2_header(backing))
        with open(os.path.join(d, "manifest.json"), "w") as fh:
            json.dump(dict(man, vm=vm, status="complete"), fh)


def run_module(args, check_mode=False, diff=False):
    with set_module_args(args, check_mode=check_mode, diff=diff):
        with pytest.raises((AnsibleExitJson, AnsibleFailJson)) as exc:
            backup_prune.main()
    return exc.value.result


@pytest.fixture
def repo(tmp_path, patched_module):
    # prune runs no command; the synthesize tests install the run_command fake themselves
    root = str(tmp_path / "repo")
    make_repo(root, "web1", chainset((1, "F"), (2, "I"), (3, "I"), (4, "F"), (5, "I")))
    make_repo(root, "db1", chainset((3, "F"), (4, "I")))
    os.makedirs(os.path.join(root, "web1", ".partial-" + bid(6)))
    os.makedirs(os.path.join(root, "web1", ".deleting-" + bid(0 + 1, 2)))
    old = 1_000_000_000
    os.utime(os.path.join(root, "web1", ".partial-" + bid(6)), (old, old))
    return root


def listing(root, vm):
    return sorted(os.listdir(os.path.join(root, vm)))


def test_module_check_mode_diff_then_apply_then_idempotent(repo):
    args = {"path": repo, "keep_last": 1, "now": "2026-11-30T12:00:00Z"}
    before = {vm: listing(repo, vm) for vm in ("web1", "db1")}
    res = run_module(args, check_mode=True, diff=True)
    assert res["changed"] is True
    removed = [(r["vm"], r["backup_id"]) for r in res["removed"]]
    assert removed == [("web1", bid(3)), ("web1", bid(2)), ("web1", bid(1))]
    assert {(k["vm"], k["backup_id"]) for k in res["kept"]} == {("web1", bid(5)), ("web1", bid(4)),
                                                                ("db1", bid(4)), ("db1", bid(3))}
    assert [p["dir"] for p in res["partials_removed"]] == [".deleting-" + bid(1, 2), ".partial-" + bid(6)]
    assert bid(1) in res["diff"]["before"] and bid(1) not in res["diff"]["after"]
    assert {vm: listing(repo, vm) for vm in ("web1", "db1")} == before  # check mode removed nothing

    res = run_module(args)
    assert res["changed"] is True
    assert listing(repo, "web1") == [bid(4), bid(5)]
    assert listing(repo, "db1") == [bid(3), bid(4)]
    res = run_module(args)
    assert res["changed"] is False and res["removed"] == []


def test_module_partial_max_age_never_and_vms_filter(repo):
    res = run_module({"path": repo, "vms": ["web1"], "keep_daily": 2, "partial_max_age": "never",
                      "now": "2026-11-30T12:00:00Z"})
    assert [p["dir"] for p in res["partials_removed"]] == [".deleting-" + bid(1, 2)]
    assert ".partial-" + bid(6) in listing(repo, "web1")
    assert listing(repo, "db1") == [bid(3), bid(4)]


def test_module_refuses_without_rules(repo):
    res = run_module({"path": repo})
    assert res["failed"] and "no retention rule given" in res["msg"]


def test_module_backing_from_qcow2_header(repo):
    # Hand-edit: web1's day-5 manifest forgets its parent; the image header still names day 4.
    path = os.path.join(repo, "web1", bid(5), "manifest.json")
    with open(path) as fh:
        man = json.load(fh)
    man.update(parent=None, type="full")
    with open(path, "w") as fh:
        json.dump(man, fh)
    res = run_module({"path": repo, "vms": ["web1"], "keep_last": 1}, check_mode=True)
    kept = {k["backup_id"]: k["reasons"] for k in res["kept"]}
    assert kept[bid(4)] == ["needed by %s" % bid(5)]


def test_synthesize_check_mode_and_refusals(repo, run_command):
    run_command([])
    res = run_module({"path": repo, "vms": ["web1"], "action": "synthesize"}, check_mode=True)
    assert res["changed"] and res["backup_id"] == bid(5, suffix="-1") and res["chain"] == [bid(4), bid(5)]
    res = run_module({"path": repo, "vms": ["web1"], "action": "synthesize", "backup": bid(4)})
    assert not res["changed"] and "already a full backup" in res["msg"]
    res = run_module({"path": repo, "action": "synthesize"})
    assert res["failed"] and "exactly one" in res["msg"]


def test_synthesize_runs_qemu_img(repo, run_command):
    # verify=false: the fake images carry no sha256 in their manifests anyway.
    part = os.path.join(repo, "web1", ".partial-" + bid(5, suffix="-1"))
    calls = run_command([
        {"command": ["qemu-img", "convert", "-t", "writeback", "-f", "qcow2", "-O", "qcow2",
                     os.path.join(repo, "web1", bid(5), "vda.qcow2"), part + "/vda.qcow2.part"], "rc": 0},
        {"command": ["qemu-img", "check", "-q", "-f", "qcow2", part + "/vda.qcow2.part"], "rc": 0},
    ])
    # The fake convert writes nothing: make the file it would have made.
    orig = ret.CommandRunner.run

    def run(self, argv, **kw):
        out = orig(self, argv, **kw)
        if argv[1] == "convert":
            with open(argv[-1], "wb") as fh:
                fh.write(qcow2_header())
        return out

    ret.CommandRunner.run = run
    try:
        res = run_module({"path": repo, "vms": ["web1"], "action": "synthesize", "verify": False})
    finally:
        ret.CommandRunner.run = orig
    calls.assert_all_called()
    assert res["changed"] and res["backup_id"] == bid(5, suffix="-1")
    with open(os.path.join(repo, "web1", bid(5, suffix="-1"), "manifest.json")) as fh:
        man = json.load(fh)
    assert man["type"] == "full" and man["parent"] is None and man["synthesized_from"] == bid(5)
    assert man["disks"][0]["mode"] == "full" and len(man["disks"][0]["sha256"]) == 64
    # A second run finds it.
    res = run_module({"path": repo, "vms": ["web1"], "action": "synthesize"})
    assert not res["changed"] and res["backup_id"] == bid(5, suffix="-1")
    # Retention: the synthetic full stands for day 5; the chain of day 4-5 goes.
    res = run_module({"path": repo, "vms": ["web1"], "keep_last": 1, "partial_max_age": "never"})
    assert listing(repo, "web1") == [".partial-" + bid(6), bid(5, suffix="-1")]
