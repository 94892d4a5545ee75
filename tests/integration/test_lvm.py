"""LVM-backed disks end to end on the test bed's LVM hypervisor (a TCG guest with device-mapper,
VG vg0, sshd on 127.0.0.1:2299): lvm_snapshot and lvm_volume run there, disk_transfer and
backup_repo run on the backup node (localhost) and pull over SSH with strict host key checks.

The playbooks (tests/integration/playbooks/lvm_*.yml) write every registered result to a JSON
file, so the test asserts on data. Everything on the LVM host is slow (TCG): LVs are small.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
import uuid

import pytest

from conftest import HV_PYTHON, ROOT, TB
from conftest import testbed as run_testbed

MiB = 1024 * 1024
LV_SIZE = 64 * MiB
PLAYBOOKS = os.path.join(ROOT, "tests", "integration", "playbooks")
LVMHOST = os.path.join(TB, "lvmhost")
SSH_CONFIG = os.path.join(LVMHOST, "ssh_config")
KEY = os.path.join(TB, "ssh", "id_ed25519")
KNOWN_HOSTS = os.path.join(LVMHOST, "known_hosts")
PORT = int(os.environ.get("VMBACKUP_LVMHOST_PORT", "2299"))
SSH_ARGS = {"ssh_host": "127.0.0.1", "ssh_port": PORT, "ssh_private_key": KEY, "known_hosts": KNOWN_HOSTS}
ID1, ID2, ID3 = "20261122T010000Z", "20261122T020000Z", "20261122T030000Z"


@pytest.fixture(scope="session")
def lvmhost():
    run_testbed("lvmhost.sh", "up", timeout=300)
    return "lvmhost"


def on_host(cmd, data=None, check=True, timeout=300):
    """Run a shell command on the LVM host."""
    cp = subprocess.run(["ssh", "-F", SSH_CONFIG, "lvmhost", cmd], input=data, capture_output=True, timeout=timeout,
                        check=False)
    if check and cp.returncode != 0:
        raise AssertionError("on the LVM host, %r failed rc=%s: %s" % (cmd, cp.returncode,
                                                                       cp.stderr.decode(errors="replace")))
    return cp.stdout.decode(errors="replace")


def lvs():
    """{name: row} of vg0."""
    out = on_host("lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,origin,lv_tags,lv_attr vg0")
    return {r["lv_name"]: r for r in json.loads(out)["report"][0]["lv"]}


def vmbackup_snapshots():
    return sorted(n for n in lvs() if "-vmbackup-" in n)


def lv_sha256(path):
    return on_host("sha256sum %s" % path).split()[0]


def write_at(path, offset, data):
    """Write ``data`` (whole MiBs) at ``offset`` (a MiB multiple) of a block device, synced."""
    assert offset % MiB == 0 and len(data) % MiB == 0
    on_host("dd of=%s bs=1M seek=%d count=%d iflag=fullblock oflag=direct conv=notrunc,fsync status=none"
            % (path, offset // MiB, len(data) // MiB), data=data)


class Model:
    """The content the test wrote, kept locally: sha256 and non-zero bytes are computed from it."""

    def __init__(self, size):
        self.buf = bytearray(size)

    def write(self, path, offset, data):
        write_at(path, offset, data)
        self.buf[offset:offset + len(data)] = data

    def sha256(self):
        return hashlib.sha256(self.buf).hexdigest()

    def nonzero(self, block=64 * 1024):
        zero = bytes(block)
        return sum(block for i in range(0, len(self.buf), block) if self.buf[i:i + block] != zero)


class Plays:
    def __init__(self, playbook, tmp_path):
        self.pb = playbook
        self.tmp = str(tmp_path)
        self.n = 0
        self.inventory = playbook.inventory("""
        [hypervisors]
        lvmhost ansible_host=127.0.0.1 ansible_port=%d ansible_user=root ansible_ssh_private_key_file=%s %s

        [all:vars]
        ansible_python_interpreter=%s
        """ % (PORT, KEY, "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
               "-o IdentitiesOnly=yes' ansible_python_interpreter=%s" % (KNOWN_HOSTS, HV_PYTHON), HV_PYTHON))
        playbook.env["ANSIBLE_PIPELINING"] = "1"
        self.repo = os.path.join(self.tmp, "repo")
        os.makedirs(self.repo, exist_ok=True)

    def run(self, name, extra, expect_rc=0, check=False):
        self.n += 1
        result_file = os.path.join(self.tmp, "result-%d.json" % self.n)
        extra = dict(extra, result_file=result_file)
        t0 = time.time()
        res = self.pb.run(os.path.join(PLAYBOOKS, name), self.inventory, extra, expect_rc=expect_rc,
                          args=["--check"] if check else [])
        print("playbook %d %s %s: %.1fs" % (self.n, name, extra.get("backup_id", len(extra.get("steps", []))),
                                            time.time() - t0))
        assert os.path.exists(result_file), "no result file from %s:\n%s" % (name, res.output[-6000:])
        with open(result_file) as fh:
            return json.load(fh), res

    def steps(self, *steps):
        """Run (module, args[, check]) steps in one play; their results, in order."""
        steps = [{"module": s[0], "args": s[1], "check": bool(s[2:] and s[2])} for s in steps]
        return self.run("lvm_steps.yml", {"steps": steps})[0]

    def backup(self, vm, volumes, backup_id, cow_size="25%", expect_rc=0, overflow_write=""):
        return self.run("lvm_backup.yml", {"vm": vm, "volumes": volumes, "backup_id": backup_id, "repo": self.repo,
                                           "cow_size": cow_size, "ssh_args": SSH_ARGS,
                                           "overflow_write": overflow_write}, expect_rc=expect_rc)


@pytest.fixture
def lvname(lvmhost):
    """A unique LV name prefix; every LV of vg0 starting with it is removed afterwards."""
    prefix = "vmbt%s" % uuid.uuid4().hex[:6]
    yield prefix
    names = sorted(n for n in lvs() if n.startswith(prefix))
    # snapshots before their origins
    names.sort(key=lambda n: "-vmbackup-" not in n)
    if names:
        on_host("lvremove -f %s" % " ".join("vg0/%s" % n for n in names), check=False)


def test_full_backups_change_restore_each(lvmhost, playbook, tmp_path, lvname):
    plays = Plays(playbook, tmp_path)
    lv = "/dev/vg0/%s" % lvname
    on_host("lvcreate -q -y -L %db -n %s vg0 && dd if=/dev/zero of=%s bs=1M count=%d oflag=direct status=none"
            % (LV_SIZE, lvname, lv, LV_SIZE // MiB))
    rnd = random.Random(5)
    model = Model(LV_SIZE)
    model.write(lv, 0, rnd.randbytes(4 * MiB))
    model.write(lv, 16 * MiB, rnd.randbytes(4 * MiB))
    model.write(lv, 24 * MiB, bytes(4 * MiB))                    # explicit zeroes
    model.write(lv, 40 * MiB, rnd.randbytes(4 * MiB))
    model.write(lv, LV_SIZE - MiB, rnd.randbytes(MiB))
    sha1 = model.sha256()
    nonzero1 = model.nonzero()
    assert lv_sha256(lv) == sha1

    res1, _res = plays.backup("lvmvm", [lv], ID1)
    snap = res1["snap"]["volumes"][0]
    assert res1["snap"]["changed"] and snap["thin"] is False and snap["exists"] and snap["active"]
    assert snap["path"] == "/dev/vg0/%s-vmbackup-%s" % (lvname, ID1)
    assert snap["cow_size"] == 16 * MiB and snap["virtual_size"] == LV_SIZE
    assert res1["checked"]["volumes"][0]["invalid"] is False
    assert res1["commit"]["changed"] and res1["removed"]["changed"]
    assert vmbackup_snapshots() == []

    # change it: new data in a written region, a data region zeroed, a new region
    model.write(lv, 16 * MiB, rnd.randbytes(2 * MiB))
    model.write(lv, 40 * MiB, bytes(4 * MiB))
    model.write(lv, 50 * MiB, rnd.randbytes(4 * MiB))
    sha2 = model.sha256()
    nonzero2 = model.nonzero()
    assert lv_sha256(lv) == sha2 != sha1

    res2, _res = plays.backup("lvmvm", [lv], ID2)
    assert res2["commit"]["changed"]
    assert vmbackup_snapshots() == []

    # bytes stored stay close to the non-zero data
    for res, nonzero in ((res1, nonzero1), (res2, nonzero2)):
        stored = res["xfer"]["results"][0]["stored_bytes"]
        manifest = res["commit"]["manifest"]
        assert manifest["disks"][0]["backend"] == "lvm" and manifest["status"] == "complete"
        print("LV %d MiB, non-zero %.1f MiB, stored %.2f MiB, sent %.2f MiB"
              % (LV_SIZE // MiB, nonzero / MiB, stored / MiB, res["xfer"]["results"][0]["bytes_sent"] / MiB))
        assert nonzero <= stored <= nonzero + 2 * MiB, (stored, nonzero)

    # restore each backup to a new LV
    restores = [{"backup_id": ID1, "name": "%s-r1" % lvname}, {"backup_id": ID2, "name": "%s-r2" % lvname}]
    rest, _res = plays.run("lvm_restore.yml",
                           {"vm": "lvmvm", "repo": plays.repo, "vg": "vg0", "restores": restores, "ssh_args": SSH_ARGS})
    assert [c["created"] for c in rest["created"]["results"]] == [True, True]
    assert [c["size"] for c in rest["created"]["results"]] == [LV_SIZE, LV_SIZE]
    assert lv_sha256("/dev/vg0/%s-r1" % lvname) == sha1
    assert lv_sha256("/dev/vg0/%s-r2" % lvname) == sha2

    # restoring again refuses the existing LVs (no force): nothing is overwritten
    r1 = {"vg": "vg0", "name": "%s-r1" % lvname, "size": LV_SIZE}
    again, kept, gone, refused = plays.steps(
        ("lvm_volume", r1), ("lvm_volume", dict(r1, force=True)),
        ("lvm_volume", {"vg": "vg0", "name": r1["name"], "state": "absent"}),
        ("lvm_volume", {"vg": "vg0", "name": lvname, "state": "absent"}))
    assert again["failed"] and "already exists" in again["msg"] and "force=true" in again["msg"]
    assert not kept.get("failed") and kept["changed"] is False and kept["created"] is False
    assert gone["changed"] and gone["removed"]
    assert refused["failed"] and "not created by vmbackup" in refused["msg"]
    assert lvname in lvs()


def test_snapshot_check_apply_idempotent_thin_and_too_large(lvmhost, playbook, tmp_path, lvname):
    plays = Plays(playbook, tmp_path)
    lv, big, pool, thin = ("/dev/vg0/%s%s" % (lvname, s) for s in ("", "-big", "-pool", "-thin"))
    on_host("lvcreate -q -y -L 64m -n {n} vg0 && lvcreate -q -y -L 1g -n {n}-big vg0 && "
            "lvcreate -q -y -L 64m -T vg0/{n}-pool && lvcreate -q -y -V 64m -T vg0/{n}-pool -n {n}-thin"
            .format(n=lvname))
    free = int(json.loads(on_host("vgs --reportformat json --units b --nosuffix -o vg_free vg0"))
               ["report"][0]["vg"][0]["vg_free"])
    args = {"volumes": [lv, "vg0/%s-thin" % lvname], "snapshot": ID1, "size": "32M"}

    too = {"volumes": [lv, big], "snapshot": ID2, "size": "100%"}
    before = sorted(lvs())
    res = plays.steps(
        # check, apply, idempotent check, idempotent apply, checked
        ("lvm_snapshot", args, True), ("lvm_snapshot", args), ("lvm_snapshot", args, True), ("lvm_snapshot", args),
        ("lvm_snapshot", dict(args, state="checked")),
        # a snapshot too large for the VG's free space fails before creating anything
        ("lvm_snapshot", too, True), ("lvm_snapshot", too))
    checked, applied, check2, apply2, ok, too_check, too_apply = res
    assert checked["changed"] and not checked.get("failed") and checked["volumes"][0]["exists"] is False
    assert applied["changed"], applied
    thick, thinv = applied["volumes"]
    assert (thick["thin"], thick["cow_size"]) == (False, 32 * MiB)
    assert thinv["thin"] is True and thinv["cow_size"] is None and thinv["active"] and thinv["pool"] == "%s-pool" % lvname
    assert thinv["device"] == "/dev/mapper/vg0-%s--thin--vmbackup--%s" % (lvname, ID1)
    assert check2["changed"] is False and apply2["changed"] is False
    assert not ok.get("failed") and [v["invalid"] for v in ok["volumes"]] == [False, False]
    for r in (too_check, too_apply):
        assert r["failed"] and "Nothing was created" in r["msg"], r
        assert "volume group vg0 needs" in r["msg"] and "(%d bytes) free" % (free - 32 * MiB) in r["msg"], r["msg"]
        assert "vg0/%s-big 1.00 GiB" % lvname in r["msg"]
    now = lvs()
    assert sorted(now) == sorted(before + [thick["name"], thinv["name"]])
    assert now[thick["name"]]["lv_tags"] == "vmbackup"
    assert on_host("test -b %s && test -b %s && echo ok" % (thick["path"], thinv["path"])).strip() == "ok"

    # snapshot=all removes leftovers of any ID, never other LVs; then absent changes nothing
    on_host("lvcreate -q -y -s -L 8m -n %s-vmbackup-mine vg0/%s" % (lvname, lvname))   # not tagged: not ours
    third, removed, again = plays.steps(
        ("lvm_snapshot", dict(args, snapshot=ID3)),
        ("lvm_snapshot", dict(args, snapshot="all", state="absent")),
        ("lvm_snapshot", dict(args, state="absent")))
    assert third["changed"] and removed["changed"] and len(removed["actions"]) == 1
    assert removed["actions"][0].count("-vmbackup-") == 4
    assert again["changed"] is False
    assert vmbackup_snapshots() == ["%s-vmbackup-mine" % lvname]


def test_overflow_during_transfer_is_not_committed(lvmhost, playbook, tmp_path, lvname):
    plays = Plays(playbook, tmp_path)
    lv = "/dev/vg0/%s" % lvname
    on_host("lvcreate -q -y -L 64m -n %s vg0 && dd if=/dev/urandom of=%s bs=1M count=8 oflag=direct status=none"
            % (lvname, lv))
    # 8 MiB of copy-on-write space; 24 MiB written into the origin between snapshot and transfer
    res, run = plays.backup("lvmvm", [lv], ID1, cow_size="8M", expect_rc=2, overflow_write=lv)
    assert res["snap"]["volumes"][0]["cow_size"] == 8 * MiB
    assert res["checked"]["failed"], res["checked"]
    assert "invalid" in res["checked"]["msg"] and "must not be marked complete" in res["checked"]["msg"]
    assert res["checked"]["volumes"][0]["invalid"] is True
    assert res["commit"] is None and res["aborted"]["changed"]
    assert res["removed"]["changed"]
    first = res["xfer"]["results"][0]
    print("transfer of the overflowing snapshot: %s"
          % (("failed: " + first.get("msg", "")[:300]) if first.get("failed") else "completed"))
    assert vmbackup_snapshots() == []
    vm_dir = os.path.join(plays.repo, "lvmvm")
    assert not os.path.isdir(vm_dir) or os.listdir(vm_dir) == [], os.listdir(vm_dir)
