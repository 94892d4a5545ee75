"""File-level restore (backup_files, the restore_files playbook) on real components.

A running TCG guest partitions its disk (a DOS table, one partition) and makes an ext4 file
system on it, writes files with chosen modes and times, and is backed up (full); it changes
them and is backed up again (incremental). libguestfs (its appliance emulated: this machine's
KVM cannot boot a Linux kernel) then lists /etc and extracts a file and a directory from each
backup; contents, modes and times equal what the guest had at each backup's time. Bad input
fails clearly: an unknown backup ID, a path the guest does not have, a disk with no file system.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat

import pytest

from conftest import Playbook, local_inventory

import domains

VM, BLANK = "it-files", "it-files-blank"
BACKUP = "vmbackup.libvirt.backup"
FILES = "vmbackup.libvirt.restore_files"
TCG = {"vmbackup_guestfs_settings": ["force_tcg"]}

MAKE_FS = r"""
set -e
printf 'label: dos\n,,L\n' | sfdisk -q /dev/vda
i=0; while [ ! -b /dev/vda1 ] && [ $i -lt 20 ]; do sleep 0.5; i=$((i+1)); done
mkfs.ext4 -q -F -L itfiles /dev/vda1
mkdir -p /mnt/itfs && mount /dev/vda1 /mnt/itfs
"""

# What the guest writes before each backup: (path, content, mode, mtime as touch -d).
FIRST = [("etc/motd", "hello from the full backup\n", "0644", "2026-01-02 03:04:05"),
         ("etc/app/app.conf", "key=1\n", "0600", "2026-01-03 04:05:06")]
SECOND = [("etc/motd", "hello from the incremental\n", "0640", "2026-02-02 03:04:05"),
          ("etc/app/new.conf", "added=2\n", "0604", "2026-02-03 04:05:06")]


def _guest_write(files):
    script = ["set -e", "cd /mnt/itfs", "mkdir -p etc/app", "chmod 0750 etc/app"]
    for path, content, mode, when in files:
        script += ["printf %%s '%s' > %s" % (content, path), "chmod %s %s" % (mode, path),
                   "touch -d '%s' %s" % (when, path)]
    script += ["ln -sfn app.conf etc/app/current", "sync"]
    domains.guest_exec(VM, ["/bin/sh", "-c", "\n".join(script)], timeout=120, check=True)


def _guest_view(paths):
    """{path: (sha256, octal mode, mtime)} as the guest sees them now."""
    out = {}
    for path in paths:
        script = "sha256sum /mnt/itfs/%s | cut -d' ' -f1; stat -c '%%a %%Y' /mnt/itfs/%s" % (path, path)
        _rc, text, _err = domains.guest_exec(VM, ["/bin/sh", "-c", script], timeout=60, check=True)
        digest, rest = text.strip().split("\n")
        mode, mtime = rest.split()
        out[path] = (digest, int(mode, 8), int(mtime))
    return out


def _local_view(root, rel):
    p = os.path.join(root, rel)
    with open(p, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    st = os.stat(p)
    return (digest, stat.S_IMODE(st.st_mode), int(st.st_mtime))


def _ids(repo, vm):
    return sorted(os.path.basename(os.path.dirname(m)) for m in glob.glob(os.path.join(repo, vm, "*", "manifest.json")))


@pytest.fixture(scope="module")
def backed_up(libvirt, tmp_path_factory):
    """The guest with its file system, two backups of it, and what the guest had at each."""
    wd = tmp_path_factory.mktemp("files")
    repo = str(wd / "repo")
    for name in (VM, BLANK):
        if domains.domain_exists(name):
            domains.destroy_guest(name, delete_storage=True)
    domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 64}], replace=True)
    domains.wait_agent(VM, timeout=180)
    domains.guest_exec(VM, ["/bin/sh", "-c", MAKE_FS], timeout=120, check=True)
    os.makedirs(str(wd / "ansible-tmp"))
    pb = Playbook(str(wd))
    inv = pb.inventory(local_inventory())
    views = []
    for files in (FIRST, SECOND):
        _guest_write(files)
        views.append(_guest_view(["etc/motd", "etc/app/app.conf"] + (["etc/app/new.conf"] if files is SECOND else [])))
        pb.run(BACKUP, inv, {"vmbackup_vms": VM, "vmbackup_repository": repo})
    ids = _ids(repo, VM)
    assert len(ids) == 2
    with open(os.path.join(repo, VM, ids[1], "manifest.json")) as fh:
        assert json.load(fh)["type"] == "incremental"
    yield {"repo": repo, "ids": ids, "views": views, "pb": pb, "inv": inv, "wd": wd}
    for name in (VM, BLANK):
        if domains.domain_exists(name):
            domains.destroy_guest(name, delete_storage=True)


def _files(ctx, extra, expect_rc=0):
    return ctx["pb"].run(FILES, ctx["inv"], dict(TCG, vmbackup_vm=VM, vmbackup_repository=ctx["repo"], **extra),
                         expect_rc=expect_rc, args=["-v"])


@pytest.mark.parametrize("which", [0, 1], ids=["full", "incremental"])
def test_list_and_extract_from_each_backup(backed_up, which):
    ctx = backed_up
    bid = ctx["ids"][which]
    listed = _files(ctx, {"vmbackup_backup": bid, "vmbackup_files_paths": "/etc", "vmbackup_files_recursive": True})
    out = listed.output
    assert "backup %s, disks vda, mounted /dev/sda1 on /" % bid in out
    assert re.search(r"- 0600 +0:0 +6 \S+ /etc/app/app\.conf", out), out[-3000:]
    assert ("/etc/app/new.conf" in out) == (which == 1)
    assert "l 0777" in out and "/etc/app/current -> app.conf" in out

    dest = ctx["wd"] / ("extract-%d" % which)
    dest.mkdir()
    _files(ctx, {"vmbackup_backup": bid, "vmbackup_files_action": "extract",
                 "vmbackup_files_paths": "/etc/motd,/etc/app", "vmbackup_files_dest": str(dest)})
    view = ctx["views"][which]
    assert _local_view(dest, "motd") == view["etc/motd"]
    assert _local_view(dest / "app", "app.conf") == view["etc/app/app.conf"]
    assert stat.S_IMODE(os.stat(dest / "app").st_mode) == 0o750
    assert os.readlink(dest / "app" / "current") == "app.conf"
    if which == 1:
        assert _local_view(dest / "app", "new.conf") == view["etc/app/new.conf"]
    else:
        assert not (dest / "app" / "new.conf").exists()

    # Again into the same place: identical, nothing changes; a file of the user's there is never overwritten.
    again = _files(ctx, {"vmbackup_backup": bid, "vmbackup_files_action": "extract",
                         "vmbackup_files_paths": "/etc/motd", "vmbackup_files_dest": str(dest)})
    assert "unchanged /etc/motd" in again.output and again.changed("localhost") == 0
    if which == 1:
        (dest / "motd").write_text("the user's own\n")
        refused = _files(ctx, {"vmbackup_backup": bid, "vmbackup_files_action": "extract",
                               "vmbackup_files_paths": "/etc/motd", "vmbackup_files_dest": str(dest)}, expect_rc=2)
        assert "already exists and differs" in refused.output
        assert (dest / "motd").read_text() == "the user's own\n"


def test_fetch_to_the_controller(backed_up):
    ctx = backed_up
    dest, fetched = ctx["wd"] / "node-dest", ctx["wd"] / "controller"
    dest.mkdir()
    fetched.mkdir()
    _files(ctx, {"vmbackup_files_action": "extract", "vmbackup_files_paths": "/etc/app",
                 "vmbackup_files_dest": str(dest), "vmbackup_files_fetch_to": str(fetched)})
    assert _local_view(fetched / "app", "new.conf") == ctx["views"][1]["etc/app/new.conf"]
    assert sorted(os.listdir(fetched)) == ["app"] and sorted(os.listdir(dest)) == ["app"]  # archives removed
    # Again, with the user's own files there: nothing on the controller is replaced.
    (fetched / "app" / "new.conf").write_text("the user's own\n")
    dest2 = ctx["wd"] / "node-dest-2"
    dest2.mkdir()
    refused = _files(ctx, {"vmbackup_files_action": "extract", "vmbackup_files_paths": "/etc/app",
                           "vmbackup_files_dest": str(dest2), "vmbackup_files_fetch_to": str(fetched)}, expect_rc=2)
    assert "already exist on the controller; nothing was fetched" in refused.output
    assert (fetched / "app" / "new.conf").read_text() == "the user's own\n" and os.listdir(fetched) == ["app"]


def test_bad_input_fails_clearly(backed_up):
    ctx = backed_up
    res = _files(ctx, {"vmbackup_backup": "20200101T000000Z"}, expect_rc=2)
    assert "backup 20200101T000000Z of VM %s is not in repository" % VM in res.output
    res = _files(ctx, {"vmbackup_files_paths": "/etc/no-such-file"}, expect_rc=2)
    assert "/etc/no-such-file does not exist in the guest's file systems" in res.output

    # A VM whose disk holds no file system at all.
    domains.define_guest(BLANK, [{"target": "vda", "format": "qcow2", "size_mib": 16}], running=False, replace=True)
    ctx["pb"].run(BACKUP, ctx["inv"], {"vmbackup_vms": BLANK, "vmbackup_repository": ctx["repo"]})
    res = ctx["pb"].run(FILES, ctx["inv"], dict(TCG, vmbackup_vm=BLANK, vmbackup_repository=ctx["repo"]), expect_rc=2)
    assert "no file system that can be read was found on these disks" in res.output
