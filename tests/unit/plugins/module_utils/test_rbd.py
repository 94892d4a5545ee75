# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_rbd: the rbd diff v1 parser/applier (hand-built streams) and rbd_export's commands.

rbd_export runs for real with only ``AnsibleModule.run_command`` faked (tests/unit/conftest.py);
the cases state every command, in order, with its rc/stdout/stderr.
"""

from __future__ import annotations

import io
import json
import os
import struct

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _rbd as rbd
from ansible_collections.vmbackup.libvirt.plugins.modules import rbd_export

MiB = 1024 * 1024


# --------------------------------------------------------------------------
# building rbd diff v1 streams by hand

def rec_name(tag, name):
    data = name.encode()
    return tag + struct.pack("<I", len(data)) + data


def rec_size(size):
    return b"s" + struct.pack("<Q", size)


def rec_w(offset, data):
    return b"w" + struct.pack("<QQ", offset, len(data)) + data


def rec_z(offset, length):
    return b"z" + struct.pack("<QQ", offset, length)


def diff(to_snap, size, records, from_snap=None, end=True):
    out = rbd.HEADER_V1
    if from_snap:
        out += rec_name(b"f", from_snap)
    out += rec_name(b"t", to_snap) + rec_size(size)
    out += b"".join(records)
    return out + (b"e" if end else b"")


def apply_all(tmp_path, streams):
    path = str(tmp_path / "img.raw")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    infos = []
    try:
        current = None
        for i, data in enumerate(streams):
            info = rbd.apply_diff(io.BytesIO(data), fd, where="diff%d" % i, expect_from=current)
            current = info["to_snap"]
            infos.append(info)
    finally:
        os.close(fd)
    with open(path, "rb") as fh:
        return fh.read(), infos, path


# --------------------------------------------------------------------------
# parser

def test_iter_diff_records_in_order():
    data = diff("vmbackup-B", 8 * MiB, [rec_w(4096, b"abc"), rec_z(MiB, 65536)], from_snap="vmbackup-A")
    records = list(rbd.iter_diff(io.BytesIO(data)))
    assert records == [("f", "vmbackup-A", None), ("t", "vmbackup-B", None), ("s", 8 * MiB, None),
                       ("w", 4096, 3), ("z", MiB, 65536), ("e", None, None)]


def test_iter_diff_passes_data_in_chunks():
    payload = os.urandom(int(2.5 * MiB))
    seen = []
    list(rbd.iter_diff(io.BytesIO(diff("s", 4 * MiB, [rec_w(512, payload)])),
                       on_data=lambda off, block: seen.append((off, block))))
    assert [off for off, _b in seen] == [512, 512 + MiB, 512 + 2 * MiB]
    assert b"".join(b for _o, b in seen) == payload


@pytest.mark.parametrize("data, message", [
    (b"rbd diff v2\n" + b"e", "v2"),
    (b"not a diff at all", "not an rbd diff stream"),
    (diff("s", MiB, [rec_w(0, b"x" * 10)], end=False), "no end record"),
    (diff("s", MiB, [rec_w(0, b"x" * 10)])[:-5], "truncated"),
    (diff("s", MiB, [b"q"]), "unknown record tag"),
    (rbd.HEADER_V1 + rec_w(0, b"ab") + rec_name(b"t", "late") + b"e", "metadata record"),
])
def test_iter_diff_rejects_damaged_streams(data, message):
    with pytest.raises(rbd.RbdDiffError) as err:
        list(rbd.iter_diff(io.BytesIO(data), where="x.rbddiff"))
    assert message in err.value.msg
    assert "x.rbddiff" in err.value.msg


def test_scan_diff_describes_a_file(tmp_path):
    path = tmp_path / "vda.rbddiff"
    path.write_bytes(diff("vmbackup-2", 16 * MiB, [rec_w(0, b"a" * 1000), rec_w(MiB, b"b" * 24),
                                                   rec_z(2 * MiB, 4096)], from_snap="vmbackup-1"))
    info = rbd.scan_diff(str(path))
    assert info == {"from_snap": "vmbackup-1", "to_snap": "vmbackup-2", "size": 16 * MiB,
                    "data_bytes": 1024, "zero_bytes": 4096, "records": 3}


def test_scan_diff_rejects_trailing_bytes_and_truncated_data(tmp_path):
    path = tmp_path / "a.rbddiff"
    path.write_bytes(diff("s", MiB, []) + b"junk")
    with pytest.raises(rbd.RbdDiffError, match="after the end record"):
        rbd.scan_diff(str(path))
    # a 'w' record announcing more data than the file holds (the scan seeks over data)
    path.write_bytes(rbd.HEADER_V1 + rec_name(b"t", "s") + rec_size(MiB) + b"w" + struct.pack("<QQ", 0, 10 * MiB) + b"e")
    with pytest.raises(rbd.RbdDiffError, match="truncated"):
        rbd.scan_diff(str(path))


def test_check_chain():
    full = {"from_snap": None, "to_snap": "vmbackup-1"}
    inc = {"from_snap": "vmbackup-1", "to_snap": "vmbackup-2"}
    rbd.check_chain([full, inc], ["a", "b"])
    with pytest.raises(rbd.RbdDiffError, match="must start with a full backup"):
        rbd.check_chain([inc], ["b"])
    with pytest.raises(rbd.RbdDiffError, match="chain is broken"):
        rbd.check_chain([full, {"from_snap": "vmbackup-0", "to_snap": "vmbackup-2"}], ["a", "b"])


# --------------------------------------------------------------------------
# applier

def test_apply_full_then_incrementals_matches_a_model(tmp_path):
    size = 4 * MiB
    model = bytearray(size)
    block_a = os.urandom(300000)
    block_b = os.urandom(5000)
    model[100:100 + len(block_a)] = block_a
    model[3 * MiB:3 * MiB + len(block_b)] = block_b
    full = diff("vmbackup-1", size, [rec_w(100, block_a), rec_w(3 * MiB, block_b)])
    # incremental 1: overwrite part of block_a, zero 64 KiB of it, write a new region
    new = os.urandom(7000)
    model[200:200 + len(new)] = new
    model[65536:131072] = bytes(65536)
    model[2 * MiB:2 * MiB + 3] = b"xyz"
    inc1 = diff("vmbackup-2", size, [rec_w(200, new), rec_z(65536, 65536), rec_w(2 * MiB, b"xyz")],
                from_snap="vmbackup-1")
    # incremental 2: the image grew to 6 MiB, data written past the old end
    model.extend(bytes(2 * MiB))
    tail = os.urandom(4096)
    model[5 * MiB:5 * MiB + len(tail)] = tail
    inc2 = diff("vmbackup-3", 6 * MiB, [rec_w(5 * MiB, tail)], from_snap="vmbackup-2")

    content, infos, path = apply_all(tmp_path, [full, inc1, inc2])
    assert content == bytes(model)
    assert [i["to_snap"] for i in infos] == ["vmbackup-1", "vmbackup-2", "vmbackup-3"]
    assert infos[1]["zero_bytes"] == 65536 and infos[1]["data_bytes"] == 7003
    # sparse: the file occupies about its data, not its 6 MiB
    assert os.stat(path).st_blocks * 512 < 2 * MiB


def test_apply_shrinks_the_image(tmp_path):
    full = diff("vmbackup-1", 2 * MiB, [rec_w(MiB + 10, b"gone")])
    inc = diff("vmbackup-2", MiB, [], from_snap="vmbackup-1")
    content, _infos, _path = apply_all(tmp_path, [full, inc])
    assert content == bytes(MiB)


def test_apply_refuses_a_diff_that_does_not_follow(tmp_path):
    full = diff("vmbackup-1", MiB, [])
    inc = diff("vmbackup-3", MiB, [], from_snap="vmbackup-2")
    with pytest.raises(rbd.RbdDiffError, match="starts at snapshot vmbackup-2, but the image is at vmbackup-1"):
        apply_all(tmp_path, [full, inc])
    with pytest.raises(rbd.RbdDiffError, match="full diff"):
        apply_all(tmp_path, [full, diff("vmbackup-2", MiB, [])])


def test_punch_hole_zeroes_a_range(tmp_path):
    path = str(tmp_path / "f")
    with open(path, "wb") as fh:
        fh.write(b"\xff" * (3 * 65536))
    fd = os.open(path, os.O_RDWR)
    try:
        rbd.punch_hole(fd, 65536, 65536)
    finally:
        os.close(fd)
    with open(path, "rb") as fh:
        data = fh.read()
    assert data == b"\xff" * 65536 + bytes(65536) + b"\xff" * 65536


# --------------------------------------------------------------------------
# names and command-line pieces

def test_names_and_args():
    assert rbd.snap_name("20261122T013000Z") == "vmbackup-20261122T013000Z"
    assert rbd.snap_name("vmbackup-20261122T013000Z") == "vmbackup-20261122T013000Z"
    with pytest.raises(rbd.VmbackupError):
        rbd.snap_name("a b")
    assert rbd.check_image("rbd/ns/img") == "rbd/ns/img"
    for bad in ("img", "rbd/img@snap", "rbd/", "/img", "a/b/c/d"):
        with pytest.raises(rbd.VmbackupError):
            rbd.check_image(bad)
    assert rbd.ceph_args({"ceph_conf": "/c/ceph.conf", "ceph_id": "vmbackup", "ceph_keyring": "/k",
                          "cluster": "backup", "ceph_timeout": 7}) == [
        "--cluster", "backup", "--conf", "/c/ceph.conf", "--id", "vmbackup", "--keyring", "/k",
        "--client-mount-timeout", "7"]


def test_plan_export():
    snaps = ["vmbackup-1", "vmbackup-2"]
    assert rbd.plan_export(snaps, "vmbackup-2", "1") == ("incremental", "vmbackup-1", None)
    assert rbd.plan_export(snaps, "vmbackup-2", None) == ("full", None, None)
    mode, frm, reason = rbd.plan_export(snaps, "vmbackup-2", "0")
    assert (mode, frm) == ("full", None)
    assert "vmbackup-0" in reason and "not on the image" in reason


# --------------------------------------------------------------------------
# rbd_export: the exact command sequences

IMG = "rbd/web1-disk0"
G = ["--conf", "/etc/ceph/ceph.conf", "--id", "vmbackup", "--keyring", "/etc/ceph/k", "--client-mount-timeout", "30"]
ARGS = {"image": IMG, "ceph_conf": "/etc/ceph/ceph.conf", "ceph_id": "vmbackup", "ceph_keyring": "/etc/ceph/k"}
TO = ["timeout", "--kill-after=10", "90s", "/usr/bin/rbd"]


def info_call(size=10 * 1024 * MiB):
    return {"command": TO + G + ["info", "--format", "json", IMG], "rc": 0,
            "out": json.dumps({"name": "web1-disk0", "size": size})}


def ls_call(*names):
    return {"command": TO + G + ["snap", "ls", "--format", "json", IMG], "rc": 0,
            "out": json.dumps([{"id": i, "name": n, "size": 1, "protected": "false"} for i, n in enumerate(names)])}


def create_call(name):
    return {"command": TO + G + ["snap", "create", "--no-progress", "%s@%s" % (IMG, name)], "rc": 0}


def rm_call(name):
    return {"command": TO + G + ["snap", "rm", "--no-progress", "%s@%s" % (IMG, name)], "rc": 0}


S1, S2, S3 = "vmbackup-20261120T013000Z", "vmbackup-20261121T013000Z", "vmbackup-20261122T013000Z"

EXPORT_CASES = [
    {"id": "present-creates-incremental-plan",
     "input": dict(ARGS, snapshot="20261122T013000Z", parent="20261121T013000Z"),
     "run_command_calls": [info_call(), ls_call("manual", S2), create_call(S3)],
     "output": {"changed": True, "snapshot": S3, "previous": S2, "snapshots": [S2, S3], "size": 10 * 1024 * MiB,
                "mode": "incremental", "from_snapshot": S2, "fallback_reason": None, "created": True}},
    {"id": "present-idempotent",
     "input": dict(ARGS, snapshot="20261122T013000Z", parent="20261121T013000Z"),
     "run_command_calls": [info_call(), ls_call(S2, S3)],
     "output": {"changed": False, "created": False, "mode": "incremental", "from_snapshot": S2}},
    {"id": "present-check-mode-runs-nothing-that-changes",
     "input": dict(ARGS, snapshot="20261122T013000Z"), "check_mode": True, "diff": True,
     "run_command_calls": [info_call(), ls_call(S2)],
     "output": {"changed": True, "snapshots": [S2, S3], "mode": "full", "from_snapshot": None,
                "diff": {"before": {"snapshots": [S2]}, "after": {"snapshots": [S2, S3]}}}},
    {"id": "present-parent-snapshot-gone-falls-back-to-full",
     "input": dict(ARGS, snapshot="20261122T013000Z", parent="20261121T013000Z"),
     "run_command_calls": [info_call(), ls_call(S1), create_call(S3)],
     "output": {"changed": True, "mode": "full", "from_snapshot": None, "previous": S1}},
    {"id": "rotated-removes-only-ours",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="rotated"), "diff": True,
     "run_command_calls": [info_call(), ls_call(S1, "before-upgrade", S2, S3), rm_call(S1), rm_call(S2)],
     "output": {"changed": True, "removed": [S1, S2], "snapshots": [S3], "previous": None,
                "diff": {"before": {"snapshots": [S1, S2, S3]}, "after": {"snapshots": [S3]}}}},
    {"id": "rotated-idempotent",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="rotated"),
     "run_command_calls": [info_call(), ls_call("before-upgrade", S3)],
     "output": {"changed": False, "removed": [], "snapshots": [S3]}},
    {"id": "rotated-refuses-without-the-snapshot-to-keep",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="rotated"),
     "run_command_calls": [info_call(), ls_call(S1, S2)],
     "failed": True, "msg_contains": ["the snapshot to keep, %s, is not there" % S3, "nothing was removed"]},
    {"id": "absent-removes",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="absent"),
     "run_command_calls": [info_call(), ls_call(S2, S3), rm_call(S3)],
     "output": {"changed": True, "removed": [S3], "snapshots": [S2]}},
    {"id": "absent-check-mode",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="absent"), "check_mode": True,
     "run_command_calls": [info_call(), ls_call(S2, S3)],
     "output": {"changed": True, "removed": [S3], "snapshots": [S2]}},
    {"id": "absent-idempotent",
     "input": dict(ARGS, snapshot="20261122T013000Z", state="absent"),
     "run_command_calls": [info_call(), ls_call(S2)],
     "output": {"changed": False, "removed": []}},
    {"id": "unknown-image",
     "input": dict(ARGS, snapshot="20261122T013000Z"),
     "run_command_calls": [dict(info_call(), rc=2, out="", err="rbd: error opening image web1-disk0: (2) No such file or directory\n")],
     "failed": True, "msg_contains": ["RBD image rbd/web1-disk0", "does not exist", "rc=2", "rbd ls rbd"]},
    {"id": "unknown-pool",
     "input": dict(ARGS, snapshot="20261122T013000Z"),
     "run_command_calls": [dict(info_call(), rc=2, out="", err="rbd: error opening pool 'rbd': (2) No such file or directory\n")],
     "failed": True, "msg_contains": ["pool 'rbd' does not exist", "rbd/web1-disk0"]},
    {"id": "wrong-keyring",
     "input": dict(ARGS, snapshot="20261122T013000Z"),
     "run_command_calls": [dict(info_call(), rc=13, out="",
                                err="monclient(hunting): handle_auth_bad_method server allowed_methods [2] but i only support [2]\n"
                                    "rbd: couldn't connect to the cluster!\n")],
     "failed": True, "msg_contains": ["refused the credentials of client.vmbackup (keyring /etc/ceph/k)", "rbd/web1-disk0"]},
    {"id": "cluster-does-not-answer",
     "input": dict(ARGS, snapshot="20261122T013000Z"),
     "run_command_calls": [dict(info_call(), rc=110, out="",
                                err="monclient(hunting): authenticate timed out after 30\nrbd: couldn't connect to the cluster!\n")],
     "failed": True, "msg_contains": ["did not answer within 30s", "rbd/web1-disk0", "/etc/ceph/ceph.conf"]},
    {"id": "snapshot-create-fails",
     "input": dict(ARGS, snapshot="20261122T013000Z"),
     "run_command_calls": [info_call(), ls_call(), dict(create_call(S3), rc=1, err="rbd: failed to create snapshot: (122) Disk quota exceeded\n")],
     "failed": True, "msg_contains": ["creating snapshot %s of RBD image rbd/web1-disk0" % S3, "Disk quota exceeded"]},
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in EXPORT_CASES])
def test_rbd_export(case, module_case):
    result = module_case(rbd_export.main, case)
    # secrets: only the keyring's path is ever on a command line
    assert "key=" not in json.dumps(result)
