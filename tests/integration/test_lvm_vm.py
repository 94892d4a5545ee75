"""A libvirt VM with an LVM disk and a file disk on the test bed's LVM hypervisor, backed up and restored by the playbooks."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from conftest import HV_PYTHON, TB
from conftest import testbed as run_testbed

MiB = 1024 * 1024
SSH_CONFIG = os.path.join(TB, "lvmhost", "ssh_config")
KNOWN = os.path.join(TB, "lvmhost", "known_hosts")
KEY = os.path.join(TB, "ssh", "id_ed25519")
VM, RESTORED = "it-lvvm", "it-lvvm-r"
LV = "/dev/vg0/it-lvvm-vda"
QCOW = "/var/lib/libvirt/images/it-lvvm-vdb.qcow2"

# Deterministic data written by python3 on the LVM host: DATA at an offset of a device or file.
WRITE = ("import hashlib,os,sys; p,o,n,s=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),sys.argv[4]; "
         "b=b''.join(hashlib.sha256(('%s/%d'%(s,i)).encode()).digest()*32 for i in range(n//1024)); "
         "f=os.open(p,os.O_WRONLY); os.pwrite(f,b,o); os.fsync(f); os.close(f)")


def on_host(command, check=True, timeout=300):
    cp = subprocess.run(["ssh", "-F", SSH_CONFIG, "lvmhost", command], capture_output=True, text=True,
                        timeout=timeout, check=False)
    if check and cp.returncode != 0:
        raise AssertionError("on the LVM host: %s failed (rc=%s): %s" % (command, cp.returncode, cp.stderr))
    return cp.stdout


def sha256_on_host(path, fmt="raw"):
    if fmt == "raw":
        return on_host("sha256sum %s" % path).split()[0]
    return on_host("qemu-img convert -U -f %s -O raw %s /run/x.raw && sha256sum /run/x.raw && rm -f /run/x.raw"
                   % (fmt, path)).split()[0]


def write(path, offset, length, seed):
    on_host("%s -c \"%s\" %s %d %d %s" % (HV_PYTHON, WRITE, path, offset, length, seed))


@pytest.fixture(scope="module")
def lvmhost():
    run_testbed("lvmhost.sh", "up", timeout=400)


def cleanup():
    for name in (RESTORED, VM):
        on_host("virsh -c qemu:///system undefine %s" % name, check=False)
    on_host("for lv in $(lvs --noheadings -o lv_path vg0 | grep it-lvvm); do lvremove -fy $lv; done; "
            "rm -f /var/lib/libvirt/images/it-lvvm*", check=False)


def test_vm_with_lv_and_file_disks_backs_up_and_restores(lvmhost, playbook, tmp_path):
    repo = str(tmp_path / "repo")
    cleanup()
    try:
        on_host("lvcreate -y -L 64M -n it-lvvm-vda vg0 && mkdir -p /var/lib/libvirt/images && "
                "qemu-img create -q -f qcow2 %s 32M" % QCOW)
        on_host("dd if=/dev/zero of=%s bs=1M count=64 oflag=direct status=none" % LV)
        write(LV, 2 * MiB, 4 * MiB, "a")
        write(LV, 40 * MiB, 2 * MiB, "b")
        on_host("qemu-io -f qcow2 -c 'write -P 0x2a 1M 2M' %s >/dev/null" % QCOW)
        xml = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               "<os><type arch='x86_64'>hvm</type></os><devices>"
               "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='%s'/>"
               "<target dev='vda' bus='virtio'/></disk>"
               "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
               "<target dev='vdb' bus='virtio'/></disk></devices></domain>" % (VM, LV, QCOW))
        on_host("cat > /run/%s.xml <<'EOF'\n%s\nEOF\nvirsh -c qemu:///system define /run/%s.xml" % (VM, xml, VM))
        inv = playbook.inventory("""
        [hypervisors]
        lvmhost ansible_host=127.0.0.1 ansible_port=2299 ansible_user=root ansible_ssh_private_key_file=%s %s

        [all:vars]
        ansible_python_interpreter=%s
        """ % (KEY, "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes' "
               "vmbackup_known_hosts=%s vmbackup_ssh_private_key=%s" % (KNOWN, KNOWN, KEY), HV_PYTHON))
        extra = {"vmbackup_vms": VM, "vmbackup_repository": repo, "vmbackup_keep_overlay": False}
        states = []
        for round_ in range(2):
            if round_:
                write(LV, 10 * MiB, 3 * MiB, "c")
            states.append({"vda": sha256_on_host(LV), "vdb": sha256_on_host(QCOW, "qcow2")})
            playbook.run("vmbackup.libvirt.backup", inv, extra)
            assert "it-lvvm-vda-vmbackup" not in on_host("lvs --noheadings -o lv_name vg0")  # no snapshot left
        manifests = []
        for path in sorted(glob.glob(os.path.join(repo, VM, "*", "manifest.json"))):
            with open(path) as fh:
                manifests.append(json.load(fh))
        assert len(manifests) == 2
        for m in manifests:
            disks = {d["target"]: d for d in m["disks"]}
            assert disks["vda"]["backend"] == "block" and disks["vdb"]["backend"] == "file"
            # 64 MiB LV with 6-9 MiB of data: stored close to the data, not the LV size.
            assert disks["vda"]["stored_bytes"] < 12 * MiB, disks["vda"]
        for m, state in zip(manifests, states):
            on_host("virsh -c qemu:///system undefine %s; lvremove -fy vg0/%s-vda; rm -f /var/lib/libvirt/images/%s-*"
                    % (RESTORED, RESTORED, RESTORED), check=False)
            playbook.run("vmbackup.libvirt.restore", inv, {
                "vmbackup_vm": VM, "vmbackup_backup": m["backup_id"], "vmbackup_restore_name": RESTORED,
                "vmbackup_repository": repo})
            blk = dict(line.split()[:2] for line in on_host(
                "virsh -c qemu:///system domblklist %s | tail -n +3" % RESTORED).strip().splitlines())
            assert blk["vda"] == "/dev/vg0/%s-vda" % RESTORED
            assert sha256_on_host(blk["vda"]) == state["vda"]
            assert sha256_on_host(blk["vdb"], "qcow2") == state["vdb"]
        # Restoring over the existing LV without force is refused, nothing written.
        res = playbook.run("vmbackup.libvirt.restore", inv, {
            "vmbackup_vm": VM, "vmbackup_restore_name": VM, "vmbackup_repository": repo}, expect_rc=2)
        assert "already exists" in res.output
    finally:
        cleanup()
