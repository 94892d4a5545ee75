"""Restores that cannot destroy: forced restores cut mid-way leave the VM as it was (file, LV and
RBD targets), refusals change nothing, restored files are 0600 and owned as configured, and the
NVRAM is restored from a backup node that is not the controller."""

from __future__ import annotations

import glob
import grp
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import HV_PYTHON, TB, Playbook, image_sha256, ssh_inventory
from conftest import testbed as run_testbed

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
IMAGES = "/var/lib/libvirt/images"
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"

pytestmark = pytest.mark.usefixtures("libvirt")


# --------------------------------------------------------------------------
# helpers

def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def dumpxml(name, on=None):
    if on:
        return on("virsh -c qemu:///system dumpxml --inactive --security-info %s" % name)
    return domains.virsh("dumpxml", "--inactive", "--security-info", name).stdout


def undefine(name):
    if domains.domain_exists(name):
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        domains.virsh("undefine", name, check=False)


def cmdlines():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        if argv:
            yield int(pid), argv


def find_transfer(needles, program="ssh"):
    """PIDs of node-side ``program`` processes whose command line holds every needle.

    An export's SSH session names none of qemu-nbd's arguments (they reach the hypervisor on its
    stdin): with "qemu-nbd" among the needles, it is the ssh that forwards the socket of the
    qemu-nbd whose command line holds the others."""
    procs = list(cmdlines())
    wanted = [needles]
    if "qemu-nbd" in needles:
        wanted = [[":" + argv[argv.index("-k") + 1]] for _pid, argv in procs
                  if os.path.basename(argv[0]) == "qemu-nbd" and "-k" in argv[:-1]
                  and all(n in " ".join(argv) for n in needles if n != "qemu-nbd")]
    found = []
    for pid, argv in procs:
        if os.path.basename(argv[0]) != program:
            continue
        line = " ".join(argv)
        if any(all(n in line for n in w) for w in wanted):
            found.append(pid)
    return found


class Cutter(threading.Thread):
    """Kills the SSH connection of a restore's transfer once it has run a little (the link drops)."""

    def __init__(self, needles, grown=None, settle=0.3, timeout=900):
        super().__init__(daemon=True)
        self.needles, self.grown, self.settle, self.timeout = needles, grown, settle, timeout
        self.killed = []
        self.stop = False

    def run(self):
        deadline = time.time() + self.timeout
        seen = None
        while time.time() < deadline and not self.stop and not self.killed:
            pids = find_transfer(self.needles)
            if pids:
                seen = seen or time.time()
                if (self.grown and self.grown()) or time.time() - seen >= self.settle:
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            self.killed.append(pid)
                        except ProcessLookupError:
                            pass
            time.sleep(0.02)


def restore_cut(pb, inv, extra, cutter):
    """Run a restore while ``cutter`` drops its transfer; the restore must fail."""
    cutter.start()
    try:
        res = pb.run(RESTORE, inv, extra, expect_rc=None)
    finally:
        cutter.stop = True
        cutter.join()
    assert cutter.killed, "the transfer was never seen running:\n%s" % res.output[-4000:]
    assert res.rc != 0, res.output[-4000:]
    return res


@pytest.fixture(scope="module")
def mpb(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("h3pb"))
    os.makedirs(os.path.join(work, "ansible-tmp"), exist_ok=True)
    return Playbook(work)


# --------------------------------------------------------------------------
# file disks on hv1 (this machine through sshd), a shut-off VM

FVM = "h3-safe"
FDISKS = {"vda": ("%s/h3-safe-vda.qcow2" % IMAGES, "qcow2"), "vdb": ("%s/h3-safe-vdb.raw" % IMAGES, "raw")}


def file_domain_xml(name, disks, description=""):
    devs = "".join(
        "<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/>"
        "<target dev='%s' bus='virtio'/></disk>" % (fmt, path, target)
        for target, (path, fmt) in sorted(disks.items()))
    return ("<domain type='kvm'><name>%s</name><uuid>5d1c6e1e-3b7a-4c56-9d1e-0000000000a3</uuid><description>%s</description><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>%s</devices></domain>"
            % (name, description, devs))


def cleanup_files():
    for name in (FVM, FVM + "-o", FVM + "-n"):
        undefine(name)
    for path in glob.glob("%s/h3-safe*" % IMAGES):
        os.unlink(path)


@pytest.fixture(scope="module")
def filevm(sshd, mpb, tmp_path_factory):
    """A shut-off VM with a qcow2 and a raw disk, backed up once; then its disks and definition change."""
    cleanup_files()
    repo = str(tmp_path_factory.mktemp("h3repo") / "repo")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", FDISKS["vda"][0], "32M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 6M", FDISKS["vda"][0]], check=True,
                   capture_output=True)
    with open(FDISKS["vdb"][0], "wb") as fh:
        fh.write(os.urandom(48 * MiB))
        fh.truncate(64 * MiB)
    domains.virsh("define", "/dev/stdin", input_text=file_domain_xml(FVM, FDISKS, "as backed up"))
    inv = mpb.inventory(ssh_inventory())
    mpb.run(BACKUP, inv, {"vmbackup_vms": FVM, "vmbackup_repository": repo, "vmbackup_quiesce": "off",
                          "vmbackup_keep_overlay": False})
    backed = {t: image_sha256(p, f) for t, (p, f) in FDISKS.items()}
    # After the backup the VM moves on: other data, another definition.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 2M 2M", FDISKS["vda"][0]], check=True,
                   capture_output=True)
    with open(FDISKS["vdb"][0], "r+b") as fh:
        fh.seek(8 * MiB)
        fh.write(os.urandom(4 * MiB))
    domains.virsh("define", "/dev/stdin", input_text=file_domain_xml(FVM, FDISKS, "changed since"))
    yield {"repo": repo, "inv": inv, "backed": backed}
    cleanup_files()


def file_state():
    return {t: file_sha256(p) for t, (p, _f) in FDISKS.items()}, dumpxml(FVM)


def leftovers():
    return sorted(glob.glob("%s/*.vmbackup-restore-*" % IMAGES) + glob.glob("%s/*.vmbackup-old-*" % IMAGES))


def test_forced_file_restore_cut_midway_leaves_disks_and_definition(filevm, mpb):
    before = file_state()
    path = FDISKS["vdb"][0]

    def grown():
        staged = glob.glob(path + ".vmbackup-restore-*") or [path]
        return os.stat(staged[0]).st_blocks * 512 >= 4 * MiB if os.path.exists(staged[0]) else False

    res = restore_cut(mpb, filevm["inv"], {"vmbackup_vm": FVM, "vmbackup_repository": filevm["repo"],
                                           "vmbackup_restore_force": True},
                      Cutter([path, "qemu-nbd", "--discard"], grown=grown))
    assert file_state() == before, res.output[-4000:]
    assert leftovers() == [], res.output[-4000:]
    assert "as they were" in res.output


def test_restore_without_force_refuses_every_existing_target(filevm, mpb):
    # A new name, but both disk targets already exist: refused before anything is written.
    name = FVM + "-n"
    targets = ["%s/%s-vda.qcow2" % (IMAGES, name), "%s/%s-vdb.raw" % (IMAGES, name)]
    for i, t in enumerate(targets):
        with open(t, "wb") as fh:
            fh.write(b"precious %d" % i)
    try:
        res = mpb.run(RESTORE, filevm["inv"], {"vmbackup_vm": FVM, "vmbackup_repository": filevm["repo"],
                                               "vmbackup_restore_name": name}, expect_rc=2)
        for i, t in enumerate(targets):
            assert t in res.output  # every refused target is named
            with open(t, "rb") as fh:
                assert fh.read() == b"precious %d" % i
        assert "nothing was written" in res.output and "restore_force=true" in res.output
        assert not domains.domain_exists(name)
        assert leftovers() == []
    finally:
        for t in targets:
            os.unlink(t)


def test_forced_file_restore_replaces_disks_owner_group_mode(filevm, mpb):
    owner = pwd.getpwnam("libvirt-qemu")
    res = mpb.run(RESTORE, filevm["inv"], {"vmbackup_vm": FVM, "vmbackup_repository": filevm["repo"],
                                           "vmbackup_restore_force": True, "vmbackup_image_owner": "libvirt-qemu"})
    for target, (path, fmt) in FDISKS.items():
        assert image_sha256(path, fmt) == filevm["backed"][target], target
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        # the owner's primary group by default, not root
        assert (st.st_uid, st.st_gid) == (owner.pw_uid, owner.pw_gid), (path, st.st_uid, st.st_gid)
    assert "as backed up" in dumpxml(FVM)
    assert leftovers() == [], res.output[-3000:]
    # Owner and group both given (USER:GROUP, as the prep role takes vmbackup_image_owner).
    name = FVM + "-o"
    group = grp.getgrnam("libvirt-qemu")
    mpb.run(RESTORE, filevm["inv"], {"vmbackup_vm": FVM, "vmbackup_repository": filevm["repo"],
                                     "vmbackup_restore_name": name, "vmbackup_image_owner": "nobody:libvirt-qemu"})
    for target, (_p, fmt) in FDISKS.items():
        path = "%s/%s-%s.%s" % (IMAGES, name, target, fmt)
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, group.gr_gid)
        assert image_sha256(path, fmt) == filevm["backed"][target]


# --------------------------------------------------------------------------
# NVRAM with a backup node that is not the controller

NVM = "h3-nv"
NODE_REPO = "/var/tmp/h3-node-repo"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def other_node(sshd, tmp_path_factory):
    """An sshd in its own mount namespace, with a tmpfs on the repository path: the repository is
    on that "host" only, not on the controller."""
    work = str(tmp_path_factory.mktemp("h3node"))
    key = os.path.join(work, "host_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    port = free_port()
    conf = os.path.join(work, "sshd_config")
    with open(os.path.join(TB, "ssh", "hv1", "sshd_config")) as fh:
        base = [l for l in fh.read().splitlines()
                if not l.startswith(("ListenAddress", "Port", "HostKey", "PidFile"))]
    with open(conf, "w") as fh:
        fh.write("\n".join(["ListenAddress 127.0.0.1", "Port %d" % port, "HostKey %s" % key,
                            "PidFile %s/sshd.pid" % work] + base) + "\n")
    with open(key + ".pub") as fh:
        pub = fh.read().split()
    known = os.path.join(work, "known_hosts")
    with open(known, "w") as fh:
        fh.write("[127.0.0.1]:%d %s %s\n" % (port, pub[0], pub[1]))
    os.makedirs(NODE_REPO, exist_ok=True)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             "mount -t tmpfs -o mode=0700 h3node %s && exec /usr/sbin/sshd -D -e -f %s"
                             % (NODE_REPO, conf)],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sshd.log"), "w"))
    for _i in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the node's sshd did not start")
    yield {"port": port, "known": known, "pid": proc.pid}
    proc.kill()
    proc.wait()
    shutil.rmtree(NODE_REPO, ignore_errors=True)


def test_nvram_restore_from_a_node_that_is_not_the_controller(other_node, mpb):
    restored = NVM + "-r"
    for name in (restored, NVM):
        undefine(name)
    vars_path = "%s/%s_VARS.fd" % (NVRAM_DIR, NVM)
    disk = "%s/h3-nv-vda.qcow2" % IMAGES
    os.makedirs(NVRAM_DIR, exist_ok=True)
    content = os.urandom(128 * 1024)
    with open(vars_path, "wb") as fh:
        fh.write(content)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "32M"], check=True)
    xml = ("<domain type='kvm'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>"
           "/var/tmp/h3-OVMF_CODE.fd</loader><nvram>%s</nvram></os><features><acpi/></features><devices>"
           "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (NVM, vars_path, disk))
    domains.virsh("define", "/dev/stdin", input_text=xml)
    key = os.path.join(TB, "ssh", "id_ed25519")
    inv = mpb.inventory(ssh_inventory() + """
    [nodes]
    h3node ansible_host=127.0.0.1 ansible_port=%d ansible_user=root ansible_ssh_private_key_file=%s %s
    """ % (other_node["port"], key,
           "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % other_node["known"]))
    common = {"vmbackup_node": "h3node", "vmbackup_repository": NODE_REPO}
    try:
        mpb.run(BACKUP, inv, dict(common, vmbackup_vms=NVM, vmbackup_quiesce="off", vmbackup_keep_overlay=False))
        assert not glob.glob(os.path.join(NODE_REPO, NVM, "*"))  # the repository is not on the controller
        mpb.run(RESTORE, inv, dict(common, vmbackup_vm=NVM, vmbackup_restore_name=restored,
                                   vmbackup_image_owner="libvirt-qemu"))
        new_vars = "%s/%s_VARS.fd" % (NVRAM_DIR, restored)
        assert "<nvram>%s</nvram>" % new_vars in dumpxml(restored)
        with open(new_vars, "rb") as fh:
            assert fh.read() == content
        st = os.stat(new_vars)
        owner = pwd.getpwnam("libvirt-qemu")
        assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (owner.pw_uid, owner.pw_gid)
    finally:
        for name in (restored, NVM):
            undefine(name)
        for path in glob.glob("%s/h3-nv*" % IMAGES) + glob.glob("%s/h3-nv*" % NVRAM_DIR):
            os.unlink(path)


# --------------------------------------------------------------------------
# an LV disk on the test bed's LVM hypervisor

LSSH = os.path.join(TB, "lvmhost", "ssh_config")
LKNOWN = os.path.join(TB, "lvmhost", "known_hosts")
LVM_VM = "h3-lvvm"
LV = "/dev/vg0/h3-lvvm-vda"
WRITE = ("import os,sys; p,o,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]); f=os.open(p,os.O_WRONLY); "
         "os.pwrite(f,os.urandom(n),o); os.fsync(f); os.close(f)")


def on_host(command, check=True, timeout=300):
    cp = subprocess.run(["ssh", "-F", LSSH, "lvmhost", command], capture_output=True, text=True,
                        timeout=timeout, check=False)
    if check and cp.returncode != 0:
        raise AssertionError("on the LVM host: %s failed (rc=%s): %s" % (command, cp.returncode, cp.stderr))
    return cp.stdout


def lv_cleanup():
    on_host("virsh -c qemu:///system undefine %s" % LVM_VM, check=False)
    on_host("for lv in $(lvs --noheadings -o lv_path vg0 | grep h3-lvvm); do lvremove -fy $lv; done", check=False)


@pytest.mark.slow
def test_forced_lv_restore_cut_midway_then_complete(mpb, tmp_path):
    run_testbed("lvmhost.sh", "up", timeout=400)
    key = os.path.join(TB, "ssh", "id_ed25519")
    inv = mpb.inventory("""
    [hypervisors]
    lvmhost ansible_host=127.0.0.1 ansible_port=2299 ansible_user=root ansible_ssh_private_key_file=%s %s

    [all:vars]
    ansible_python_interpreter=%s
    """ % (key, "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes' "
           "vmbackup_known_hosts=%s vmbackup_ssh_private_key=%s" % (LKNOWN, LKNOWN, key), HV_PYTHON))
    repo = str(tmp_path / "repo")
    lv_cleanup()
    try:
        on_host("lvcreate -y -L 64M -n h3-lvvm-vda vg0 && dd if=/dev/zero of=%s bs=1M count=64 oflag=direct "
                "status=none" % LV)
        on_host("%s -c \"%s\" %s %d %d" % (HV_PYTHON, WRITE, LV, 1 * MiB, 24 * MiB))
        xml = ("<domain type='qemu'><name>%s</name><uuid>5d1c6e1e-3b7a-4c56-9d1e-0000000000c3</uuid>"
               "<description>%%s</description><memory unit='MiB'>64</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
               "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
               "<source dev='/dev/mapper/vg0-h3--lvvm--vda'/>"
               "<target dev='vda' bus='virtio'/></disk></devices></domain>" % LVM_VM)

        def define(desc):
            on_host("cat > /run/%s.xml <<'EOF'\n%s\nEOF\nvirsh -c qemu:///system define /run/%s.xml"
                    % (LVM_VM, xml % desc, LVM_VM))
        define("as backed up")
        mpb.run(BACKUP, inv, {"vmbackup_vms": LVM_VM, "vmbackup_repository": repo, "vmbackup_quiesce": "off"})
        backed = on_host("sha256sum %s" % LV).split()[0]
        on_host("%s -c \"%s\" %s %d %d" % (HV_PYTHON, WRITE, LV, 30 * MiB, 4 * MiB))
        define("changed since")
        before = on_host("sha256sum %s" % LV).split()[0], dumpxml(LVM_VM, on_host)
        extra = {"vmbackup_vm": LVM_VM, "vmbackup_repository": repo, "vmbackup_restore_force": True}

        # Without force: refused, nothing changed.
        res = mpb.run(RESTORE, inv, {"vmbackup_vm": LVM_VM, "vmbackup_repository": repo,
                                     "vmbackup_restore_force": False}, expect_rc=2)
        assert "already exists" in res.output

        # The SSH link of the transfer drops mid-way: the old LV and definition are untouched.
        res = restore_cut(mpb, inv, extra, Cutter(["/dev/vg0/h3-lvvm-vda", "qemu-nbd", "--discard"], settle=1.0))
        after = on_host("sha256sum %s" % LV).split()[0], dumpxml(LVM_VM, on_host)
        assert after == before, res.output[-4000:]
        names = on_host("lvs --noheadings -o lv_name vg0")
        assert "vmbr" not in names and "vmbo" not in names, names

        # Complete: the LV holds the backup, no new or old volume is left beside it.
        res = mpb.run(RESTORE, inv, extra)
        assert on_host("sha256sum %s" % LV).split()[0] == backed
        assert "as backed up" in dumpxml(LVM_VM, on_host)
        names = on_host("lvs --noheadings -o lv_name vg0")
        assert "vmbr" not in names and "vmbo" not in names, names
    finally:
        lv_cleanup()


# --------------------------------------------------------------------------
# an RBD disk (Ceph of the test bed)

CEPH = os.path.join(TB, "ceph")
CONF = os.path.join(CEPH, "ceph.conf")
ADMIN_KEYRING = os.path.join(CEPH, "ceph.client.admin.keyring")
CEPH_VARS = {"vmbackup_ceph_conf": CONF, "vmbackup_ceph_id": "admin", "vmbackup_ceph_keyring": ADMIN_KEYRING}
RVM, RIMAGE = "h3-rbdvm", "rbd/h3-rbdvm-vdb"


def rbd(*args, data=None, check=True):
    cp = subprocess.run(["rbd", "-c", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, *args],
                        input=data, capture_output=True, check=False, timeout=300)
    if check and cp.returncode != 0:
        raise AssertionError("rbd %s failed: %s" % (" ".join(args), cp.stderr.decode()))
    return cp.stdout


def rbd_cleanup():
    undefine(RVM)
    for line in rbd("ls", "rbd", check=False).decode().split():
        if line.startswith("h3-rbdvm"):
            rbd("snap", "purge", "rbd/" + line, check=False)
            rbd("rm", "rbd/" + line, check=False)
    for path in glob.glob("%s/h3-rbdvm*" % IMAGES):
        os.unlink(path)


def rbd_state():
    return hashlib.sha256(rbd("export", RIMAGE, "-")).hexdigest(), \
        sorted(s for s in rbd("snap", "ls", RIMAGE).decode().split() if s.startswith("vmbackup-")), dumpxml(RVM)


def test_forced_rbd_restore_cut_midway_then_complete(sshd, mpb, tmp_path):
    run_testbed("ceph.sh", "up", timeout=240)
    repo = str(tmp_path / "repo")
    rbd_cleanup()
    try:
        data = bytearray(64 * MiB)
        data[2 * MiB:26 * MiB] = os.urandom(24 * MiB)
        rbd("import", "-", RIMAGE, data=bytes(data))
        xml = ("<domain type='kvm'><name>%s</name><uuid>5d1c6e1e-3b7a-4c56-9d1e-0000000000b3</uuid>"
               "<description>%%s</description><memory unit='MiB'>64</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
               "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
               "<source protocol='rbd' name='%s'><host name='127.0.0.1' port='6789'/></source>"
               "<target dev='vdb' bus='virtio'/></disk></devices></domain>" % (RVM, RIMAGE))
        domains.virsh("define", "/dev/stdin", input_text=xml % "as backed up")
        inv = mpb.inventory(ssh_inventory())
        mpb.run(BACKUP, inv, dict(CEPH_VARS, vmbackup_vms=RVM, vmbackup_repository=repo, vmbackup_quiesce="off"))
        backed = hashlib.sha256(bytes(data)).hexdigest()
        rbd("import", "-", "rbd/h3-rbdvm-tmp", data=os.urandom(MiB))  # another image of ours, untouched
        domains.virsh("define", "/dev/stdin", input_text=xml % "changed since")
        before = rbd_state()
        extra = dict(CEPH_VARS, vmbackup_vm=RVM, vmbackup_repository=repo, vmbackup_restore_force=True)

        res = mpb.run(RESTORE, inv, dict(extra, vmbackup_restore_force=False), expect_rc=2)
        assert "already exists" in res.output and rbd_state() == before

        res = restore_cut(mpb, inv, extra, Cutter(["import-diff", RIMAGE], settle=0.2))
        assert rbd_state() == before, res.output[-4000:]
        names = rbd("ls", "rbd").decode().split()
        assert not [n for n in names if "vmbackup-restore" in n or "vmbackup-old" in n], names

        mpb.run(RESTORE, inv, extra)
        assert hashlib.sha256(rbd("export", RIMAGE, "-")).hexdigest() == backed
        assert "as backed up" in dumpxml(RVM)
        names = rbd("ls", "rbd").decode().split()
        assert not [n for n in names if "vmbackup-restore" in n or "vmbackup-old" in n], names
    finally:
        rbd_cleanup()
