"""Parallel backups (issue 8): several VMs on two hypervisors in one run, bounded per hypervisor.

hv1 and hv2 are two sshd endpoints of this machine (tests/testbed/sshd.sh) in front of the one
local libvirtd, so each hypervisor is told which VMs are its own (vmbackup_vms as a host
variable). The VMs are shut off: the bound is on our backups, and four TCG guests running on
two cores would only slow the test down.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import subprocess

import pytest

from conftest import HV_PYTHON, TB, image_sha256

import domains  # tests/testbed/domains.py

BACKUP = "vmbackup.libvirt.backup"
DATA_MIB = 96

pytestmark = pytest.mark.usefixtures("libvirt")


def inventory(assignments):
    key = os.path.join(TB, "ssh", "id_ed25519")
    known = os.path.join(TB, "ssh", "known_hosts")
    lines = ["[hypervisors]"]
    for name, (address, vms) in assignments.items():
        lines.append(" ".join([
            name, "ansible_host=%s" % address, "ansible_user=root", "ansible_ssh_private_key_file=%s" % key,
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % known,
            "vmbackup_ssh_private_key=%s" % key, "vmbackup_known_hosts=%s" % known,
            "vmbackup_vms=%s" % ",".join(vms)]))
    lines += ["", "[all:vars]", "ansible_python_interpreter=%s" % HV_PYTHON]
    return "\n".join(lines) + "\n"


def filled_image(path, seed):
    """A qcow2 whose first DATA_MIB MiB hold a byte pattern (data the transfer must carry)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "256M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P %d 0 %dM" % (seed, DATA_MIB), path],
                   check=True, capture_output=True)


@pytest.fixture
def vms(tmp_path):
    made = []

    def make(name, seed, broken=False):
        domains.destroy_guest(name) if domains.domain_exists(name) else None
        path = str(tmp_path / ("%s-vda.qcow2" % name))
        filled_image(path, seed)
        domains.define_guest(name, [{"target": "vda", "format": "qcow2", "path": path}], running=False, replace=True)
        made.append(name)
        if broken:
            os.unlink(path)  # the VM's disk is gone: its backup must fail, alone
        return path

    yield make
    for name in made:
        if domains.domain_exists(name):
            domains.virsh("undefine", name, check=False)


def intervals(results):
    parse = datetime.datetime.fromisoformat
    return [(parse(r["started"]), parse(r["finished"]), r["hypervisor"], r["vm"]) for r in results]


def most_at_once(spans):
    events = sorted([(s, 1) for s, _e in spans] + [(e, -1) for _s, e in spans], key=lambda ev: (ev[0], ev[1]))
    now = peak = 0
    for _t, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_four_vms_on_two_hypervisors_limit_two_and_one_failure(vms, playbook, sshd, tmp_path):
    repo = str(tmp_path / "repo")
    slots = str(tmp_path / "slots")
    sources = {}
    for i, name in enumerate(["it-par1", "it-par2", "it-par3", "it-par4"]):
        sources[name] = vms(name, seed=0x11 * (i + 1))
    vms("it-par-broken", seed=0x66, broken=True)
    inv = playbook.inventory(inventory({
        "hv1": ("127.0.0.11", ["it-par1", "it-par2"]),
        "hv2": ("127.0.0.12", ["it-par3", "it-par4", "it-par-broken"]),
    }))
    res = playbook.run(BACKUP, inv, expect_rc=2, extra={
        "vmbackup_repository": repo, "vmbackup_limit_per_hypervisor": 2, "vmbackup_limit_per_node": 3,
        "vmbackup_slot_dir": slots})

    # The run fails, naming the one VM whose backup failed; the other four are complete.
    assert "Backup failed for it-par-broken on hv2" in res.output
    assert "4 of 5 VMs backed up" in res.output
    with open(os.path.join(repo, "report-hv2-latest.json")) as fh:
        hv2 = {r["vm"]: r for r in json.load(fh)["results"]}
    assert hv2["it-par-broken"]["result"] == "failed"
    assert not glob.glob(os.path.join(repo, "it-par-broken", "*", "manifest.json"))
    done = []
    for host in ("hv1", "hv2"):
        with open(os.path.join(repo, "report-%s-latest.json" % host)) as fh:
            done += [r for r in json.load(fh)["results"] if r["result"] == "ok"]
    assert sorted(r["vm"] for r in done) == sorted(sources)
    for r in done:
        stored = os.path.join(repo, r["vm"], r["backup_id"], "vda.qcow2")
        assert image_sha256(stored) == image_sha256(sources[r["vm"]]), r["vm"]

    # They overlapped, within the limits: at most 2 per hypervisor, 3 in all.
    spans = intervals(done)
    for host in ("hv1", "hv2"):
        assert most_at_once([(s, e) for s, e, h, _vm in spans if h == host]) <= 2
    overall = most_at_once([(s, e) for s, e, _h, _vm in spans])
    assert 2 <= overall <= 3
    wall = (max(e for _s, e, _h, _v in spans) - min(s for s, _e, _h, _v in spans)).total_seconds()
    total = sum((e - s).total_seconds() for s, e, _h, _v in spans)
    t0 = min(s for s, _e, _h, _v in spans)
    print(sorted(((s - t0).total_seconds(), (e - t0).total_seconds(), h, v) for s, e, h, v in spans))
    print("4 backups: %.1fs wall, %.1fs summed, at most %d at once" % (wall, total, overall))
    assert wall < total, (wall, total)
    # Every slot was given back (the PATH.guard files of the flock that guards each change of
    # a lock stay, by design: removing them would let two waiters lock two different files).
    assert [p for p in glob.glob(os.path.join(slots, "*")) if not p.endswith(".guard")] == []


def test_limit_one_backs_up_one_vm_at_a_time_and_prunes_after_each_backup(vms, playbook, sshd, tmp_path):
    repo = str(tmp_path / "repo")
    for i, name in enumerate(["it-seq1", "it-seq2"]):
        vms(name, seed=0x21 + i)
    inv = playbook.inventory(inventory({"hv1": ("127.0.0.11", ["it-seq1", "it-seq2"])}))
    extra = {"vmbackup_repository": repo, "vmbackup_limit_per_hypervisor": 1, "vmbackup_backup_type": "full",
             "vmbackup_keep_last": 1, "vmbackup_slot_dir": str(tmp_path / "slots")}
    playbook.run(BACKUP, inv, extra=extra)
    with open(os.path.join(repo, "report-hv1-latest.json")) as fh:
        first = {r["vm"]: r for r in json.load(fh)["results"]}
    assert [r["result"] for r in first.values()] == ["ok", "ok"]
    assert most_at_once([(s, e) for s, e, _h, _vm in intervals(first.values())]) == 1

    # A second full backup with keep_last=1: each VM's first backup goes, right after the second.
    playbook.run(BACKUP, inv, extra=extra)
    with open(os.path.join(repo, "report-hv1-latest.json")) as fh:
        second = {r["vm"]: r for r in json.load(fh)["results"]}
    for vm, result in second.items():
        assert result["pruned"] == [first[vm]["backup_id"]]
        assert sorted(os.listdir(os.path.join(repo, vm))) == [result["backup_id"]]
