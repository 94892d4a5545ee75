"""File-backed VMs backed up and restored end to end, with real guests, libvirt, sshd and ansible-playbook."""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import image_sha256, local_inventory, ssh_inventory

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"

pytestmark = pytest.mark.usefixtures("libvirt")


def manifests(repo, vm):
    out = []
    for path in sorted(glob.glob(os.path.join(repo, vm, "*", "manifest.json"))):
        with open(path) as fh:
            out.append(json.load(fh))
    return out


def report(repo, host):
    with open(os.path.join(repo, "report-%s-latest.json" % host)) as fh:
        return json.load(fh)["results"]


def chain_of(vm):
    return dict(domains.domblklist(vm))


def cleanup_vm(name):
    """Destroy a test VM and every file it uses, overlays included.

    Not domains.destroy_guest(): a restored VM carries the source VM's test bed metadata,
    which would make it delete the source's files.
    """
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        for src in sources:
            stem = re.sub(r"\.vmbackup-.*\.qcow2$", "", src)
            for path in glob.glob(re.sub(r"\.(qcow2|raw)$", "", stem) + ".*"):
                os.unlink(path)


@pytest.fixture
def guest():
    created = []

    def make(name, disks, running=True):
        cleanup_vm(name)
        created.append(name)
        info = domains.define_guest(name, disks, running=running, replace=True)
        if running:
            domains.wait_agent(name, timeout=180)
        return info

    yield make
    for name in created:
        cleanup_vm(name)


def test_running_guest_full_then_two_incrementals_restore_each(guest, playbook, sshd, tmp_path):
    """The heart of the product, over real SSH: full + 2 incrementals of a running qcow2+raw guest."""
    vm = "it-run1"
    repo = str(tmp_path / "repo")
    guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 96},
               {"target": "vdb", "format": "raw", "size_mib": 48}])
    inv = playbook.inventory(ssh_inventory())
    base = {"vmbackup_vms": vm, "vmbackup_repository": repo}
    states = []
    written = [0]

    domains.guest_write(vm, "/dev/vda", 0, 6 * MiB, seed=1)
    domains.guest_write(vm, "/dev/vdb", 4 * MiB, 3 * MiB, seed=2)
    for step, writes in enumerate([[], [("/dev/vda", 32 * MiB, 8 * MiB, 3), ("/dev/vdb", 20 * MiB, 2 * MiB, 4)],
                                   [("/dev/vda", 64 * MiB, 4 * MiB, 5), ("/dev/vda", 8 * MiB, 2 * MiB, None)]]):
        size = 0
        for dev, off, length, seed in writes:
            domains.guest_write(vm, dev, off, length, seed=seed)
            size += length
        written.append(size)
        states.append({t: domains.guest_sha256(vm, "/dev/" + t) for t in ("vda", "vdb")})
        playbook.run(BACKUP, inv, base)
        # After every backup the VM runs on exactly one kept overlay of that backup, per disk.
        backup_id = manifests(repo, vm)[-1]["backup_id"]
        chain = chain_of(vm)
        for target in ("vda", "vdb"):
            assert chain[target].endswith(".vmbackup-%s.%s.qcow2" % (backup_id, target)), chain
        assert domains.domstate(vm) == "running"

    found = manifests(repo, vm)
    assert [m["type"] for m in found] == ["full", "incremental", "incremental"]
    assert found[1]["parent"] == found[0]["backup_id"] and found[2]["parent"] == found[1]["backup_id"]
    for m, size in zip(found[1:], written[2:]):
        # An incremental carries what the guest wrote, not the disk: within 10% + 1 MiB.
        assert m["bytes_sent"] <= size * 1.10 + MiB, (m["bytes_sent"], size)
        assert m["bytes_stored"] <= size * 1.10 + MiB, (m["bytes_stored"], size)
        assert m["bytes_sent"] >= size * 0.9
    results = report(repo, "hv1")
    assert results[0]["result"] == "ok" and results[0]["type"] == "incremental"

    # Restore each backup under a new name: the disks equal the guest's disks at that instant.
    local = playbook.inventory(local_inventory())
    for index, (m, state) in enumerate(zip(found, states)):
        name = "it-run1-r%d" % index
        cleanup_vm(name)
        try:
            extra = {"vmbackup_vm": vm, "vmbackup_backup": m["backup_id"], "vmbackup_restore_name": name,
                     "vmbackup_repository": repo}
            playbook.run(RESTORE, local, extra)
            restored = chain_of(name)
            assert restored["vda"].endswith("/%s-vda.qcow2" % name)
            assert restored["vdb"].endswith("/%s-vdb.raw" % name)
            assert image_sha256(restored["vda"], "qcow2") == state["vda"]
            assert image_sha256(restored["vdb"], "raw") == state["vdb"]
            if index == len(found) - 1:
                # A second identical restore changes nothing; check mode changes nothing either.
                again = playbook.run(RESTORE, local, extra)
                assert again.changed("hv-local") == 0
                checked = playbook.run(RESTORE, local, extra, check=True)
                assert checked.changed("hv-local") == 0
                # The restored VM boots and its agent answers.
                domains.virsh("start", name)
                domains.wait_agent(name, timeout=180)
                assert domains.guest_sha256(name, "/dev/vdb") == state["vdb"]
        finally:
            cleanup_vm(name)


def test_shut_off_vm_full_and_incremental(guest, playbook, tmp_path):
    vm = "it-off1"
    repo = str(tmp_path / "repo")
    info = guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 64},
                      {"target": "vdb", "format": "raw", "size_mib": 32}], running=False)
    vda, vdb = info.paths
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 5M", vda], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x6b 2M 3M", vdb], check=True, capture_output=True)
    inv = playbook.inventory(local_inventory())
    extra = {"vmbackup_vms": vm, "vmbackup_repository": repo}
    first = {"vda": image_sha256(vda, "qcow2"), "vdb": image_sha256(vdb, "raw")}
    playbook.run(BACKUP, inv, extra)
    chain = chain_of(vm)
    assert domains.domstate(vm) == "shut off"
    # The shut-off VM now points at its kept overlay; a write while off lands there.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x7c 10M 4M", chain["vda"]], check=True, capture_output=True)
    second = {"vda": image_sha256(chain["vda"], "qcow2"), "vdb": image_sha256(chain["vdb"], "qcow2")}
    playbook.run(BACKUP, inv, extra)
    found = manifests(repo, vm)
    assert [m["type"] for m in found] == ["full", "incremental"]
    assert found[1]["bytes_sent"] <= 4 * MiB * 1.1 + MiB
    # Each disk says why it was copied so (backup_transfers' reason), in the manifest.
    assert [d["reason"] for d in found[0]["disks"]] == ["first backup (no usable complete backup of the VM)"] * 2
    assert [d["reason"] for d in found[1]["disks"]] == ["changes since the parent backup %s" % found[0]["backup_id"]] * 2
    # Backing up without keeping overlays puts the VM back on its original files.
    playbook.run(BACKUP, inv, dict(extra, vmbackup_keep_overlay=False))
    assert chain_of(vm) == {"vda": vda, "vdb": vdb}
    # So the next backup is full, and the manifest and the VM's result say why.
    playbook.run(BACKUP, inv, extra)
    third, fourth = manifests(repo, vm)[-2:]
    assert fourth["type"] == "full" and fourth["parent"] is None
    why = {t: {"mode": "full", "reason": "the overlay of the parent backup %s was not kept on %s" % (third["backup_id"], t)}
           for t in ("vda", "vdb")}
    assert {d["target"]: {"mode": d["mode"], "reason": d["reason"]} for d in fourth["disks"]} == why
    assert report(repo, "hv-local")[0]["disk_modes"] == why
    for m, state in zip(found, (first, second)):
        name = "it-off1-r"
        try:
            playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_backup": m["backup_id"],
                                        "vmbackup_restore_name": name, "vmbackup_repository": repo})
            restored = chain_of(name)
            assert image_sha256(restored["vda"], "qcow2") == state["vda"]
            assert image_sha256(restored["vdb"], "raw") == state["vdb"]
        finally:
            cleanup_vm(name)


def test_restore_refuses_existing_name_unless_forced(guest, playbook, tmp_path):
    vm = "it-off2"
    repo = str(tmp_path / "repo")
    guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 16}], running=False)
    inv = playbook.inventory(local_inventory())
    playbook.run(BACKUP, inv, {"vmbackup_vms": vm, "vmbackup_repository": repo, "vmbackup_keep_overlay": False})
    # Same name, VM still there: refused, nothing changed.
    res = playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_repository": repo}, expect_rc=2)
    assert "VM %s already exists" % vm in res.output and "restore_force=true" in res.output
    assert domains.domstate(vm) == "shut off"
    # Forced: the definition and the disk are replaced in place.
    playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_repository": repo, "vmbackup_restore_force": True})
    assert domains.domstate(vm) == "shut off"


def test_missing_vm_and_unsupported_disk_fail_clearly(guest, playbook, tmp_path):
    repo = str(tmp_path / "repo")
    inv = playbook.inventory(local_inventory())
    res = playbook.run(BACKUP, inv, {"vmbackup_vms": "it-no-such-vm", "vmbackup_repository": repo}, expect_rc=2)
    assert "not found on any hypervisor" in res.output

    vm = "it-nbd1"
    guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 16}], running=False)
    xml = domains.virsh("dumpxml", "--inactive", vm).stdout
    disk = ("<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            "<source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>"
            "<target dev='vdc' bus='virtio'/></disk>")
    path = str(tmp_path / "nbd.xml")
    with open(path, "w") as fh:
        fh.write(xml.replace("</devices>", disk + "</devices>"))
    domains.virsh("define", path)
    res = playbook.run(BACKUP, inv, {"vmbackup_vms": vm, "vmbackup_repository": repo}, expect_rc=2)
    assert "vdc: network disk protocol 'nbd' is not supported" in res.output
    assert manifests(repo, vm) == []
    # Skipping it backs up the rest.
    playbook.run(BACKUP, inv, {"vmbackup_vms": vm, "vmbackup_repository": repo,
                               "vmbackup_unsupported_disks": "skip", "vmbackup_keep_overlay": False})
    assert [d["target"] for d in manifests(repo, vm)[0]["disks"]] == ["vda"]


def test_metrics_textfile_keeps_the_last_success_through_a_failed_run(guest, playbook, tmp_path):
    """vmbackup_metrics_file: node_exporter's textfile, from the whole repository, after each run."""
    vm = "it-off3"
    repo, prom = str(tmp_path / "repo"), str(tmp_path / "textfile" / "vmbackup.prom")
    os.makedirs(os.path.dirname(prom))
    guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 16}], running=False)
    inv = playbook.inventory(local_inventory())
    extra = {"vmbackup_vms": vm, "vmbackup_repository": repo, "vmbackup_metrics_file": prom}
    playbook.run(BACKUP, inv, extra)
    first = manifests(repo, vm)[-1]

    def metric(text, name, **labels):
        """The sample's value as Prometheus's own text-format parser reads the file."""
        want = dict(labels, repository=repo)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == want:
                    return sample.value
        return None

    with open(prom) as fh:
        text = fh.read()
    assert os.stat(prom).st_mode & 0o777 == 0o644  # node_exporter reads it; nothing secret in it
    done = metric(text, "vmbackup_last_success_timestamp_seconds", vm=vm)
    assert done and abs(done - datetime.datetime.fromisoformat(first["finished"]).timestamp()) < 1
    assert metric(text, "vmbackup_last_success_full", vm=vm) == 1
    assert metric(text, "vmbackup_usable_backups", vm=vm) == 1
    assert metric(text, "vmbackup_last_run_success", vm=vm, hypervisor="hv-local") == 1
    assert metric(text, "vmbackup_last_success_duration_seconds", vm=vm) > 0
    # The same figures are in the JSON report.
    assert report(repo, "hv-local")[0]["duration_seconds"] > 0

    # A run that fails (a hook before the snapshot): the last success stays, the run says it failed.
    failing = dict(extra, backup_pre_commands=[{"where": "hypervisor", "command": ["false"]}])
    playbook.run(BACKUP, inv, failing, expect_rc=2)
    with open(prom) as fh:
        text = fh.read()
    assert metric(text, "vmbackup_last_success_timestamp_seconds", vm=vm) == done
    assert metric(text, "vmbackup_last_run_success", vm=vm, hypervisor="hv-local") == 0
    assert metric(text, "vmbackup_usable_backups", vm=vm) == 1


def test_zstd_compressed_chain_restores_and_its_synthetic_full_stays_compressed(guest, playbook, tmp_path):
    """vmbackup_compression=zstd: full and delta stored compressed (qcow2 zstd), restored equal."""
    vm = "it-off4"
    repo = str(tmp_path / "repo")
    info = guest(vm, [{"target": "vda", "format": "qcow2", "size_mib": 64}], running=False)
    vda = info.paths[0]
    # Compressible data: a repeated pattern (text-like), 16 MiB, then 8 MiB more before the incremental.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 1M 16M", vda], check=True, capture_output=True)
    inv = playbook.inventory(local_inventory())
    extra = {"vmbackup_vms": vm, "vmbackup_repository": repo, "vmbackup_compression": "zstd"}
    playbook.run(BACKUP, inv, extra)
    first = image_sha256(vda, "qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x62 30M 8M", chain_of(vm)["vda"]], check=True,
                   capture_output=True)
    second = image_sha256(chain_of(vm)["vda"], "qcow2")
    playbook.run(BACKUP, inv, extra)
    full, inc = manifests(repo, vm)
    assert (full["type"], inc["type"]) == ("full", "incremental")
    for m, data in ((full, 16 * MiB), (inc, 8 * MiB)):
        disk = m["disks"][0]
        assert disk["compression"] == "zstd"
        assert disk["stored_bytes"] < data / 10, disk  # a pattern compresses far below its size
        path = os.path.join(repo, vm, m["backup_id"], disk["file"])
        qinfo = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                                          capture_output=True, text=True).stdout)
        assert qinfo["format-specific"]["data"]["compression-type"] == "zstd"
    # The delta still builds on the full (the backing name the repository expects).
    assert inc["parent"] == full["backup_id"]
    for m, state in ((full, first), (inc, second)):
        name = "it-off4-r"
        try:
            playbook.run(RESTORE, inv, {"vmbackup_vm": vm, "vmbackup_backup": m["backup_id"],
                                        "vmbackup_restore_name": name, "vmbackup_repository": repo})
            assert image_sha256(chain_of(name)["vda"], "qcow2") == state
        finally:
            cleanup_vm(name)
    # A synthetic full of the chain keeps its compression.
    playbook.run("vmbackup.libvirt.prune", inv, {"vmbackup_repository": repo, "vmbackup_synthesize": True,
                                                 "vmbackup_keep_last": 10, "vmbackup_vms": vm,
                                                 "vmbackup_backup": inc["backup_id"]})
    synthetic = manifests(repo, vm)[-1]
    assert synthetic["synthesized_from"] == inc["backup_id"] and synthetic["disks"][0]["compression"] == "zstd"
    spath = os.path.join(repo, vm, synthetic["backup_id"], synthetic["disks"][0]["file"])
    assert image_sha256(spath, "qcow2") == second
    assert os.stat(spath).st_blocks * 512 < 24 * MiB / 10
