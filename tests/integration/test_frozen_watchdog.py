"""Guests never stay frozen or paused; overlay names that cannot collide (issue 13).

Real components only: one TCG guest (module-scoped) on the test bed's libvirtd, reached over SSH
(endpoint hv1, 127.0.0.11) by real ansible-playbook runs. Its disks: vda ``data.qcow2`` and vdb
``data.raw`` in one directory (older versions gave both the overlay ``data.vmbackup-ID.qcow2``), and
vdc, an ext4 file system mounted in the guest, so that a freeze has something to freeze.

- A play freezes the guest (guest_agent action=freeze, watchdog=BOUND) and then holds the SSH session
  open with a long command; once the freeze is confirmed through the agent, the whole ansible-playbook
  process group is SIGKILLed (the controller dies, its SSH link drops, no ``always:`` runs). Without any
  further run, the guest must be thawed within the bound; the same for action=pause and the VM's state.
- The VM with data.qcow2 and data.raw backs up (full, then an incremental after guest writes to both)
  and restores with equal data on both disks.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from conftest import TB, VENV_BIN, Playbook, image_sha256, local_inventory, ssh_inventory
from conftest import testbed as run_testbed

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
VM = "h4-wd"
RESTORED = "h4-wd-r"
IMAGES = "/var/lib/libvirt/images/h4-wd"
BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
BOUND = 30  # the watchdog's bound in these tests, seconds
SLACK = 120  # for a busy machine: the watchdog's virsh calls may be slow, never the bound itself

pytestmark = pytest.mark.usefixtures("libvirt", "sshd")


def remove_vm(name):
    """Destroy a VM of ours; remove its overlays (and, for the restored VM, its disks)."""
    if not domains.domain_exists(name):
        return
    sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
    domains.virsh("destroy", name, check=False)
    domains.virsh("undefine", name, "--nvram", check=False)
    for src in sources:
        if ".vmbackup-" in os.path.basename(src) or name == RESTORED:
            for path in glob.glob(re.sub(r"\.vmbackup-.*$", "", src) + "*"):
                os.unlink(path)


def watchdogs_of(vm):
    """PIDs of processes whose command line is a watchdog of ``vm``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"vmbackup-watchdog" in argv and vm.encode() in argv:
            found.append(int(entry))
    return found


def freeze_status():
    return domains.agent_command(VM, {"execute": "guest-fsfreeze-status"}, timeout=10)


def wait_for(what, predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """ansible-playbook runs, with an SSH inventory (hv1) and a local one."""
    workdir = str(tmp_path_factory.mktemp("h4-wd"))
    os.makedirs(os.path.join(workdir, "ansible-tmp"), exist_ok=True)
    runner = Playbook(workdir)
    runner.ssh_inv = runner.inventory(ssh_inventory())
    runner.local_inv = runner.inventory(local_inventory())
    os.makedirs(IMAGES, exist_ok=True)
    yield runner
    if os.path.isdir(IMAGES) and not os.listdir(IMAGES):
        os.rmdir(IMAGES)


@pytest.fixture(scope="module")
def bed(pb):
    """The TCG guest with data.qcow2, data.raw and a mounted ext4 on vdc; yields the playbook runner."""
    remove_vm(RESTORED)
    remove_vm(VM)
    for name in ("data.qcow2", "data.raw", "fs.qcow2"):
        for path in glob.glob(os.path.join(IMAGES, name + "*")):
            os.unlink(path)
    domains.define_guest(VM, [
        {"target": "vda", "format": "qcow2", "size_mib": 32, "path": os.path.join(IMAGES, "data.qcow2")},
        {"target": "vdb", "format": "raw", "size_mib": 32, "path": os.path.join(IMAGES, "data.raw")},
        {"target": "vdc", "format": "qcow2", "size_mib": 32, "path": os.path.join(IMAGES, "fs.qcow2")},
    ], replace=True)
    domains.wait_agent(VM, timeout=300)
    # A real file system for the freeze (the guest's root is 9p + tmpfs, which cannot be frozen).
    domains.guest_exec(VM, ["/bin/sh", "-c", "mkfs.ext4 -q -F /dev/vdc && mkdir -p /run/h4fs && "
                                             "mount /dev/vdc /run/h4fs && echo data > /run/h4fs/f && sync"],
                       timeout=240, check=True)
    yield pb
    for pid in watchdogs_of(VM):  # only if a test failed half-way
        os.killpg(pid, signal.SIGKILL)
    remove_vm(RESTORED)
    remove_vm(VM)
    for name in ("data.qcow2", "data.raw", "fs.qcow2"):
        for path in glob.glob(os.path.join(IMAGES, name + "*")):
            os.unlink(path)


def start_play(pb, name, tasks):
    """ansible-playbook of ``tasks`` on hv1 over SSH, in its own session (so all of it can be killed)."""
    play = os.path.join(pb.workdir, "%s.yml" % name)
    with open(play, "w") as fh:
        json.dump([{"name": name, "hosts": "hv1", "gather_facts": False, "tasks": tasks}], fh)
    log = os.path.join(pb.workdir, "%s.log" % name)
    with open(log, "w") as fh:
        proc = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", pb.ssh_inv, play],
                                stdout=fh, stderr=subprocess.STDOUT, env=pb.env, cwd=pb.workdir,
                                start_new_session=True)
    proc.log = log
    return proc


def output(proc):
    with open(proc.log) as fh:
        return fh.read()


HOLD = {"name": "Hold the SSH session open", "ansible.builtin.command": {"argv": ["sleep", "3600"]}}


def kill_when(proc, what, predicate, timeout=600):
    """SIGKILL the play's whole process group (controller and ssh) once ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the play ended (rc=%s) before %s:\n%s"
                                 % (proc.returncode, what, output(proc)[-4000:]))
        if predicate() and "TASK [Hold the SSH session open]" in output(proc):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return time.monotonic()
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("timed out waiting for %s:\n%s" % (what, output(proc)[-4000:]))


def test_killed_while_frozen_is_thawed_within_the_bound(bed):
    """ansible-playbook SIGKILLed while the guest is frozen: thawed by the watchdog, without any run."""
    assert freeze_status() == "thawed"
    proc = start_play(bed, "h4-freeze", [
        {"name": "Freeze",
         "vmbackup.libvirt.guest_agent": {"name": VM, "action": "freeze", "timeout": 60, "watchdog": BOUND}},
        HOLD,
    ])
    killed = kill_when(proc, "the guest to be frozen", lambda: freeze_status() == "frozen")
    # Still frozen after the controller died: nothing but the watchdog can thaw it now.
    assert freeze_status() == "frozen"
    assert len(watchdogs_of(VM)) == 1
    wait_for("the watchdog to thaw the guest", lambda: freeze_status() == "thawed", BOUND + SLACK)
    thawed_after = time.monotonic() - killed
    # The guest's file system takes writes again; the watchdog has ended.
    domains.guest_exec(VM, ["/bin/sh", "-c", "echo more >> /run/h4fs/f && sync"], timeout=60, check=True)
    wait_for("the watchdog to end", lambda: not watchdogs_of(VM), 60)
    print("\n[h4] frozen guest thawed %.1f s after the controller was killed (bound %d s)" % (thawed_after, BOUND))


def test_killed_while_paused_is_resumed_within_the_bound(bed):
    """ansible-playbook SIGKILLed while the VM is paused: resumed by the watchdog, without any run."""
    assert domains.domstate(VM) == "running"
    proc = start_play(bed, "h4-pause", [
        {"name": "Pause", "vmbackup.libvirt.guest_agent": {"name": VM, "action": "pause", "watchdog": BOUND}},
        HOLD,
    ])
    killed = kill_when(proc, "the VM to be paused", lambda: domains.domstate(VM) == "paused")
    assert domains.domstate(VM) == "paused"
    assert len(watchdogs_of(VM)) == 1
    wait_for("the watchdog to resume the VM", lambda: domains.domstate(VM) == "running", BOUND + SLACK)
    resumed_after = time.monotonic() - killed
    domains.wait_agent(VM, timeout=120)
    wait_for("the watchdog to end", lambda: not watchdogs_of(VM), 60)
    print("\n[h4] paused VM resumed %.1f s after the controller was killed (bound %d s)" % (resumed_after, BOUND))


def test_a_live_run_disarms_the_watchdog(bed):
    """freeze then thaw (and pause then resume) in one run: the watchdogs are disarmed, none fires later."""
    play = os.path.join(bed.workdir, "h4-disarm.yml")
    with open(play, "w") as fh:
        json.dump([{"name": "h4-disarm", "hosts": "hv1", "gather_facts": False, "tasks": [
            {"name": "Freeze", "register": "frozen",
             "vmbackup.libvirt.guest_agent": {"name": VM, "action": "freeze", "watchdog": BOUND}},
            {"name": "Thaw", "register": "thawed", "vmbackup.libvirt.guest_agent": {"name": VM, "action": "thaw"}},
            {"name": "Pause", "register": "paused",
             "vmbackup.libvirt.guest_agent": {"name": VM, "action": "pause", "watchdog": BOUND}},
            {"name": "Resume", "register": "resumed",
             "vmbackup.libvirt.guest_agent": {"name": VM, "action": "resume"}},
            {"name": "Check", "ansible.builtin.assert": {"that": [
                "frozen is changed and frozen.watchdog.pid in thawed.watchdog.disarmed",
                "not thawed.watchdog.fired",
                "paused is changed and paused.watchdog.pid in resumed.watchdog.disarmed",
                "not resumed.watchdog.fired"]}},
        ]}], fh)
    res = bed.run(play, bed.ssh_inv)
    assert "failed=0" in res.output
    assert not watchdogs_of(VM)
    assert freeze_status() == "thawed" and domains.domstate(VM) == "running"


def test_same_stem_disks_back_up_and_restore(bed):
    """data.qcow2 and data.raw in one directory: full, incremental after writes to both, restore equal."""
    repo = os.path.join(bed.workdir, "repo")
    base = {"vmbackup_vms": VM, "vmbackup_repository": repo}
    domains.guest_write(VM, "/dev/vda", 0, 4 * MiB, seed=41)
    domains.guest_write(VM, "/dev/vdb", 2 * MiB, 4 * MiB, seed=42)
    bed.run(BACKUP, bed.ssh_inv, base)
    chain = dict(domains.domblklist(VM))
    assert chain["vda"] != chain["vdb"]
    domains.guest_write(VM, "/dev/vda", 12 * MiB, 2 * MiB, seed=43)
    domains.guest_write(VM, "/dev/vdb", 20 * MiB, 2 * MiB, seed=44)
    expected = {t: domains.guest_sha256(VM, "/dev/" + t) for t in ("vda", "vdb")}
    bed.run(BACKUP, bed.ssh_inv, base)
    found = []
    for path in sorted(glob.glob(os.path.join(repo, VM, "*", "manifest.json"))):
        with open(path) as fh:
            found.append(json.load(fh))
    assert [m["type"] for m in found] == ["full", "incremental"], found
    second = found[1]
    chain = dict(domains.domblklist(VM))
    assert chain["vda"] == os.path.join(IMAGES, "data.qcow2.vmbackup-%s.vda.qcow2" % second["backup_id"]), chain
    assert chain["vdb"] == os.path.join(IMAGES, "data.raw.vmbackup-%s.vdb.qcow2" % second["backup_id"]), chain
    remove_vm(RESTORED)
    try:
        bed.run(RESTORE, bed.local_inv, {"vmbackup_vm": VM, "vmbackup_backup": second["backup_id"],
                                         "vmbackup_restore_name": RESTORED, "vmbackup_repository": repo})
        restored = dict(domains.domblklist(RESTORED))
        assert image_sha256(restored["vda"], "qcow2") == expected["vda"]
        assert image_sha256(restored["vdb"], "raw") == expected["vdb"]
    finally:
        remove_vm(RESTORED)


# --- the backup role's own path: a running VM with a file disk and an RBD disk is paused ------------------
# (a domain with no OS, idling in SeaBIOS, and no guest agent: vmbackup_quiesce=off pauses it)

CEPH = os.path.join(TB, "ceph")
CEPH_CONF = os.path.join(CEPH, "ceph.conf")
CEPH_KEYRING = os.path.join(CEPH, "ceph.client.admin.keyring")
RBD_VM = "h4-wd-rbd"
RBD_IMAGE = "rbd/h4-wd-rbd-vdb"
RBD_SECRET = str(uuid.uuid5(uuid.NAMESPACE_URL, "vmbackup-test-h4-watchdog-secret"))


def rbd(*args, data=None, check=True):
    cp = subprocess.run(["rbd", "-c", CEPH_CONF, "--id", "admin", "--keyring", CEPH_KEYRING, *args],
                        input=data, capture_output=True, check=False, timeout=300)
    if check and cp.returncode != 0:
        raise AssertionError("rbd %s failed: %s" % (" ".join(args), cp.stderr.decode()))
    return cp.stdout


def remove_rbd_vm():
    remove_vm(RBD_VM)
    rbd("snap", "purge", RBD_IMAGE, check=False)
    rbd("rm", RBD_IMAGE, check=False)
    domains.virsh("secret-undefine", RBD_SECRET, check=False)
    for path in glob.glob(os.path.join(IMAGES, "rbdvm-vda.qcow2*")):
        os.unlink(path)


@pytest.fixture(scope="module")
def rbd_vm(pb):
    run_testbed("ceph.sh", "up", timeout=240)
    remove_rbd_vm()
    rbd("create", "--size", "32M", RBD_IMAGE)
    qcow = os.path.join(IMAGES, "rbdvm-vda.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M"], check=True)
    xml = ("<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>client.admin h4</name>"
           "</usage></secret>" % RBD_SECRET)
    domains.virsh("secret-define", "/dev/stdin", input_text=xml)
    key = subprocess.run(["ceph", "-c", CEPH_CONF, "--id", "admin", "--keyring", CEPH_KEYRING, "auth", "get-key",
                          "client.admin"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    keyfile = os.path.join(pb.workdir, "h4.key")
    with open(os.open(keyfile, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(key)
    try:
        domains.virsh("secret-set-value", "--secret", RBD_SECRET, "--file", keyfile)
    finally:
        os.unlink(keyfile)
    xml = """<domain type='kvm'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type arch='x86_64'>hvm</type></os>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>
          <target dev='vda' bus='virtio'/></disk>
        <disk type='network' device='disk'><driver name='qemu' type='raw'/>
          <auth username='admin'><secret type='ceph' uuid='%s'/></auth>
          <source protocol='rbd' name='%s'><host name='127.0.0.1' port='6789'/></source>
          <target dev='vdb' bus='virtio'/></disk>
      </devices></domain>""" % (RBD_VM, qcow, RBD_SECRET, RBD_IMAGE)
    domains.virsh("define", "/dev/stdin", input_text=xml)
    domains.virsh("start", RBD_VM)
    yield {"vmbackup_vms": RBD_VM, "vmbackup_quiesce": "off", "vmbackup_ceph_conf": CEPH_CONF,
           "vmbackup_ceph_id": "admin", "vmbackup_ceph_keyring": CEPH_KEYRING}
    remove_rbd_vm()


def test_backup_role_pauses_under_a_watchdog_and_disarms_it(pb, rbd_vm):
    """The role pauses a file+RBD VM through guest_agent (watched), resumes it, and leaves no watchdog."""
    repo = os.path.join(pb.workdir, "repo-rbd")
    res = pb.run(BACKUP, pb.ssh_inv, dict(rbd_vm, vmbackup_repository=repo), args=["-v"])
    # The pause armed a watchdog and the resume disarmed that one (the task results, printed with -v).
    armed = re.search(r'"state": "paused", "watchdog": \{"deadline": \d+, "pid": (\d+)', res.output)
    assert armed, res.output[-6000:]
    assert re.search(r'"disarmed": \[%s\], "fired": false' % armed.group(1), res.output), res.output[-6000:]
    assert domains.domstate(RBD_VM) == "running"
    assert not watchdogs_of(RBD_VM)
    assert len(glob.glob(os.path.join(repo, RBD_VM, "*", "manifest.json"))) == 1


def test_backup_role_fails_when_the_watchdog_fired_before_the_last_snapshot(pb, rbd_vm):
    """A bound shorter than the snapshots: the watchdog resumes the VM mid-way, so the backup is not kept."""
    repo = os.path.join(pb.workdir, "repo-rbd-short")
    res = pb.run(BACKUP, pb.ssh_inv, dict(rbd_vm, vmbackup_repository=repo, backup_watchdog_timeout=1),
                 expect_rc=2)
    assert "the watchdog resumed it after backup_watchdog_timeout=1 s" in res.output, res.output[-6000:]
    assert "raise backup_watchdog_timeout" in res.output
    assert domains.domstate(RBD_VM) == "running"
    assert not glob.glob(os.path.join(repo, RBD_VM, "*", "manifest.json"))
    wait_for("the watchdog to end", lambda: not watchdogs_of(RBD_VM), 60)
