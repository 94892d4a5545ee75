"""A running VM with a file disk and a Ceph RBD disk (cephx secret) backed up and restored by the playbooks."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import uuid

import pytest

from conftest import TB, image_sha256, local_inventory, ssh_inventory
from conftest import testbed as run_testbed

import domains

MiB = 1024 * 1024
CEPH = os.path.join(TB, "ceph")
CONF = os.path.join(CEPH, "ceph.conf")
ADMIN_KEYRING = os.path.join(CEPH, "ceph.client.admin.keyring")
CEPH_VARS = {"vmbackup_ceph_conf": CONF, "vmbackup_ceph_id": "admin", "vmbackup_ceph_keyring": ADMIN_KEYRING}


def rbd(*args, data=None):
    cp = subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, *args],
                        input=data, capture_output=True, check=False, timeout=300)
    if cp.returncode != 0:
        raise AssertionError("rbd %s failed: %s" % (" ".join(args), cp.stderr.decode()))
    return cp.stdout


def rbd_sha256(spec):
    return hashlib.sha256(rbd("export", spec, "-")).hexdigest()


def ceph_key(client):
    cp = subprocess.run(["ceph", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "auth", "get-key",
                         "client.%s" % client], capture_output=True, text=True, check=True, timeout=60)
    return cp.stdout.strip()


def define_secret(secret_uuid, client):
    xml = ("<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>client.%s test</name>"
           "</usage></secret>" % (secret_uuid, client))
    domains.virsh("secret-define", "/dev/stdin", input_text=xml)
    keyfile = os.path.join(CEPH, "vmtest-%s.key" % secret_uuid[:8])
    with open(os.open(keyfile, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(ceph_key(client))
    try:
        domains.virsh("secret-set-value", "--secret", secret_uuid, "--file", keyfile)
    finally:
        os.unlink(keyfile)


@pytest.fixture(scope="module")
def ceph(libvirt):
    run_testbed("ceph.sh", "up", timeout=240)
    return CONF


def remove_vm(name):
    if domains.domain_exists(name):
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, check=False)


def test_running_vm_with_file_and_rbd_disks(ceph, sshd, playbook, tmp_path):
    vm, restored = "it-rbdvm", "it-rbdvm-r"
    image, restored_image = "rbd/it-rbdvm-vdb", "rbd/it-rbdvm-r-vdb"
    repo = str(tmp_path / "repo")
    secret_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, "vmbackup-test-rbd-secret"))
    qcow = "/var/lib/libvirt/images/it-rbdvm-vda.qcow2"
    for name in (restored, vm):
        remove_vm(name)
    for spec in (restored_image, image):
        subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "snap", "purge", spec],
                       capture_output=True, check=False)
        subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "rm", spec],
                       capture_output=True, check=False)
    for path in glob.glob("/var/lib/libvirt/images/it-rbdvm*"):
        os.unlink(path)
    domains.virsh("secret-undefine", secret_uuid, check=False)

    # Known content: 8 MiB of data and zero regions in a 64 MiB image; a qcow2 beside it.
    data = bytearray(64 * MiB)
    data[4 * MiB:8 * MiB] = os.urandom(4 * MiB)
    data[40 * MiB:44 * MiB] = os.urandom(4 * MiB)
    rbd("import", "-", image, data=bytes(data))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 1M 3M", qcow], check=True, capture_output=True)
    define_secret(secret_uuid, "vmbackup")
    xml = """<domain type='kvm'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type arch='x86_64'>hvm</type></os>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>
          <target dev='vda' bus='virtio'/></disk>
        <disk type='network' device='disk'><driver name='qemu' type='raw'/>
          <auth username='vmbackup'><secret type='ceph' uuid='%s'/></auth>
          <source protocol='rbd' name='%s'><host name='127.0.0.1' port='6789'/></source>
          <target dev='vdb' bus='virtio'/></disk>
        <serial type='file'><source path='/var/log/libvirt/qemu/%s-console.log'/></serial>
      </devices></domain>""" % (vm, qcow, secret_uuid, image, vm)
    domains.virsh("define", "/dev/stdin", input_text=xml)
    domains.virsh("start", vm)
    try:
        inv = playbook.inventory(ssh_inventory())
        # The default quiesce (preferred) on a VM with no guest agent channel: the freeze fails,
        # the VM is paused for the snapshots instead, and the thaw after the failed freeze is a no-op.
        extra = dict(CEPH_VARS, vmbackup_vms=vm, vmbackup_repository=repo)
        playbook.run("vmbackup.libvirt.backup", inv, extra)
        assert domains.domstate(vm) == "running"
        manifests = sorted(glob.glob(os.path.join(repo, vm, "*", "manifest.json")))
        with open(manifests[-1]) as fh:
            first = json.load(fh)
        disks = {d["target"]: d for d in first["disks"]}
        assert disks["vdb"]["backend"] == "rbd" and disks["vdb"]["file"] == "vdb.rbddiff"
        assert disks["vdb"]["bytes_sent"] < 9 * MiB  # holes are not sent
        snap = "%s@vmbackup-%s" % (image, first["backup_id"])
        assert rbd_sha256(snap) == hashlib.sha256(bytes(data)).hexdigest()

        # A second backup: the RBD disk is incremental from the kept snapshot; only one snapshot stays.
        playbook.run("vmbackup.libvirt.backup", inv, extra)
        with open(sorted(glob.glob(os.path.join(repo, vm, "*", "manifest.json")))[-1]) as fh:
            second = json.load(fh)
        disks2 = {d["target"]: d for d in second["disks"]}
        assert second["type"] == "incremental" and disks2["vdb"]["mode"] == "incremental"
        ours = [s for s in rbd("snap", "ls", image).decode().split() if s.startswith("vmbackup-")]
        assert ours == ["vmbackup-%s" % second["backup_id"]], ours
        expected_vdb = rbd_sha256("%s@vmbackup-%s" % (image, second["backup_id"]))

        # Restore under a new name, with the cephx secret gone: it is recreated from Ceph.
        domains.virsh("secret-undefine", secret_uuid)
        local = playbook.inventory(local_inventory())
        playbook.run("vmbackup.libvirt.restore", local, dict(
            CEPH_VARS, vmbackup_vm=vm, vmbackup_restore_name=restored, vmbackup_repository=repo,
            vmbackup_restore_start=True))
        assert domains.domstate(restored) == "running"
        blk = dict(domains.domblklist(restored))
        assert blk["vdb"] == restored_image
        assert rbd_sha256(restored_image) == expected_vdb
        assert image_sha256(blk["vda"], "qcow2") == image_sha256(
            os.path.join(repo, vm, second["backup_id"], "vda.qcow2"), "qcow2")
    finally:
        remove_vm(restored)
        remove_vm(vm)
        for spec in (restored_image, image):
            subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "snap", "purge", spec],
                           capture_output=True, check=False)
            subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "rm", spec],
                           capture_output=True, check=False)
        for path in glob.glob("/var/lib/libvirt/images/it-rbdvm*"):
            os.unlink(path)
        domains.virsh("secret-undefine", secret_uuid, check=False)


def _purge(spec):
    for args in (("snap", "purge", spec), ("rm", spec)):
        subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, *args],
                       capture_output=True, check=False)


def test_files_of_an_rbd_disk_restore_from_its_chain(ceph, playbook, tmp_path):
    """File-level restore of an RBD disk: its rbd diff chain (full, incremental) applied into a raw
    file on the node, read by libguestfs; what each backup held comes back with its mode."""
    vm, image = "it-rbdfiles", "rbd/it-rbdfiles-vda"
    repo = str(tmp_path / "repo")
    remove_vm(vm)
    _purge(image)
    tree = tmp_path / "tree"
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    (tree / "etc" / "app.conf").write_text("version=1\n")
    os.chmod(tree / "etc" / "app.conf", 0o640)
    raw = str(tmp_path / "fs.raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), raw, "32M"], check=True, capture_output=True)
    rbd("import", raw, image)
    xml = """<domain type='kvm'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type arch='x86_64'>hvm</type></os><devices>
        <disk type='network' device='disk'><driver name='qemu' type='raw'/>
          <source protocol='rbd' name='%s'><host name='127.0.0.1' port='6789'/></source>
          <target dev='vda' bus='virtio'/></disk></devices></domain>""" % (vm, image)
    domains.virsh("define", "/dev/stdin", input_text=xml)
    try:
        inv = playbook.inventory(local_inventory())
        extra = dict(CEPH_VARS, vmbackup_vms=vm, vmbackup_repository=repo)
        playbook.run("vmbackup.libvirt.backup", inv, extra)
        # The second backup's version of the file: written into the image (the VM is off).
        (tree / "etc" / "app.conf").write_text("version=2, longer\n")
        os.chmod(tree / "etc" / "app.conf", 0o600)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), raw, "32M"], check=True, capture_output=True)
        target = "rbd:%s:conf=%s:id=admin:keyring=%s" % (image, CONF, ADMIN_KEYRING)
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", raw, target], check=True,
                       capture_output=True)
        playbook.run("vmbackup.libvirt.backup", inv, extra)
        ids = sorted(os.path.basename(os.path.dirname(m))
                     for m in glob.glob(os.path.join(repo, vm, "*", "manifest.json")))
        with open(os.path.join(repo, vm, ids[1], "manifest.json")) as fh:
            assert json.load(fh)["disks"][0]["mode"] == "incremental"
        for bid, content, mode in ((ids[0], "version=1\n", 0o640), (ids[1], "version=2, longer\n", 0o600)):
            dest = tmp_path / ("out-" + bid)
            dest.mkdir()
            playbook.run("vmbackup.libvirt.restore_files", inv, {
                "vmbackup_vm": vm, "vmbackup_repository": repo, "vmbackup_backup": bid,
                "vmbackup_files_action": "extract", "vmbackup_files_paths": "/etc/app.conf",
                "vmbackup_files_dest": str(dest), "vmbackup_guestfs_settings": ["force_tcg"]})
            assert (dest / "app.conf").read_text() == content
            assert os.stat(dest / "app.conf").st_mode & 0o777 == mode
        assert not glob.glob(os.path.join(repo, ".vmbackup-files-*"))  # the raw scratch files are gone
    finally:
        remove_vm(vm)
        _purge(image)
