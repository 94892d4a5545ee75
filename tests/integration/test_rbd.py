"""Ceph RBD disks end to end: rbd_export on hypervisor hv1 (real sshd), rbd_transfer on the
backup node (localhost, pulling over SSH), real ansible-playbook runs, the test bed's Ceph.

Playbooks run the modules with ``ignore_errors`` and write every registered result to a
JSON file, so one ansible-playbook run covers several steps and the test asserts on data.
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
import yaml

from conftest import HV_PYTHON, TB, VENV_BIN, image_sha256, ssh_inventory
from conftest import testbed as run_testbed

MiB = 1024 * 1024
OBJ = 4 * MiB  # default RBD object size
CEPH = os.path.join(TB, "ceph")
CONF = os.path.join(CEPH, "ceph.conf")
ADMIN_KEYRING = os.path.join(CEPH, "ceph.client.admin.keyring")
VMB_KEYRING = os.path.join(CEPH, "ceph.client.vmbackup.keyring")
SSH = os.path.join(TB, "ssh")
CEPH_ARGS = {"ceph_conf": CONF, "ceph_id": "vmbackup", "ceph_keyring": VMB_KEYRING}
SSH_ARGS = {"ssh_host": "127.0.0.11", "ssh_private_key": os.path.join(SSH, "id_ed25519"),
            "known_hosts": os.path.join(SSH, "known_hosts")}


@pytest.fixture(scope="session")
def ceph():
    run_testbed("ceph.sh", "up", timeout=240)
    return CEPH


# --------------------------------------------------------------------------
# helpers

def rbd(*args, data=None, check=True):
    cp = subprocess.run(["timeout", "120", "rbd", "--conf", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING]
                        + [str(a) for a in args], input=data, capture_output=True, timeout=150, check=False)
    if check and cp.returncode != 0:
        raise AssertionError("rbd %s failed rc=%s: %s"
                             % (" ".join(map(str, args)), cp.returncode, cp.stderr.decode(errors="replace")))
    return cp.stdout.decode(errors="replace")


def rbd_sha(spec):
    proc = subprocess.Popen(["rbd", "--conf", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING,
                             "export", "--no-progress", spec, "-"], stdout=subprocess.PIPE)
    digest = hashlib.sha256()
    for block in iter(lambda: proc.stdout.read(4 * MiB), b""):
        digest.update(block)
    assert proc.wait() == 0, "rbd export %s failed" % spec
    return digest.hexdigest()


def snaps(image):
    return [s["name"] for s in json.loads(rbd("snap", "ls", "--format", "json", image) or "[]")]


def ours(image):
    return sorted(s for s in snaps(image) if s.startswith("vmbackup-"))


def file_sha(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def qemu_io_writes(image, writes):
    """Write (offset, length, pattern byte) through QEMU's rbd driver (one qemu-io process)."""
    argv = ["qemu-io", "-f", "raw"]
    for off, length, pattern in writes:
        argv += ["-c", "write -P %d %d %d" % (pattern, off, length)]
    url = "rbd:%s:conf=%s:id=admin:keyring=%s" % (image, CONF, ADMIN_KEYRING)
    subprocess.run(argv + [url], check=True, capture_output=True, timeout=120)


class Plays:
    """Runs a list of tasks against hv1 (transfers delegated to localhost) and returns their results."""

    def __init__(self, playbook, tmp_path):
        self.pb = playbook
        self.dir = str(tmp_path)
        self.inventory = playbook.inventory(ssh_inventory() + """
        [backup_nodes]
        localhost ansible_connection=local ansible_python_interpreter=%s
        """ % HV_PYTHON)
        self.n = 0
        # one SSH round trip per task instead of four or five (sftp put, chmod, run, rm)
        self.env = dict(playbook.env, ANSIBLE_PIPELINING="1")

    def run(self, tasks):
        t0 = time.time()
        try:
            return self._run(tasks)
        finally:
            print("playbook %d (%s): %.1fs" % (self.n, ", ".join(t[0] for t in tasks), time.time() - t0))

    def _run(self, tasks):
        """tasks: list of (name, module, args, options); returns {name: result}; options may hold
        delegate (bool), check_mode, diff."""
        self.n += 1
        out = os.path.join(self.dir, "results-%d.json" % self.n)
        body = []
        names = []
        for name, module, args, opts in tasks:
            task = {"name": name, "vmbackup.libvirt.%s" % module: args, "register": "r_%s" % name,
                    "ignore_errors": True}
            if opts.get("delegate"):
                task["delegate_to"] = "localhost"
            if opts.get("check_mode"):
                task["check_mode"] = True
            if opts.get("diff"):
                task["diff"] = True
            body.append(task)
            names.append(name)
        collect = "{{ {%s} | to_json }}" % ", ".join("'%s': r_%s" % (n, n) for n in names)
        body.append({"name": "collect", "ansible.builtin.copy": {"content": collect, "dest": out},
                     "delegate_to": "localhost"})
        path = os.path.join(self.dir, "play-%d.yml" % self.n)
        with open(path, "w") as fh:
            yaml.safe_dump([{"hosts": "hv1", "gather_facts": False, "tasks": body}], fh, sort_keys=False)
        cp = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory, path],
                            capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=900, check=False)
        if cp.returncode != 0 or not os.path.exists(out):
            raise AssertionError("ansible-playbook failed (rc=%s):\n%s\n%s" % (cp.returncode, cp.stdout[-8000:],
                                                                               cp.stderr[-4000:]))
        with open(out) as fh:
            return json.load(fh)


def export(name, image, snapshot, **args):
    opts = {k: args.pop(k) for k in ("check_mode", "diff") if k in args}
    return (name, "rbd_export", dict(CEPH_ARGS, image=image, snapshot=snapshot, **args), opts)


def transfer(name, **args):
    return (name, "rbd_transfer", dict(CEPH_ARGS, **dict(SSH_ARGS, **args)), {"delegate": True})


def backup_tasks(image, bid, parent, repo_file, from_snapshot=None):
    """What the backup role does for one RBD disk: snapshot, pull, keep only the newest snapshot."""
    return [
        export("snap", image, bid, parent=parent),
        transfer("pull", direction="backup", image=image, snapshot=bid, repo_file=repo_file,
                 from_snapshot=from_snapshot or "{{ r_snap.from_snapshot | default(omit, true) }}"),
        export("rotate", image, bid, state="rotated"),
    ]


def assert_ok(result, what):
    assert not result.get("failed"), "%s failed: %s" % (what, result.get("msg"))


@pytest.fixture
def image_name(ceph):
    created = []

    def make(tag):
        name = "rbd/it-%s-%s" % (tag, uuid.uuid4().hex[:6])
        created.append(name)
        return name

    yield make
    for name in created:
        rbd("snap", "purge", "--no-progress", name, check=False)
        rbd("rm", "--no-progress", name, check=False)


def make_image(image, size_objects=16, zero_objects=(5, 12), seed=1):
    """An image of random data with whole zero objects (holes) and a zero 1 MiB inside object 2."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size_objects * OBJ))
    for obj in zero_objects:
        data[obj * OBJ:(obj + 1) * OBJ] = bytes(OBJ)
    data[2 * OBJ + MiB:2 * OBJ + 2 * MiB] = bytes(MiB)
    rbd("import", "--no-progress", "-", image, data=bytes(data))
    return size_objects * OBJ


# --------------------------------------------------------------------------
# tests

def test_full_two_incrementals_fallback_and_restores(ceph, sshd, playbook, tmp_path, image_name):
    plays = Plays(playbook, tmp_path)
    image = image_name("src")
    size = make_image(image)
    rbd("snap", "create", "--no-progress", image + "@manual-keep")   # not ours: must survive
    repo = tmp_path / "repo" / "vm1"
    ids = ["20261122T010000Z", "20261122T020000Z", "20261122T030000Z", "20261122T040000Z"]
    files = {}
    shas = {}
    results = {}

    def backup(i, parent, from_snapshot=None):
        bdir = repo / ids[i]
        bdir.mkdir(parents=True)
        files[ids[i]] = str(bdir / "vda.rbddiff")
        shas[ids[i]] = rbd_sha(image)   # the image at the backup's instant (nothing writes in between)
        res = plays.run(backup_tasks(image, ids[i], parent, files[ids[i]], from_snapshot))
        for step in ("snap", "pull", "rotate"):
            assert_ok(res[step], "%s of backup %s" % (step, ids[i]))
        results[ids[i]] = res
        return res

    # 1. full: only allocated extents are sent (the 2 zero objects are holes)
    full = backup(0, None)["pull"]
    assert full["mode"] == "full" and full["from_snapshot"] is None
    assert full["bytes_sent"] < size - 2 * OBJ + MiB
    assert full["sha256"] == file_sha(files[ids[0]])

    # 2. change 5% (qemu-io, 52 x 64 KiB at distinct offsets in data objects), incremental
    rng = random.Random(2)
    data_objects = [o for o in range(16) if o not in (5, 12)]
    offsets = sorted(rng.sample([o * OBJ + k * 65536 for o in data_objects for k in range(64)], 52))
    changed = 52 * 65536
    qemu_io_writes(image, [(off, 65536, 1 + i % 250) for i, off in enumerate(offsets)])
    res = backup(1, ids[0])
    inc = res["pull"]
    assert res["snap"]["mode"] == "incremental" and res["snap"]["from_snapshot"] == "vmbackup-" + ids[0]
    assert inc["mode"] == "incremental" and inc["from_snapshot"] == "vmbackup-" + ids[0]
    assert abs(inc["bytes_sent"] - changed) <= changed * 0.10 + MiB, inc
    assert abs(inc["stored_bytes"] - changed) <= changed * 0.10 + MiB, inc
    assert ours(image) == ["vmbackup-" + ids[1]]

    # 3. change again (rbd bench, random 64 KiB writes), incremental
    rbd("bench", "--io-type", "write", "--io-size", "64K", "--io-total", "2M", "--io-pattern", "rand",
        "--io-threads", "4", image)
    inc2 = backup(2, ids[1])["pull"]
    assert inc2["mode"] == "incremental"
    assert inc2["bytes_sent"] < size / 4, inc2   # the changes, not the image (holes may round up to objects)

    # 4. the previous backup snapshot deleted by hand: the next backup is full and says why
    rbd("snap", "rm", "--no-progress", "%s@vmbackup-%s" % (image, ids[2]))
    res = backup(3, ids[2], from_snapshot="vmbackup-" + ids[2])
    assert res["snap"]["mode"] == "full" and "vmbackup-%s" % ids[2] in res["snap"]["fallback_reason"]
    assert res["pull"]["mode"] == "full" and "no longer on RBD image" in res["pull"]["fallback_reason"]
    assert sorted(snaps(image)) == sorted(["manual-keep", "vmbackup-" + ids[3]])

    # 5. restore each backup into a new image, and into raw and qcow2 files on hv1
    def chain(*bids):
        return [{"path": files[b], "sha256": results[b]["pull"]["sha256"]} for b in bids]

    chains = {"b1": chain(ids[0]), "b2": chain(ids[0], ids[1]), "b3": chain(*ids[:3]), "b4": chain(ids[3])}
    targets = {k: image_name("restore-" + k) for k in chains}
    raw = str(tmp_path / "hv1" / "restored.raw")
    qcow = str(tmp_path / "hv1" / "restored.qcow2")
    tasks = [transfer(k, direction="restore", image=targets[k], chain=c) for k, c in chains.items()]
    tasks.append(transfer("raw", direction="restore", target_kind="file", image=raw, chain=chains["b3"]))
    tasks.append(transfer("qcow", direction="restore", target_kind="file", format="qcow2", image=qcow,
                          chain=chains["b2"]))
    tasks.append(transfer("again", direction="restore", image=targets["b1"], chain=chains["b1"]))
    res = plays.run(tasks)
    for k, bid in zip(("b1", "b2", "b3", "b4"), ids):
        assert_ok(res[k], "restore " + k)
        assert rbd_sha(targets[k]) == shas[bid], "restored %s differs from the image at %s" % (k, bid)
        assert snaps(targets[k]) == ["vmbackup-" + (ids[2] if k == "b3" else bid)]
    assert res["b3"]["bytes_sent"] == sum(os.path.getsize(c["path"]) for c in chains["b3"])
    assert_ok(res["raw"], "restore to a raw file")
    assert file_sha(raw) == shas[ids[2]]
    assert_ok(res["qcow"], "restore to a qcow2 file")
    assert image_sha256(qcow, "qcow2") == shas[ids[1]]
    assert res["again"]["failed"] and "already exists" in res["again"]["msg"]
    assert not [f for f in os.listdir(str(tmp_path / "repo")) if f.startswith(".vmbackup-restore-")]


def test_rbd_export_check_apply_idempotent_and_others_snapshots(ceph, sshd, playbook, tmp_path, image_name):
    plays = Plays(playbook, tmp_path)
    image = image_name("idem")
    rbd("create", "--size", "8M", image)
    rbd("snap", "create", "--no-progress", image + "@vmbackup-20261120T000000Z")
    rbd("snap", "create", "--no-progress", image + "@weekly")
    bid = "20261122T013000Z"
    res = plays.run([
        export("check", image, bid, check_mode=True, diff=True),
        export("apply", image, bid, diff=True),
        export("check2", image, bid, check_mode=True),
        export("apply2", image, bid),
        export("rot_check", image, bid, state="rotated", check_mode=True, diff=True),
        export("rot", image, bid, state="rotated"),
        export("rot2", image, bid, state="rotated"),
    ])
    for key in res:
        assert_ok(res[key], key)
    assert [res[k]["changed"] for k in ("check", "apply", "check2", "apply2")] == [True, True, False, False]
    assert res["check"]["diff"]["after"]["snapshots"] == ["vmbackup-20261120T000000Z", "vmbackup-" + bid]
    assert res["apply"]["previous"] == "vmbackup-20261120T000000Z" and res["apply"]["size"] == 8 * MiB
    assert [res[k]["changed"] for k in ("rot_check", "rot", "rot2")] == [True, True, False]
    assert res["rot_check"]["removed"] == ["vmbackup-20261120T000000Z"]
    assert sorted(snaps(image)) == ["vmbackup-" + bid, "weekly"]


def test_bad_input_clear_errors_and_no_snapshot_left(ceph, sshd, playbook, tmp_path, image_name):
    plays = Plays(playbook, tmp_path)
    image = image_name("bad")
    rbd("create", "--size", "8M", image)
    dead = str(tmp_path / "dead.conf")
    with open(CONF) as src, open(dead, "w") as dst:
        for line in src:
            if line.startswith("mon host"):
                line = "mon host = [v2:127.0.0.1:3399,v1:127.0.0.1:6799]\n"   # nothing listens there
            dst.write(line)
    bid = "20261122T050000Z"
    repo = tmp_path / "repo"
    repo.mkdir()
    good = str(repo / "good.rbddiff")
    damaged = str(repo / "damaged.rbddiff")
    rbd("snap", "create", "--no-progress", "%s@vmbackup-%s" % (image, bid))
    rbd("export-diff", "--no-progress", "%s@vmbackup-%s" % (image, bid), good)
    rbd("snap", "rm", "--no-progress", "%s@vmbackup-%s" % (image, bid))
    with open(good, "rb") as fh:
        content = fh.read()
    good_sha = hashlib.sha256(content).hexdigest()
    with open(damaged, "wb") as fh:
        fh.write(content[:-1] + b"x")
    target = image_name("never")
    t0 = time.time()
    res = plays.run([
        export("pool", "nopool-%s/disk" % uuid.uuid4().hex[:4], bid),
        export("image", "rbd/missing-%s" % uuid.uuid4().hex[:6], bid),
        export("keyring", image, bid, ceph_keyring=ADMIN_KEYRING),
        export("dead", image, bid, ceph_conf=dead, ceph_timeout=5),
        transfer("pull_dead", direction="backup", image=image, snapshot=bid, repo_file=str(repo / "x.rbddiff"),
                 ceph_conf=dead, ceph_timeout=5),
        transfer("pull_nosnap", direction="backup", image=image, snapshot=bid, repo_file=str(repo / "y.rbddiff")),
        transfer("damaged", direction="restore", image=target, chain=[{"path": damaged, "sha256": good_sha}]),
        transfer("damaged_ok_sha", direction="restore", image=target,
                 chain=[{"path": damaged, "sha256": hashlib.sha256(content[:-1] + b"x").hexdigest()}]),
    ])
    elapsed = time.time() - t0
    for key, result in res.items():
        assert result.get("failed"), "%s did not fail: %s" % (key, result)
    assert "does not exist" in res["pool"]["msg"] and "pool 'nopool-" in res["pool"]["msg"]
    assert "image 'rbd/missing-" in res["image"]["msg"] and "does not exist" in res["image"]["msg"]
    assert image in res["keyring"]["msg"] and "refused the credentials of client.vmbackup" in res["keyring"]["msg"]
    for key in ("dead", "pull_dead"):
        assert image in res[key]["msg"] and "did not answer within 5s" in res[key]["msg"], res[key]["msg"]
    assert "take it first with vmbackup.libvirt.rbd_export" in res["pull_nosnap"]["msg"]
    assert "is damaged" in res["damaged"]["msg"] and "Nothing was written" in res["damaged"]["msg"]
    assert "unknown record tag" in res["damaged_ok_sha"]["msg"] or "after the end" in res["damaged_ok_sha"]["msg"]
    assert elapsed < 90, "bad-input playbook took %.0fs" % elapsed
    assert ours(image) == []
    assert rbd("info", target, check=False) == ""   # never created
    assert not os.listdir(str(repo)) or sorted(os.listdir(str(repo))) == ["damaged.rbddiff", "good.rbddiff"]
