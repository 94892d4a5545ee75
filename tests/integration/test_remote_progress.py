"""Progress is shown when the backup node is another host than the controller (issue 13,
"Node is not the controller"): the modules' action plugins read the state file over the
node's own connection while the module runs as an async job there."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from conftest import COLLECTIONS, TB, VENV_BIN, image_sha256, ssh_inventory

import domains  # tests/testbed/domains.py

BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
VM = "rp-vm"
DISK = "/var/lib/libvirt/images/rp-vm-vda.qcow2"
KEY = os.path.join(TB, "ssh", "id_ed25519")
KNOWN = os.path.join(TB, "ssh", "known_hosts")
# The backup node: hv2's sshd, reached over SSH like any remote node (the callback is not
# enabled in these runs, so every progress line comes from the action plugins).
NODE = ("n2 ansible_host=127.0.0.12 ansible_user=root ansible_ssh_private_key_file=%s "
        "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % (KEY, KNOWN))
# Seconds another run keeps the VM's lock once the backup waits for it: several progress reads
# even on a loaded machine, well inside the backup's lock wait (60 s).
HOLD = 20


def adhoc_lock(playbook, inventory, path):
    """Take a lock on the node as another run would (ansible over SSH, so the
    lock names no live process of this controller and is never judged stale)."""
    argv = [os.path.join(VENV_BIN, "ansible"), "n2", "-i", inventory, "-m", "vmbackup.libvirt.backup_lock",
            "-a", json.dumps({"path": path, "owner": "other-run", "purpose": "a restore test of %s" % VM,
                              "state": "present"})]
    env = dict(playbook.env, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS)
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=playbook.workdir, timeout=300, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_progress_from_a_remote_node(playbook, tmp_path):
    repo = str(tmp_path / "repo")
    domains.virsh("undefine", VM, check=False)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", DISK, "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 3M", DISK], check=True, capture_output=True)
    domains.virsh("define", "/dev/stdin", input_text=(
        "<domain type='kvm'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        "<driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>" % (VM, DISK)))
    inv = playbook.inventory(ssh_inventory() + "\n[nodes]\n%s\n" % NODE)
    progress = str(tmp_path / "progress")
    common = {"vmbackup_node": "n2", "vmbackup_repository": repo, "vmbackup_quiesce": "off",
              "vmbackup_keep_overlay": False, "vmbackup_progress_interval": 1, "vmbackup_progress_dir": progress}
    try:
        # Another run holds the VM's lock in the repository on the node: the backup's begin waits
        # there (its module writes who holds the lock into the progress directory on the node),
        # and the controller must say so while it waits; the lock goes HOLD seconds later.
        lock = os.path.join(repo, ".locks", "%s.lock" % VM)
        adhoc_lock(playbook, inv, lock)
        waited = []

        def release():
            deadline = time.time() + 120  # begin waits 60 s at most
            while time.time() < deadline and not (os.path.isdir(progress) and os.listdir(progress)):
                time.sleep(0.2)
            waited.append(bool(os.path.isdir(progress) and os.listdir(progress)))
            time.sleep(HOLD)
            os.unlink(lock)  # the other run ends (at once: an ansible run here could take long)

        releaser = threading.Thread(target=release)
        started = time.time()
        releaser.start()
        try:
            res = playbook.run(BACKUP, inv, dict(common, vmbackup_vms=VM))
        finally:
            releaser.join()
        assert waited == [True], res.output[-6000:]  # the backup did wait for the other run
        lines = [l for l in res.output.splitlines() if "[progress]" in l]
        assert any("%s@hv1 (on 127.0.0.12): waiting for" % VM in l and "held by run other-run" in l for l in lines), \
            res.output[-6000:]
        assert "1 of 1 VMs backed up" in res.output

        # A restore from that node works through the same plugins (a push from the node).
        restored = VM + "-r"
        playbook.run(RESTORE, inv, dict(common, vmbackup_vm=VM, vmbackup_restore_name=restored))
        assert image_sha256("/var/lib/libvirt/images/%s-vda.qcow2" % restored) == image_sha256(DISK)
        # No async job results left behind on the node.
        jobs = playbook.async_dir  # this test's own (conftest sets ANSIBLE_ASYNC_DIR)
        assert not [f for f in (os.listdir(jobs) if os.path.isdir(jobs) else [])
                    if os.path.getmtime(os.path.join(jobs, f)) >= started]
    finally:
        for name in (VM, VM + "-r"):
            domains.virsh("undefine", name, check=False)
        for path in (DISK, "/var/lib/libvirt/images/%s-r-vda.qcow2" % VM):
            if os.path.exists(path):
                os.unlink(path)
