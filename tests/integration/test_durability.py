"""Durable commits and a private repository, on real components.

- Power loss on the backup node: the repository is an ext4 file system inside a TCG guest of
  its own (a second instance of the test bed's LVM host, with its own state directory and
  port, so the shared one at 127.0.0.1:2299 is never touched). That guest is hypervisor and
  backup node at once (transport local). Its page cache keeps dirty data until the kill
  (dirty writeback switched off), so whatever the collection did not flush is really lost.
  Right after two backups report success, its QEMU is SIGKILLed; after it boots again,
  every backup the runs reported complete passes verify and restores with equal data.
- Modes: a backup into a pre-existing 0755 repository root leaves nothing in the repository
  that others can read, and says that it changed the root's mode; the overlays that stay on
  the hypervisor (keep_overlay) of a running and of a shut-off VM are not readable by others.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import HV_PYTHON, TESTBED_DIR, local_inventory

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
VERIFY = "vmbackup.libvirt.verify"

# --------------------------------------------------------------------------------------------
# power loss

# The second LVM host's own state (its VMBACKUP_TESTBED); never the shared test bed's.
PL_TB = os.environ.get("VMBACKUP_POWERLOSS_TESTBED", "/var/tmp/h1-powerloss-testbed")
PL_D = os.path.join(PL_TB, "lvmhost")
PL_VM, PL_RESTORED = "h1-pl", "h1-pl-r"
PL_DISK = "/var/lib/libvirt/images/h1-pl.qcow2"  # guest tmpfs: only the repository is on the killed disk
PL_LV = "/dev/vg0/h1-pl-repo"
PL_MNT = "/mnt/h1-pl"
PL_REPO = PL_MNT + "/repo"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PowerLossHost:
    """A private LVM host guest: started, killed (SIGKILL) and started again by this test only."""

    def __init__(self):
        self.port = _free_port()
        self.env = dict(os.environ, VMBACKUP_TESTBED=PL_TB, VMBACKUP_LVMHOST_PORT=str(self.port),
                        VMBACKUP_LVMHOST_PV_SIZE="512M", VMBACKUP_LVMHOST_TIMEOUT="400")
        self.key = os.path.join(PL_TB, "ssh", "id_ed25519")
        self.known = os.path.join(PL_D, "known_hosts")

    def up(self):
        cp = subprocess.run(["bash", os.path.join(TESTBED_DIR, "lvmhost.sh"), "up"], env=self.env,
                            capture_output=True, text=True, timeout=600, check=False)
        if cp.returncode != 0:
            raise RuntimeError("starting the power-loss guest failed:\n%s\n%s" % (cp.stdout[-3000:], cp.stderr[-3000:]))

    def pid(self):
        try:
            with open(os.path.join(PL_D, "qemu.pid")) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def kill(self):
        """Power loss: SIGKILL the guest's QEMU (no shutdown, no flush of the guest's caches)."""
        pid = self.pid()
        assert pid, "the power-loss guest is not running"
        os.kill(pid, signal.SIGKILL)
        for _i in range(300):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        raise AssertionError("QEMU %d did not die" % pid)

    def sh(self, command, check=True, timeout=300):
        cp = subprocess.run(["ssh", "-F", "/dev/null", "-i", self.key, "-p", str(self.port),
                             "-o", "UserKnownHostsFile=%s" % self.known, "-o", "StrictHostKeyChecking=yes",
                             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "root@127.0.0.1", command],
                            capture_output=True, text=True, timeout=timeout, check=False)
        if check and cp.returncode != 0:
            raise AssertionError("on the power-loss guest: %s failed (rc=%s): %s" % (command, cp.returncode, cp.stderr))
        return cp.stdout

    def content_sha256(self, path):
        """sha256 of an image's guest-visible content, computed inside the guest."""
        return self.sh("qemu-img convert -U -f qcow2 -O raw %s /run/h1-x.raw && sha256sum /run/h1-x.raw && "
                       "rm -f /run/h1-x.raw" % path).split()[0]

    def inventory(self, playbook):
        return playbook.inventory("""
        [hypervisors]
        h1pl ansible_host=127.0.0.1 ansible_port=%d ansible_user=root ansible_ssh_private_key_file=%s %s

        [all:vars]
        ansible_python_interpreter=%s
        """ % (self.port, self.key,
               "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes' "
               "vmbackup_known_hosts=%s vmbackup_ssh_private_key=%s" % (self.known, self.known, self.key), HV_PYTHON))


@pytest.fixture(scope="module")
def powerloss_host():
    shutil.rmtree(PL_TB, ignore_errors=True)
    host = PowerLossHost()
    try:
        host.up()
        yield host
    finally:
        pid = host.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            for _i in range(100):
                if host.pid() is None:
                    break
                time.sleep(0.1)
        shutil.rmtree(PL_TB, ignore_errors=True)


def _qemu_io(host, path, writes):
    host.sh("qemu-io -f qcow2 %s %s >/dev/null" % (" ".join("-c 'write -P %s %s %s'" % w for w in writes), path))


@pytest.mark.slow
def test_backups_reported_complete_survive_power_loss_of_the_node(powerloss_host, playbook):
    host = powerloss_host
    # Dirty data stays in the guest's page cache until something flushes it (no periodic
    # writeback): what the collection does not fsync is lost at the kill, every time.
    host.sh("sysctl -q -w vm.dirty_writeback_centisecs=0 vm.dirty_expire_centisecs=360000 && "
            "modprobe ext4 && lvcreate -q -y -L 256M -n %s vg0 && mkfs.ext4 -q %s && mkdir -p %s && mount %s %s && "
            "mkdir -p %s && chmod 0755 %s" % (os.path.basename(PL_LV), PL_LV, PL_MNT, PL_LV, PL_MNT, PL_REPO, PL_REPO))
    host.sh("mkdir -p /var/lib/libvirt/images && qemu-img create -q -f qcow2 %s 32M" % PL_DISK)
    _qemu_io(host, PL_DISK, [("0x11", "1M", "3M"), ("0x22", "9M", "2M"), ("0x33", "30M", "1M")])
    xml = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices>"
           "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (PL_VM, PL_DISK))
    host.sh("cat > /run/%s.xml <<'EOF'\n%s\nEOF\nvirsh -c qemu:///system define /run/%s.xml" % (PL_VM, xml, PL_VM))
    inv = host.inventory(playbook)
    extra = {"vmbackup_vms": PL_VM, "vmbackup_repository": PL_REPO, "vmbackup_node": "h1pl"}

    # A full and an incremental backup (a delta rebased onto the full), each reported complete.
    expected = {}
    for round_ in range(2):
        # The VM's active image: after the first backup, the kept overlay (the delta's source).
        active = dict(line.split()[:2] for line in host.sh(
            "virsh -c qemu:///system domblklist %s | tail -n +3" % PL_VM).strip().splitlines())["vda"]
        if round_:
            assert active != PL_DISK, "the VM should run on the first backup's overlay"
            _qemu_io(host, active, [("0x44", "2M", "1M"), ("0x55", "20M", "2M")])
        state = host.content_sha256(active)
        before = set(host.sh("ls %s/%s 2>/dev/null || true" % (PL_REPO, PL_VM)).split())
        playbook.run(BACKUP, inv, extra)
        new = sorted(set(host.sh("ls %s/%s" % (PL_REPO, PL_VM)).split()) - before)
        assert len(new) == 1, new
        manifest = json.loads(host.sh("cat %s/%s/%s/manifest.json" % (PL_REPO, PL_VM, new[0])))
        assert manifest["status"] == "complete" and manifest["type"] == ("incremental" if round_ else "full")
        expected[new[0]] = state

    # Power loss right after the second success; then the node boots again.
    host.kill()
    host.up()
    host.sh("modprobe ext4; mkdir -p %s && mount %s %s" % (PL_MNT, PL_LV, PL_MNT))

    # Every backup reported complete checks out (verify fails the run on any damage) ...
    res = playbook.run(VERIFY, inv, {"vmbackup_repository": PL_REPO, "vmbackup_vm": PL_VM, "vmbackup_node": "h1pl"},
                       expect_rc=None)
    assert res.rc == 0, "verify after the power loss found damage:\n%s" % res.output[-6000:]
    # ... and the latest restores with the data it was taken from (its chain reads the full too;
    # one restore, not one per backup: each playbook run in this nested guest costs minutes).
    for backup_id, state in sorted(expected.items())[-1:]:
        host.sh("virsh -c qemu:///system undefine %s; rm -f /var/lib/libvirt/images/%s*" % (PL_RESTORED, PL_RESTORED),
                check=False)
        playbook.run(RESTORE, inv, {"vmbackup_vm": PL_VM, "vmbackup_backup": backup_id,
                                    "vmbackup_restore_name": PL_RESTORED, "vmbackup_repository": PL_REPO,
                                    "vmbackup_node": "h1pl"})
        blk = dict(line.split()[:2] for line in host.sh(
            "virsh -c qemu:///system domblklist %s | tail -n +3" % PL_RESTORED).strip().splitlines())
        assert host.content_sha256(blk["vda"]) == state, "backup %s restored other data" % backup_id


# --------------------------------------------------------------------------------------------
# modes

MODES_DIR = "/var/tmp/h1-modes"  # readable by the qemu user (pytest's tmp_path is not)
MODES_RUN, MODES_OFF = "h1-modes-run", "h1-modes-off"


def _modes_cleanup():
    for name in (MODES_RUN, MODES_OFF):
        if domains.domain_exists(name):
            domains.virsh("destroy", name, check=False)
            domains.virsh("undefine", name, check=False)
    shutil.rmtree(MODES_DIR, ignore_errors=True)


def _define(name, disk, start):
    xml = ("<domain type='kvm'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices>"
           "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (name, disk))
    path = os.path.join(MODES_DIR, name + ".xml")
    with open(path, "w") as fh:
        fh.write(xml)
    domains.virsh("define", path)
    if start:
        domains.virsh("start", name)


@pytest.mark.usefixtures("libvirt")
def test_repository_and_overlays_are_private(playbook):
    _modes_cleanup()
    os.makedirs(MODES_DIR)
    os.chmod(MODES_DIR, 0o755)
    repo = os.path.join(MODES_DIR, "repo")
    os.mkdir(repo)
    os.chmod(repo, 0o755)  # a repository root that exists already, with a loose mode
    try:
        for name, start in ((MODES_RUN, True), (MODES_OFF, False)):
            disk = os.path.join(MODES_DIR, name + ".qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "32M"], check=True)
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", disk], check=True,
                           capture_output=True)
            _define(name, disk, start)
        res = playbook.run(BACKUP, playbook.inventory(local_inventory()),
                           {"vmbackup_vms": "%s,%s" % (MODES_RUN, MODES_OFF), "vmbackup_repository": repo,
                            "vmbackup_keep_overlay": True, "vmbackup_quiesce": "off"})
        # The warning names the root and both modes (whitespace dropped: Ansible wraps warnings).
        assert "%shadmode0755" % repo in "".join(res.output.split()), res.output[-4000:]
        for vm in (MODES_RUN, MODES_OFF):
            assert glob.glob(os.path.join(repo, vm, "*", "manifest.json")), "no backup of %s" % vm
        # Nothing in the repository is readable (or writable) by anyone but its owner.
        loose = []
        for top, dirs, files in os.walk(repo):
            for entry in [top] + [os.path.join(top, f) for f in files]:
                mode = stat.S_IMODE(os.lstat(entry).st_mode)
                if mode & 0o077:
                    loose.append("%s %04o" % (entry, mode))
        assert not loose, "readable by others than root: %s" % ", ".join(loose)
        assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
        # The kept overlays (active images now) are not readable by others: libvirt's for the
        # running VM, qemu-img create's for the shut-off one.
        for vm in (MODES_RUN, MODES_OFF):
            active = dict(domains.domblklist(vm))["vda"]
            assert ".vmbackup-" in active, (vm, active)
            mode = stat.S_IMODE(os.stat(active).st_mode)
            assert not mode & 0o077, "overlay %s of %s has mode %04o" % (active, vm, mode)
    finally:
        _modes_cleanup()
