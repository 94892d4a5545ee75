"""Retention on a repository of 10 backups in 3 chains: the policy's exact result, then restores of every kept backup.

Chains A and B are built in the repository with real qemu-img images and manifests (dated in
January and March); chain C comes from real backups of a shut-off VM through the backup playbook.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess

import pytest

from conftest import image_sha256, local_inventory

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
VM = "it-prune1"
SIZE = 16 * MiB
PRUNE = "vmbackup.libvirt.prune"
pytestmark = pytest.mark.usefixtures("libvirt")


def qemu_io(path, fmt, cmd):
    subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, path], check=True, capture_output=True)


def sha256_file(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def backup_ids(repo):
    return sorted(e for e in os.listdir(os.path.join(repo, VM)) if not e.startswith("."))


def add_backup(repo, backup_id, parent, template, pattern):
    """A backup made by hand: a full qcow2, or a delta whose backing file is ../PARENT/vda.qcow2."""
    bdir = os.path.join(repo, VM, backup_id)
    os.makedirs(bdir)
    image = os.path.join(bdir, "vda.qcow2")
    if parent:
        subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "../%s/vda.qcow2" % parent, "-F", "qcow2",
                        image], check=True, capture_output=True, cwd=bdir)
    else:
        subprocess.run(["qemu-img", "create", "-f", "qcow2", image, str(SIZE)], check=True, capture_output=True)
    qemu_io(image, "qcow2", "write -P %d %dM 1M" % (pattern, pattern % 15))
    with open(os.path.join(template, "domain.xml")) as src, open(os.path.join(bdir, "domain.xml"), "w") as dst:
        dst.write(src.read())
    with open(os.path.join(template, "manifest.json")) as fh:
        manifest = json.load(fh)
    disk = dict(manifest["disks"][0], file="vda.qcow2", mode="delta" if parent else "full",
                sha256=sha256_file(image))
    manifest.update(backup_id=backup_id, parent=parent, type="incremental" if parent else "full", disks=[disk])
    with open(os.path.join(bdir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    return image_sha256(image, "qcow2")


def cleanup(name):
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        for path in sources:
            for f in glob.glob(path.split(".vmbackup-")[0].rsplit(".", 1)[0] + ".*"):
                os.unlink(f)


def test_prune_ten_backups_three_chains(playbook, tmp_path):
    repo = str(tmp_path / "repo")
    cleanup(VM)
    info = domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": SIZE // MiB}],
                                running=False, replace=True)
    inv = playbook.inventory(local_inventory())
    content = {}
    try:
        # Chain C: real backups (full, incremental, incremental) of the shut-off VM.
        for step in range(3):
            top = dict(domains.domblklist(VM))["vda"]
            qemu_io(top, "qcow2", "write -P %d %dM 2M" % (0x40 + step, 2 + 3 * step))
            state = image_sha256(top, "qcow2")
            playbook.run("vmbackup.libvirt.backup", inv, {"vmbackup_vms": VM, "vmbackup_repository": repo})
            content[backup_ids(repo)[-1]] = state
        c1, c2, c3 = backup_ids(repo)
        template = os.path.join(repo, VM, c1)
        # Chains A (January: full + 3 incrementals) and B (March: full + 2 incrementals), by hand.
        a = ["202601%02dT010000Z" % d for d in (5, 12, 19, 26)]
        b = ["202603%02dT010000Z" % d for d in (2, 9, 16)]
        for chain in (a, b):
            for i, backup_id in enumerate(chain):
                content[backup_id] = add_backup(repo, backup_id, chain[i - 1] if i else None, template, 16 + len(content))
        assert len(backup_ids(repo)) == 10
        with open(os.path.join(repo, VM, c2, "manifest.json")) as fh:
            assert json.load(fh)["type"] == "incremental"

        # keep_last 3 keeps chain C; keep_monthly 2 keeps this month (C3) and March (B3), and B3
        # keeps B2 and B1, which it needs. January goes, newest first.
        policy = {"vmbackup_repository": repo, "vmbackup_keep_last": 3, "vmbackup_keep_monthly": 2}
        dry = playbook.run(PRUNE, inv, policy, check=True)
        assert len(backup_ids(repo)) == 10 and dry.changed("localhost") == 1
        assert "%s not kept by the policy" % a[3] in dry.output
        res = playbook.run(PRUNE, inv, policy, args=["-v"])
        assert backup_ids(repo) == sorted(b + [c1, c2, c3])
        order = [res.output.index('"%s %s not kept' % (VM, x)) for x in reversed(a)]
        assert order == sorted(order), "newest first"
        assert "%s needed by %s" % (b[1], b[2]) in res.output
        assert playbook.run(PRUNE, inv, policy).changed("localhost") == 0

        # A synthetic full of March stands for B3: the March chain goes, the synthetic full stays.
        res = playbook.run(PRUNE, inv, dict(policy, vmbackup_synthesize=True, vmbackup_vms=VM, vmbackup_backup=b[2]))
        synthetic = b[2] + "-1"
        assert backup_ids(repo) == sorted([synthetic, c1, c2, c3])
        content[synthetic] = content[b[2]]
        with open(os.path.join(repo, VM, synthetic, "manifest.json")) as fh:
            manifest = json.load(fh)
        assert manifest["type"] == "full" and manifest["synthesized_from"] == b[2]
        assert manifest["synthesized_chain"] == b

        # Every kept backup restores to the content it was taken with.
        for backup_id in backup_ids(repo):
            name = "it-prune1-r"
            cleanup(name)
            try:
                playbook.run("vmbackup.libvirt.restore", inv,
                             {"vmbackup_vm": VM, "vmbackup_backup": backup_id, "vmbackup_restore_name": name,
                              "vmbackup_repository": repo})
                restored = dict(domains.domblklist(name))["vda"]
                assert image_sha256(restored, "qcow2") == content[backup_id], backup_id
            finally:
                cleanup(name)
    finally:
        cleanup(VM)
        if info.paths and os.path.exists(info.paths[0]):
            os.unlink(info.paths[0])
