"""Locks that hold and a repository that cannot hurt the hypervisor, with real ansible-playbook runs.

One shut-off guest (h5-safe1, one 32 MiB qcow2 disk) is backed up three times by the backup
playbook (full, incremental, full: vmbackup_full_every=2); the tests work on that repository
or on copies of it:

- a prune started while a restore of the same VM is running (the restore is held, for real,
  by the target VM's hypervisor lock, after it took its reader's lock and selected its backup)
  fails clearly without deleting anything, or waits and prunes after the restore, which restores
  equal data;
- copies of the repository tampered with (a manifest naming an absolute path or ``../``, a
  qcow2 delta whose backing name points at a canary file outside the repository or at another
  VM, a backup ID with ``/``) are refused by restore, verify and prune; the canary's content,
  atime and mtime are unchanged and no VM or disk is created;
- an unreadable manifest marks its backup damaged; the VM's other backups list, verify and prune.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import VENV_BIN, Playbook, image_sha256, local_inventory

import domains  # tests/testbed/domains.py

MiB = 1024 * 1024
VM = "h5-safe1"
RESTORED = "h5-safe1-r"
pytestmark = pytest.mark.usefixtures("libvirt")


def qemu_io(path, fmt, cmd):
    subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, path], check=True, capture_output=True)


def ids(repo, vm=VM):
    return sorted(e for e in os.listdir(os.path.join(repo, vm)) if not e.startswith("."))


def remove_vm(name):
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        for path in sources:
            for f in glob.glob(path.split(".vmbackup-")[0].rsplit(".", 1)[0] + ".*"):
                os.unlink(f)


def write_playbook(workdir, name, tasks):
    path = os.path.join(workdir, name)
    with open(path, "w") as fh:
        fh.write("---\n- hosts: localhost\n  gather_facts: false\n  tasks:\n" + tasks)
    return path


def stamp(path):
    """(atime, mtime) of a file, without reading it (a read would change its atime)."""
    st = os.stat(path)
    return st.st_atime_ns, st.st_mtime_ns


def content(path):
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The repository of three real backups of h5-safe1, and each backup's guest-visible content."""
    work = str(tmp_path_factory.mktemp("h5-safety"))
    os.makedirs(os.path.join(work, "ansible-tmp"), exist_ok=True)
    playbook = Playbook(work)
    repo = os.path.join(work, "repo")
    remove_vm(VM)
    remove_vm(RESTORED)
    info = domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 32}], running=False,
                                replace=True)
    inv = playbook.inventory(local_inventory())
    states = {}
    try:
        for step in range(3):
            top = dict(domains.domblklist(VM))["vda"]
            qemu_io(top, "qcow2", "write -P %d %dM 2M" % (0x50 + step, 2 + 4 * step))
            state = image_sha256(top, "qcow2")
            playbook.run("vmbackup.libvirt.backup", inv,
                         {"vmbackup_vms": VM, "vmbackup_repository": repo, "vmbackup_full_every": 2})
            states[ids(repo)[-1]] = state
        types = []
        for backup_id in ids(repo):
            with open(os.path.join(repo, VM, backup_id, "manifest.json")) as fh:
                types.append(json.load(fh)["type"])
        assert types == ["full", "incremental", "full"]
        yield {"playbook": playbook, "inv": inv, "repo": repo, "work": work, "content": states}
    finally:
        remove_vm(RESTORED)
        remove_vm(VM)
        if info.paths and os.path.exists(info.paths[0]):
            os.unlink(info.paths[0])


def copy_repo(built, name):
    dest = os.path.join(built["work"], name)
    shutil.copytree(built["repo"], dest, symlinks=True)
    shutil.rmtree(os.path.join(dest, ".locks"), ignore_errors=True)
    return dest


def test_prune_while_a_restore_reads_fails_or_waits_and_deletes_nothing_it_reads(built):
    playbook, inv, work = built["playbook"], built["inv"], built["work"]
    repo = copy_repo(built, "repo-prune")
    b1, b2, b3 = ids(repo)
    images = {b: content(os.path.join(repo, VM, b, "vda.qcow2")) for b in (b1, b2)}
    # The target VM's hypervisor lock is held by another (live-looking) run: the restore takes its
    # reader's lock on the backups, selects b2 (chain b1, b2) and then waits here.
    lock_dir = os.path.join(work, "hv-locks")
    os.makedirs(lock_dir, exist_ok=True)
    target_lock = os.path.join(lock_dir, RESTORED + ".lock")
    with open(target_lock, "w") as fh:
        json.dump({"owner": "h5-test-holder", "purpose": "a test holding the target", "created": time.time(),
                   "host": "h5-elsewhere"}, fh)
    log_path = os.path.join(work, "restore.log")
    extra = {"vmbackup_vm": VM, "vmbackup_backup": b2, "vmbackup_restore_name": RESTORED,
             "vmbackup_repository": repo, "restore_lock_dir": lock_dir, "restore_lock_wait": 600}
    remove_vm(RESTORED)
    with open(log_path, "w") as log:
        restore = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inv,
                                    "vmbackup.libvirt.restore", "-e", json.dumps(extra)],
                                   stdout=log, stderr=subprocess.STDOUT, env=playbook.env, cwd=work)
    prune_wait = None
    try:
        deadline = time.time() + 900
        while "Lock the target VM on the hypervisor" not in open(log_path).read():
            assert restore.poll() is None, "the restore ended early:\n" + open(log_path).read()[-6000:]
            assert time.time() < deadline, "the restore never reached the target lock"
            time.sleep(1)
        time.sleep(3)  # inside the waiting lock task
        assert restore.poll() is None

        # keep_last 1 keeps b3 (a full) only: b1 and b2, which the restore reads, would go.
        policy = {"vmbackup_repository": repo, "vmbackup_keep_last": 1, "vmbackup_vms": VM}
        res = playbook.run("vmbackup.libvirt.prune", inv, dict(policy, vmbackup_lock_wait=0), expect_rc=2)
        assert "prune left 1 VM(s) alone because another run holds them" in res.output
        assert "restore of VM %s" % VM in res.output and "shared" in res.output
        assert ids(repo) == [b1, b2, b3]
        assert {b: content(os.path.join(repo, VM, b, "vda.qcow2")) for b in (b1, b2)} == images

        # A prune that may wait: it waits for the restore, then prunes.
        with open(os.path.join(work, "prune.log"), "w") as plog:
            prune_wait = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inv,
                                           "vmbackup.libvirt.prune", "-e",
                                           json.dumps(dict(policy, vmbackup_lock_wait=900))],
                                          stdout=plog, stderr=subprocess.STDOUT, env=playbook.env, cwd=work)
        time.sleep(15)
        assert prune_wait.poll() is None, "the prune did not wait:\n" + open(os.path.join(work, "prune.log")).read()
        assert ids(repo) == [b1, b2, b3]
        os.unlink(target_lock)  # the restore goes on, reading b1 and b2
        assert restore.wait(900) == 0, open(log_path).read()[-8000:]
        restored = dict(domains.domblklist(RESTORED))["vda"]
        assert image_sha256(restored, "qcow2") == built["content"][b2]
        assert prune_wait.wait(900) == 0, open(os.path.join(work, "prune.log")).read()[-8000:]
        assert ids(repo) == [b3]
    finally:
        for proc in (restore, prune_wait):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        remove_vm(RESTORED)


def tamper(built, canary_dir):
    """A copy of the repository whose VMs are each tampered with in one way."""
    repo = copy_repo(built, "repo-tampered")
    b1, b2, b3 = ids(repo)
    src = os.path.join(repo, VM)

    def clone(vm):
        dest = os.path.join(repo, vm)
        shutil.copytree(src, dest)
        for backup_id in ids(repo, vm):
            path = os.path.join(dest, backup_id, "manifest.json")
            with open(path) as fh:
                man = json.load(fh)
            man["vm"] = vm
            with open(path, "w") as fh:
                json.dump(man, fh)
        return dest

    def edit(vm, backup_id, change):
        path = os.path.join(repo, vm, backup_id, "manifest.json")
        with open(path) as fh:
            man = json.load(fh)
        change(man)
        with open(path, "w") as fh:
            json.dump(man, fh)

    canary = os.path.join(canary_dir, "canary.qcow2")
    # h5-t-abs: b3's disk file is an absolute path to the canary.
    clone("h5-t-abs")
    edit("h5-t-abs", b3, lambda m: m["disks"][0].update(file=canary))
    # h5-t-dotdot: b3's disk file climbs out with ../
    clone("h5-t-dotdot")
    rel = os.path.relpath(canary, os.path.join(repo, "h5-t-dotdot", b3))
    edit("h5-t-dotdot", b3, lambda m: m["disks"][0].update(file=rel))
    # h5-t-backing: b2's delta names the canary as its backing file (header only: qemu-img rebase -u).
    clone("h5-t-backing")
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", canary, "-F", "qcow2",
                    os.path.join(repo, "h5-t-backing", b2, "vda.qcow2")], check=True, capture_output=True)
    # h5-t-othervm: b2's delta is backed by another VM's image (h5-t-abs's b1), by a relative name.
    clone("h5-t-othervm")
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "../../h5-t-abs/%s/vda.qcow2" % b1,
                    "-F", "qcow2", os.path.join(repo, "h5-t-othervm", b2, "vda.qcow2")],
                   check=True, capture_output=True)
    # h5-t-etc: b2's delta is backed by a file under /etc, read as raw.
    clone("h5-t-etc")
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
                    os.path.join(repo, "h5-t-etc", b2, "vda.qcow2")], check=True, capture_output=True)
    return repo, canary, (b1, b2, b3)


def test_a_tampered_repository_is_refused_and_nothing_outside_is_read(built, tmp_path):
    playbook, inv = built["playbook"], built["inv"]
    canary_dir = str(tmp_path / "h5-canary")
    os.makedirs(canary_dir)
    canary = os.path.join(canary_dir, "canary.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", canary, "32M"], check=True)
    qemu_io(canary, "qcow2", "write -P 0x77 0 1M")
    repo, canary, (b1, b2, b3) = tamper(built, canary_dir)
    data = content(canary)
    old = time.time() - 3 * 86400  # relatime updates an atime older than a day: any read shows
    os.utime(canary, (old, old))
    before = stamp(canary)
    cases = {"h5-t-abs": (b3, "not a plain file name"), "h5-t-dotdot": (b3, "not a plain file name"),
             "h5-t-backing": (b2, "has the backing file '%s'" % canary),
             "h5-t-othervm": (b2, "has the backing file '../../h5-t-abs/%s/vda.qcow2'" % b1),
             "h5-t-etc": (b2, "has the backing file '/etc/hostname'")}
    try:
        for vm, (backup_id, why) in cases.items():
            res = playbook.run("vmbackup.libvirt.restore", inv,
                               {"vmbackup_vm": vm, "vmbackup_backup": backup_id, "vmbackup_restore_name": RESTORED,
                                "vmbackup_repository": repo}, expect_rc=2)
            assert why in res.output, res.output[-4000:]
            assert "cannot be used" in res.output or "is damaged" in res.output
            assert not domains.domain_exists(RESTORED)
            assert stamp(canary) == before, "the restore of %s read or wrote the canary" % vm
        # A backup ID with a '/' (and one that climbs into another VM).
        for bad in ("%s/../%s" % (b3, b1), "../h5-t-abs/%s" % b1):
            res = playbook.run("vmbackup.libvirt.restore", inv,
                               {"vmbackup_vm": VM, "vmbackup_backup": bad, "vmbackup_restore_name": RESTORED,
                                "vmbackup_repository": repo}, expect_rc=2)
            assert "invalid backup %r" % bad in res.output.replace('\\"', '"').replace("\\'", "'"), res.output[-3000:]
            res = playbook.run("vmbackup.libvirt.verify", inv, {"vmbackup_vm": VM, "vmbackup_backup": bad,
                                                                "vmbackup_repository": repo}, expect_rc=2)
            assert "invalid backup" in res.output
        assert not domains.domain_exists(RESTORED)

        # verify finds and marks each tampered backup, reading nothing outside.
        res = playbook.run("vmbackup.libvirt.verify", inv, {"vmbackup_repository": repo}, expect_rc=2)
        for vm, (backup_id, why) in cases.items():
            assert "%s/%s: " % (vm, backup_id) in res.output and why in res.output, vm
        assert stamp(canary) == before, "verify read or wrote the canary"
        assert "%s/%s" % (VM, b1) not in res.output  # the untouched VM checks out
        # prune works on the rest and leaves what it cannot trust alone.
        res = playbook.run("vmbackup.libvirt.prune", inv, {"vmbackup_repository": repo, "vmbackup_keep_last": 1})
        assert "h5-t-abs" in res.output and "left alone" in res.output
        # h5-t-abs: b3 is left alone (untrusted), b2 is then the newest readable one and keeps b1.
        assert ids(repo, "h5-t-abs") == [b1, b2, b3]
        assert stamp(canary) == before, "prune read or wrote the canary outside the repository"
        assert content(canary) == data
    finally:
        remove_vm(RESTORED)


def test_an_unreadable_manifest_marks_one_backup_and_blocks_nothing_else(built):
    playbook, inv, work = built["playbook"], built["inv"], built["work"]
    repo = copy_repo(built, "repo-unreadable")
    b1, b2, b3 = ids(repo)
    with open(os.path.join(repo, VM, b2, "manifest.json"), "w") as fh:
        fh.write('{"backup_id": "%s", "disks": ' % b2)  # cut short
    listing = write_playbook(work, "list.yml", """
    - vmbackup.libvirt.backup_repo:
        path: %s
        vm: %s
        action: list
      register: listed
    - ansible.builtin.copy:
        content: "{{ listed.backups | to_json }}"
        dest: %s/listed.json
""" % (repo, VM, work))
    playbook.run(listing, inv)
    with open(os.path.join(work, "listed.json")) as fh:
        listed = {b["backup_id"]: b for b in json.load(fh)}
    assert sorted(listed) == [b1, b2, b3]
    assert listed[b2]["status"] == "unreadable" and listed[b2]["damaged"] and listed[b2]["problems"]
    assert listed[b1]["usable"] and listed[b3]["usable"]
    res = playbook.run("vmbackup.libvirt.verify", inv, {"vmbackup_repository": repo, "vmbackup_vm": VM}, expect_rc=2)
    assert "verify found 1 damaged backup(s)" in res.output and "%s/%s" % (VM, b2) in res.output
    assert os.path.exists(os.path.join(repo, VM, b2, "damaged.json"))
    res = playbook.run("vmbackup.libvirt.prune", inv, {"vmbackup_repository": repo, "vmbackup_keep_last": 1})
    assert "left alone" in res.output
    assert ids(repo) == [b2, b3]  # b1 pruned (b3 is a full), the damaged b2 left alone


# --- restore targets that only the repository names (h1-confine) --------------------------------

CONFINED_VM = "h1-conf1"  # a clone of h5-safe1's backups under a name that is not defined anywhere


@pytest.fixture
def forged(built, request):
    """A repository copy where CONFINED_VM's manifests say its disk came from a path we choose,
    and a scratch directory outside every allowed directory (/var/tmp/h1-conf-PID-outside)."""
    repo = copy_repo(built, "repo-confine-" + request.node.name[5:45])
    shutil.copytree(os.path.join(repo, VM), os.path.join(repo, CONFINED_VM))
    outside = "/var/tmp/h1-conf-%d-outside" % os.getpid()
    shutil.rmtree(outside, ignore_errors=True)
    os.makedirs(outside)
    remove_vm(CONFINED_VM)

    def source(path):
        for backup_id in ids(repo, CONFINED_VM):
            man_path = os.path.join(repo, CONFINED_VM, backup_id, "manifest.json")
            with open(man_path) as fh:
                man = json.load(fh)
            man["vm"] = CONFINED_VM
            man["disks"][0]["source"] = path
            with open(man_path, "w") as fh:
                json.dump(man, fh)

    try:
        yield {"repo": repo, "outside": outside, "source": source, "latest": ids(repo, CONFINED_VM)[-1]}
    finally:
        remove_vm(CONFINED_VM)
        shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)


def restore_confined(built, forged, expect_rc=0, **extra):
    return built["playbook"].run("vmbackup.libvirt.restore", built["inv"],
                                 dict({"vmbackup_vm": CONFINED_VM, "vmbackup_repository": forged["repo"]}, **extra),
                                 expect_rc=expect_rc)


def test_a_new_file_only_the_manifest_names_outside_the_allowed_dirs_is_refused(built, forged):
    evil = os.path.join(forged["outside"], "x.qcow2")
    forged["source"](evil)
    res = restore_confined(built, forged, expect_rc=2)
    out = res.output.replace("\\n", " ")
    assert "restore of VM %s" % CONFINED_VM in out and "disk vda: target %s, from the backup's manifest" % evil in out, \
        out[-4000:]
    assert "outside the allowed directories" in out and "nothing was written" in out
    assert "vmbackup_restore_disk_map" in out and "vmbackup_restore_allowed_dirs" in out
    assert os.listdir(forged["outside"]) == []  # nothing created there, not even a staged file
    assert not domains.domain_exists(CONFINED_VM)
    # A path that climbs out of an allowed directory is judged where it leads.
    forged["source"]("/var/lib/libvirt/images/../../../../%s/y.qcow2" % forged["outside"].strip("/"))
    res = restore_confined(built, forged, expect_rc=2)
    assert "not a plain absolute path" in res.output, res.output[-4000:]
    assert os.listdir(forged["outside"]) == []
    assert not domains.domain_exists(CONFINED_VM)


def test_a_forced_restore_over_an_existing_file_that_is_no_disk_of_the_vm_is_refused(built, forged):
    victim = os.path.join(forged["outside"], "victim.img")
    data = os.urandom(MiB)
    with open(victim, "wb") as fh:
        fh.write(data)
    forged["source"](victim)
    res = restore_confined(built, forged, expect_rc=2, vmbackup_restore_force=True)
    out = res.output.replace("\\n", " ")
    assert "disk vda: target %s, from the backup's manifest" % victim in out, out[-4000:]
    assert "not replaced, not even with restore_force" in out and "no VM %s is defined" % CONFINED_VM in out
    assert content(victim) == data
    assert os.listdir(forged["outside"]) == ["victim.img"]  # no staged or aside file beside it
    assert not domains.domain_exists(CONFINED_VM)


def test_the_same_target_mapped_or_in_an_allowed_dir_restores(built, forged):
    evil = os.path.join(forged["outside"], "x.qcow2")
    forged["source"](evil)
    want = built["content"][forged["latest"]]
    mapped = {"vda": {"type": "file", "path": evil, "format": "qcow2"}}
    for extra in ({"vmbackup_restore_disk_map": mapped}, {"vmbackup_restore_allowed_dirs": [forged["outside"]]}):
        restore_confined(built, forged, **extra)
        assert dict(domains.domblklist(CONFINED_VM))["vda"] == evil, extra
        assert image_sha256(evil, "qcow2") == want, extra
        remove_vm(CONFINED_VM)
        assert not os.path.exists(evil)
