"""Where a restore writes each disk, and the swap of forced restores (_restore_volumes)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _restore_volumes as rv
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.filter.restore_plan import restore_plan

RUN = "k3v9q2m7x1c4b8n6"


@pytest.mark.parametrize("name, expected", [
    ("vg0-lv1", ("vg0", "lv1")),
    ("vg--a-lv--b", ("vg-a", "lv-b")),
    ("vg0-h3--lvvm--vda", ("vg0", "h3-lvvm-vda")),
    ("nohyphen", None),
    ("a-b-c", None),
])
def test_dm_split(name, expected):
    assert rv.dm_split(name) == expected


@pytest.mark.parametrize("path, expected", [
    ("/dev/vg0/lv1", ("vg0", "lv1")),
    ("/dev/mapper/vg0-lv1", ("vg0", "lv1")),
    ("/dev/mapper/vg--x-my--lv", ("vg-x", "my-lv")),
    ("/dev/sdb", None),
    ("/dev/disk/by-id", None),
    ("/var/lib/x.qcow2", None),
])
def test_lv_of_path(path, expected):
    assert rv.lv_of_path(path) == expected


FILE = {"target": "vda", "type": "file", "path": "/img/web1.qcow2", "size": 1 << 30}
LVDISK = {"target": "vdb", "type": "block", "path": "/dev/mapper/vg0-web1--data", "size": 1 << 30}
RBD = {"target": "vdc", "type": "rbd", "path": "rbd/web1-c", "size": 1 << 30}
DEV = {"target": "vdd", "type": "block", "path": "/dev/sdz", "size": 1 << 30}
NONE = {"exists": False, "kind": None}

# entry, what is there now, force -> expected (staged, swap, aside, create_lv, created, in_place) or error text
CASES = [
    ("new file", FILE, NONE, False, ("/img/web1.qcow2", False, None, None, True, False)),
    ("new file, force changes nothing", FILE, NONE, True, ("/img/web1.qcow2", False, None, None, True, False)),
    ("existing file refused", FILE, {"exists": True, "kind": "file"}, False, "already exists (file)"),
    ("existing file forced: beside", FILE, {"exists": True, "kind": "file"}, True,
     ("/img/web1.qcow2.vmbackup-restore-" + RUN, True, "/img/web1.qcow2.vmbackup-old-" + RUN, None, False, False)),
    ("new LV by its mapper path", LVDISK, NONE, False,
     ("/dev/vg0/web1-data", False, None, {"vg": "vg0", "name": "web1-data", "size": 1 << 30}, True, False)),
    ("existing LV refused", LVDISK, {"exists": True, "kind": "lv", "vg": "vg0", "lv": "web1-data"}, False,
     "logical volume vg0/web1-data"),
    ("existing LV forced: a new LV in the same VG", LVDISK,
     {"exists": True, "kind": "lv", "vg": "vg0", "lv": "web1-data"}, True,
     ("/dev/vg0/web1-data-vmbr-k3v9q2m7", True, "web1-data-vmbo-k3v9q2m7",
      {"vg": "vg0", "name": "web1-data-vmbr-k3v9q2m7", "size": 1 << 30}, False, False)),
    ("existing non-LV device refused", DEV, {"exists": True, "kind": "device"}, False, "block device (not an LV)"),
    ("existing non-LV device forced: in place", DEV, {"exists": True, "kind": "device"}, True,
     ("/dev/sdz", False, None, None, False, True)),
    ("missing non-LV device cannot be created", DEV, NONE, False, "is not an LV path"),
    ("new RBD image", RBD, NONE, False, ("rbd/web1-c", False, None, None, True, False)),
    ("existing RBD image refused", RBD, {"exists": True, "kind": "rbd"}, False, "RBD image"),
    ("existing RBD image forced: beside", RBD, {"exists": True, "kind": "rbd"}, True,
     ("rbd/web1-c.vmbackup-restore-" + RUN, True, "rbd/web1-c.vmbackup-old-" + RUN, None, False, False)),
]


@pytest.mark.parametrize("entry, found, force, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(entry, found, force, expected):
    if isinstance(expected, str):
        with pytest.raises(VmbackupError) as err:
            rv.decide(entry, found, force, RUN)
        assert expected in err.value.msg
        return
    out = rv.decide(entry, found, force, RUN)
    got = (out["staged"], out["swap"], out["aside"], out["create_lv"], out["created"], out["in_place"])
    assert got == expected


@pytest.mark.parametrize("run_id", ["", "short", "UPPERCASE123", "a/b/c/d/e/f", "x" * 33])
def test_bad_run_ids_are_refused(run_id):
    with pytest.raises(VmbackupError):
        rv.check_run_id(run_id)


class FakeHost:
    """Files only, in a temporary directory: the renames are real."""
    name = "hv-test"

    def lvs(self):
        return []


def _file_disk(tmp_path, name, old=True, fail_rename=False):
    final = str(tmp_path / name)
    disk = rv.decide({"target": name, "type": "file", "path": final, "size": 1},
                     {"exists": True, "kind": "file"}, True, RUN)
    if old:
        with open(final, "w") as fh:
            fh.write("old " + name)
    if not fail_rename:
        with open(disk["staged"], "w") as fh:
            fh.write("new " + name)
    return disk


def _read(path):
    with open(path) as fh:
        return fh.read()


def test_swap_then_finish(tmp_path):
    host = FakeHost()
    disks = [_file_disk(tmp_path, "a"), _file_disk(tmp_path, "b")]
    assert rv.swap(host, disks) == ["a", "b"]
    assert _read(str(tmp_path / "a")) == "new a" and _read(disks[0]["aside"]) == "old a"
    assert sorted(rv.finish(host, disks)) == sorted(d["aside"] for d in disks)
    assert sorted(os.listdir(str(tmp_path))) == ["a", "b"]


def test_swap_with_a_new_volume_missing_renames_nothing(tmp_path):
    host = FakeHost()
    disks = [_file_disk(tmp_path, "a"), _file_disk(tmp_path, "b", fail_rename=True)]
    with pytest.raises(VmbackupError) as err:
        rv.swap(host, disks)
    assert "nothing was swapped" in err.value.msg
    assert _read(str(tmp_path / "a")) == "old a" and _read(str(tmp_path / "b")) == "old b"


def test_swap_failing_on_the_second_disk_puts_the_first_back(tmp_path):
    host = FakeHost()
    disks = [_file_disk(tmp_path, "a"), _file_disk(tmp_path, "b")]
    # the old b cannot be moved aside: its aside name is taken
    with open(disks[1]["aside"], "w") as fh:
        fh.write("in the way")
    with pytest.raises(VmbackupError) as err:
        rv.swap(host, disks)
    assert "put back" in err.value.msg
    os.unlink(disks[1]["aside"])
    assert _read(str(tmp_path / "a")) == "old a" and _read(str(tmp_path / "b")) == "old b"
    # the new volume of a is under its staged name again; discard removes it and nothing else
    assert sorted(rv.discard(host, disks)) == sorted(d["staged"] for d in disks)
    assert sorted(os.listdir(str(tmp_path))) == ["a", "b"]


def test_undo_after_a_failed_definition_restores_the_old_disks(tmp_path):
    host = FakeHost()
    disks = [_file_disk(tmp_path, "a"), _file_disk(tmp_path, "b")]
    rv.swap(host, disks)
    assert rv.undo(host, disks) == 2
    assert _read(str(tmp_path / "a")) == "old a" and _read(str(tmp_path / "b")) == "old b"
    assert rv.undo(host, disks) == 0  # idempotent
    rv.discard(host, disks)
    assert sorted(os.listdir(str(tmp_path))) == ["a", "b"]


def test_discard_removes_created_targets_only(tmp_path):
    host = FakeHost()
    new = rv.decide({"target": "vda", "type": "file", "path": str(tmp_path / "new"), "size": 1}, NONE, False, RUN)
    with open(new["path"], "w") as fh:
        fh.write("partial")
    with open(str(tmp_path / "other"), "w") as fh:
        fh.write("not ours")
    assert rv.discard(host, [new]) == [new["path"]]
    assert os.listdir(str(tmp_path)) == ["other"]


def test_write_file_is_private_from_creation(tmp_path):
    class Module:
        params = {"vm": "web1"}
    path = str(tmp_path / "nv" / "web1_VARS.fd")
    assert rv.write_file(Module(), path, "aGVsbG8=", None, None) == 5
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with pytest.raises(VmbackupError):
        rv.write_file(Module(), path, "aGVsbG8=", None, None)


def test_restore_plan_renames_a_mapper_lv_into_its_vg():
    backup = {"vm": "web1", "disks": [{"target": "vda", "backend": "block", "source": "/dev/mapper/vg--0-web1",
                                       "virtual_size": 1, "image": "vda.qcow2", "sha256": "x", "mode": "full"}]}
    chain = [{"backup_id": "b1", "disks": backup["disks"]}]
    plan = restore_plan(backup, chain, "web1-t")
    assert plan[0]["path"] == "/dev/vg-0/web1-t-vda"
    same = restore_plan(backup, chain, "web1")
    assert same[0]["path"] == "/dev/mapper/vg--0-web1"


class _Pw:
    def __init__(self, gid):
        self.pw_gid = gid


def _lookup(accounts):
    def lookup(name):
        if name not in accounts:
            raise KeyError(name)
        return _Pw(accounts[name])
    return lookup


GROUPS = {36: "kvm", 107: "qemu", 108: "kvm"}


@pytest.mark.parametrize("owner, group, accounts, expected", [
    ("", "", {"qemu": 107, "libvirt-qemu": 108}, ("qemu", "qemu")),  # qemu first (RHEL, Fedora)
    ("", "", {"libvirt-qemu": 108}, ("libvirt-qemu", "kvm")),  # Debian, Ubuntu
    ("", "disk", {"libvirt-qemu": 108}, ("libvirt-qemu", "disk")),  # a group given is kept
    ("vmowner", "", {"vmowner": 36, "qemu": 107}, ("vmowner", "kvm")),  # the owner's primary group
    ("vmowner", "", {"vmowner": 999}, ("vmowner", "999")),  # a primary gid without a name
    ("vmowner", "staff", {}, ("vmowner", "staff")),  # both given: checked later by ids()
], ids=["qemu", "libvirt-qemu", "group_given", "owner_given", "gid_without_name", "both_given"])
def test_image_owner(owner, group, accounts, expected):
    def group_name(gid):
        if gid not in GROUPS:
            raise KeyError(gid)
        return GROUPS[gid]
    assert rv.image_owner(owner, group, _lookup(accounts), group_name) == expected


@pytest.mark.parametrize("owner, accounts, says", [
    ("", {}, "neither of the accounts QEMU runs as (qemu, libvirt-qemu)"),
    ("nobody-here", {}, "owner nobody-here does not exist"),
])
def test_image_owner_that_does_not_exist_is_a_clear_error(owner, accounts, says):
    with pytest.raises(VmbackupError) as err:
        rv.image_owner(owner, "", _lookup(accounts), lambda gid: "g")
    assert says in err.value.msg and "restore_image_owner" in err.value.msg


def _owned_disks(tmp_path):
    forced = _file_disk(tmp_path, "a")
    new = rv.decide({"target": "vdb", "type": "file", "path": str(tmp_path / "new.raw"), "size": 1}, NONE, False, RUN)
    with open(new["staged"], "w") as fh:
        fh.write("new")
    nvram = dict(new, backend="nvram", staged=str(tmp_path / "nvram.fd"))
    block = {"target": "vdc", "type": "block", "staged": "/dev/vg0/x", "created": True}
    return forced, new, nvram, block


def test_give_to_owner_makes_only_the_written_files_private(tmp_path):
    forced, new, nvram, block = _owned_disks(tmp_path)
    for path in (forced["staged"], new["staged"]):
        os.chmod(path, 0o644)
    uid, gid = os.getuid(), os.getgid()
    given = rv.give_to_owner(FakeHost(), [forced, new, nvram, block], str(uid), str(gid))
    assert given == [forced["staged"], new["staged"]]  # not the NVRAM (written owned), not the LV
    for path in given:
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o600)
    assert _read(forced["path"]) == "old a"  # the old disk is left as it was


def test_give_to_owner_refuses_a_symlink_under_a_staged_name(tmp_path):
    forced = _file_disk(tmp_path, "a", fail_rename=True)
    victim = tmp_path / "victim"
    victim.write_text("someone else's")
    os.chmod(str(victim), 0o644)
    os.symlink(str(victim), forced["staged"])
    with pytest.raises(VmbackupError) as err:
        rv.give_to_owner(FakeHost(), [forced], str(os.getuid()), str(os.getgid()))
    assert "nothing was swapped" in err.value.msg
    assert os.stat(str(victim)).st_mode & 0o777 == 0o644


def test_transfers_are_the_qcow2_chains_to_write():
    planned = [
        dict(rv.decide(FILE, NONE, False, RUN), image="/r/vda.qcow2", format="qcow2", backend="file"),
        dict(rv.decide(LVDISK, {"exists": True, "kind": "lv", "vg": "vg0", "lv": "web1-data"}, True, RUN),
             image="/r/vdb.qcow2", format="raw", backend="block"),
        {"target": "vdc", "type": "rbd", "path": "rbd/x", "staged": "rbd/x", "image": "/r/vdc.rbddiff",
         "format": "raw", "size": 1, "backend": "rbd"},
        {"target": "nvram", "type": "file", "path": "/nv/x_VARS.fd", "staged": "/nv/x_VARS.fd", "size": 0,
         "backend": "nvram"},
    ]
    assert rv.transfers(planned) == [
        {"image": "/img/web1.qcow2", "repo_image": "/r/vda.qcow2", "format": "qcow2", "size": 1 << 30,
         "create": True, "force": False},
        {"image": "/dev/vg0/web1-data-vmbr-k3v9q2m7", "repo_image": "/r/vdb.qcow2", "format": "raw",
         "size": 1 << 30, "create": False, "force": True},
    ]
