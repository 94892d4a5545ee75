# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-level restore (backup_files): its decisions, and GuestFiles against a stand-in for the
libguestfs handle (the library boundary: an in-memory guest tree; tar runs for real)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _backup_files as bf
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError

MANIFEST = {"backup_id": "20261206T010000Z", "vm": "web1", "disks": [
    {"target": "vda", "backend": "file", "file": "vda.qcow2"},
    {"target": "vdb", "backend": "block", "file": "vdb.qcow2"},
    {"target": "vdc", "backend": "rbd", "file": "vdc.rbddiff"},
    {"target": "vdd", "backend": "file", "file": "vdd.img.gz"},  # a form nothing reads file by file
]}


@pytest.mark.parametrize("path, expected", [
    ("/", "/"), ("/etc", "/etc"), ("/etc/", "/etc"), ("//etc//x", "/etc/x"), ("/../../etc", "/etc"),
    ("/a/./b/../c", "/a/c"),
])
def test_guest_path(path, expected):
    assert bf.guest_path(path) == expected


@pytest.mark.parametrize("path", ["", "etc", "./etc", "/etc\0x"])
def test_guest_path_refuses(path):
    with pytest.raises(VmbackupError, match="must be absolute"):
        bf.guest_path(path)


@pytest.mark.parametrize("wanted, opened, left_out, error", [
    (None, ["vda", "vdb", "vdc"], ["vdd"], None),
    (["vdb"], ["vdb"], [], None),
    (["vdc"], ["vdc"], [], None),  # an RBD diff chain is applied into a raw file first
    (["vdd"], None, None, "disk vdd is stored as unknown"),
    (["vdz"], None, None, "has no disk vdz (it has vda, vdb, vdc, vdd)"),
], ids=["all_openable", "one_named", "rbd_named", "unknown_named", "missing_named"])
def test_openable_disks(wanted, opened, left_out, error):
    if error:
        with pytest.raises(VmbackupError, match=error.replace("(", r"\(").replace(")", r"\)")):
            bf.openable_disks(MANIFEST, wanted)
        return
    got, out = bf.openable_disks(MANIFEST, wanted)
    assert [d["target"] for d in got] == opened
    assert [d["target"] for d in out] == left_out


def test_openable_disks_none_left():
    only_unknown = dict(MANIFEST, disks=[MANIFEST["disks"][3]])
    with pytest.raises(VmbackupError, match="no disk that file-level restore can open"):
        bf.openable_disks(only_unknown)


@pytest.mark.parametrize("roots, points, fss, chosen, plan, error", [
    # inspection found the OS: its mount points, / first
    (["/dev/sda2"], {"/dev/sda2": {"/boot": "/dev/sda1", "/": "/dev/sda2", "/var": "/dev/vg/var"}}, {}, None,
     [("/", "/dev/sda2"), ("/var", "/dev/vg/var"), ("/boot", "/dev/sda1")], None),
    # no OS, one file system beside swap: that one
    ([], {}, {"/dev/sda1": "ext4", "/dev/sda2": "swap"}, None, [("/", "/dev/sda1")], None),
    # no OS, two: the user must choose, and is told which there are
    ([], {}, {"/dev/sda1": "ext4", "/dev/sdb1": "xfs"}, None, None,
     "several file systems \\(/dev/sda1 \\(ext4\\), /dev/sdb1 \\(xfs\\)\\): name the one"),
    # chosen
    ([], {}, {"/dev/sda1": "ext4", "/dev/sdb1": "xfs"}, "/dev/sdb1", [("/", "/dev/sdb1")], None),
    ([], {}, {"/dev/sda1": "ext4"}, "/dev/sdz9", None, "file system /dev/sdz9 is not on these disks"),
    # nothing readable
    ([], {}, {"/dev/sda": "unknown"}, None, None, "no file system that can be read"),
    ([], {}, {}, None, None, "no file system that can be read was found on these disks \\(found: nothing\\)"),
    (["/dev/sda1", "/dev/sdb1"], {"/dev/sda1": {}, "/dev/sdb1": {}}, {}, None, None, "2 operating systems"),
], ids=["inspected", "only_fs", "several_fs", "chosen", "chosen_missing", "unknown", "empty", "two_oses"])
def test_mount_plan(roots, points, fss, chosen, plan, error):
    if error:
        with pytest.raises(VmbackupError, match=error):
            bf.mount_plan(roots, points, fss, chosen)
        return
    assert bf.mount_plan(roots, points, fss, chosen)[0] == plan


@pytest.mark.parametrize("path, pattern, expected", [
    ("/etc/nginx/nginx.conf", "*.conf", True),
    ("/etc/nginx/nginx.conf", "nginx.*", True),
    ("/etc/nginx/nginx.conf", "*.CONF", False),
    ("/etc/nginx/nginx.conf", "/etc/*/nginx.conf", True),
    ("/etc/nginx/nginx.conf", "/srv/*", False),
    ("/etc/hosts", "host?", True),
])
def test_matches(path, pattern, expected):
    assert bf.matches(path, pattern) is expected


def _st(mode, size=0, uid=0, gid=0, mtime=1764979200):
    return {"st_mode": mode, "st_size": size, "st_uid": uid, "st_gid": gid, "st_mtime_sec": mtime,
            "st_mtime_nsec": 0, "st_atime_sec": mtime, "st_atime_nsec": 0}


def test_entry():
    assert bf.entry("/etc/shadow", _st(stat.S_IFREG | 0o640, 812, 0, 42)) == {
        "path": "/etc/shadow", "type": "file", "mode": "0640", "size": 812, "uid": 0, "gid": 42,
        "mtime": "2025-12-06T00:00:00+00:00"}
    assert bf.entry("/bin", _st(stat.S_IFLNK | 0o777), "usr/bin")["target"] == "usr/bin"
    assert bf.entry("/tmp", _st(stat.S_IFDIR | 0o1777))["mode"] == "1777"


class FakeGuestFS:
    """What GuestFiles calls of a guestfs.GuestFS handle, over an in-memory tree:
    {path: (mode, content or link target)}; uid 0, gid 0, one mtime."""

    def __init__(self, tree, roots=(), filesystems=None):
        self.tree = dict(tree)
        self.roots = list(roots)
        self.fss = filesystems or {"/dev/sda1": "ext4"}
        self.calls = []

    def __getattr__(self, name):  # set_backend, add_drive_opts, launch, mount_ro, shutdown, close
        return lambda *a, **k: self.calls.append((name, a, k))

    def inspect_os(self):
        return self.roots

    def list_filesystems(self):
        return self.fss

    def exists(self, path):
        return path in self.tree

    def is_symlink(self, path):
        return path in self.tree and stat.S_ISLNK(self.tree[path][0])

    def lstatns(self, path):
        mode, data = self.tree[path]
        return _st(mode, len(data) if stat.S_ISREG(mode) else 0)

    def readlink(self, path):
        return self.tree[path][1]

    def _below(self, path):
        prefix = path.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self.tree if p.startswith(prefix))

    def ls(self, path):
        return [n for n in self._below(path) if "/" not in n]

    def find(self, path):  # as libguestfs names them: "/a", "/a/b", never the directory itself
        return ["/" + n for n in self._below(path)]

    def download(self, path, local):
        with open(local, "wb") as fh:
            fh.write(self.tree[path][1])

    def tar_out(self, path, tar, **_kw):
        with tarfile.open(tar, "w") as out:
            for name in self._below(path):
                mode, data = self.tree[path.rstrip("/") + "/" + name]
                info = tarfile.TarInfo(name)
                info.mode, info.mtime = stat.S_IMODE(mode), 1764979200
                if stat.S_ISDIR(mode):
                    info.type = tarfile.DIRTYPE
                    out.addfile(info)
                elif stat.S_ISLNK(mode):
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    out.addfile(info)
                else:
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))


TREE = {
    "/etc": (stat.S_IFDIR | 0o755, b""),
    "/etc/hosts": (stat.S_IFREG | 0o644, b"127.0.0.1 localhost\n"),
    "/etc/shadow": (stat.S_IFREG | 0o640, b"root:*:1::::::\n"),
    "/etc/app": (stat.S_IFDIR | 0o750, b""),
    "/etc/app/app.conf": (stat.S_IFREG | 0o600, b"key=1\n"),
    "/etc/app/current": (stat.S_IFLNK | 0o777, "app.conf"),
}


def test_list_find_and_missing_path():
    guest = bf.GuestFiles(FakeGuestFS(TREE), "backup B of VM web1")
    entries, more = guest.list("/etc", False, 100)
    assert [e["path"] for e in entries] == ["/etc/app", "/etc/hosts", "/etc/shadow"] and not more
    entries, more = guest.list("/etc", True, 2)
    assert len(entries) == 2 and more
    entries, _more = guest.find("/etc", "*.conf", 100)
    assert [(e["path"], e["mode"]) for e in entries] == [("/etc/app/app.conf", "0600")]
    assert guest.list("/etc/hosts", False, 10)[0][0]["type"] == "file"
    with pytest.raises(VmbackupError, match="backup B of VM web1: /etc/nope does not exist"):
        guest.list("/etc/nope", False, 10)


class TarModule:
    """What CommandRunner needs of AnsibleModule, running the command for real (tar)."""
    check_mode = False

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/bin/" + name if os.path.exists("/bin/" + name) else "/usr/bin/" + name

    def run_command(self, argv, data=None, check_rc=False, environ_update=None, **_kw):
        cp = subprocess.run(argv, capture_output=True, text=True, check=False)
        return cp.returncode, cp.stdout, cp.stderr


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_extract_keeps_modes_and_times_is_idempotent_and_never_overwrites(tmp_path):
    guest = bf.GuestFiles(FakeGuestFS(TREE), "backup B of VM web1")
    dest = str(tmp_path)
    out = bf._extract(TarModule(), guest, ["/etc/shadow", "/etc/app"], dest, False)
    assert out["changed"] and [e["action"] for e in out["extracted"]] == ["created", "created"]
    assert _mode(tmp_path / "shadow") == 0o640 and (tmp_path / "shadow").read_bytes() == b"root:*:1::::::\n"
    assert int(os.stat(tmp_path / "shadow").st_mtime) == 1764979200
    assert _mode(tmp_path / "app") == 0o750 and _mode(tmp_path / "app" / "app.conf") == 0o600
    assert os.readlink(tmp_path / "app" / "current") == "app.conf"
    assert sorted(os.listdir(dest)) == ["app", "shadow"]  # no staging left
    # again: identical copies, nothing changes
    again = bf._extract(TarModule(), guest, ["/etc/shadow", "/etc/app"], dest, False)
    assert not again["changed"] and [e["action"] for e in again["extracted"]] == ["unchanged", "unchanged"]
    # a different file there: refused, and the user's file is untouched
    (tmp_path / "shadow").write_bytes(b"mine\n")
    with pytest.raises(VmbackupError, match="already exists and differs"):
        bf._extract(TarModule(), guest, ["/etc/shadow"], dest, False)
    assert (tmp_path / "shadow").read_bytes() == b"mine\n" and sorted(os.listdir(dest)) == ["app", "shadow"]
    # with force: replaced
    forced = bf._extract(TarModule(), guest, ["/etc/shadow"], dest, True)
    assert forced["extracted"][0]["action"] == "replaced"
    assert (tmp_path / "shadow").read_bytes() == b"root:*:1::::::\n"


def test_extract_refuses_two_paths_with_one_name(tmp_path):
    tree = dict(TREE, **{"/srv": (stat.S_IFDIR | 0o755, b""), "/srv/hosts": (stat.S_IFREG | 0o644, b"x")})
    guest = bf.GuestFiles(FakeGuestFS(tree), "backup B of VM web1")
    with pytest.raises(VmbackupError, match="same name .* \\(hosts\\)"):
        bf._extract(TarModule(), guest, ["/etc/hosts", "/srv/hosts"], str(tmp_path), False)
    assert os.listdir(tmp_path) == []


def test_open_mounts_what_inspection_found():
    fake = FakeGuestFS(TREE, roots=["/dev/sda2"])
    fake.inspect_get_mountpoints = lambda root: {"/": "/dev/sda2", "/boot": "/dev/sda1"}
    got = bf.GuestFiles(fake, "w").open([("/r/vda.qcow2", "qcow2")], "direct", ["force_tcg"])
    assert got == {"mounted": {"/": "/dev/sda2", "/boot": "/dev/sda1"}, "found_by": "inspection (/dev/sda2)"}
    names = [(c[0], c[1]) for c in fake.calls]
    assert ("set_backend_settings", (["force_tcg"],)) in names
    assert ("add_drive_opts", ("/r/vda.qcow2",)) in names
    assert [c for c in names if c[0] == "mount_ro"] == [("mount_ro", ("/dev/sda2", "/")),
                                                        ("mount_ro", ("/dev/sda1", "/boot"))]
    assert [c[2] for c in fake.calls if c[0] == "add_drive_opts"] == [{"readonly": True, "format": "qcow2"}]


class RepoModule(TarModule):
    """A stand-in for AnsibleModule around backup_files.run (check_mode, params, warn)."""

    def __init__(self, params):
        self.params = dict({k: v.get("default") for k, v in bf.ARGUMENT_SPEC.items()}, **params)

    def warn(self, _msg):
        pass


def _repo_with_backup(tmp_path):
    from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import Repository
    repo = Repository(str(tmp_path / "repo"))
    repo.ensure()
    partial = repo.begin("web1", "20261206T010000Z")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(partial, "vda.qcow2"), "1M"], check=True)
    manifest = {"backup_id": "20261206T010000Z", "vm": "web1", "type": "full", "status": "complete",
                "domain_xml": "domain.xml", "disks": [{"target": "vda", "file": "vda.qcow2", "backend": "file"}]}
    repo.commit("web1", "20261206T010000Z", manifest, {"domain.xml": b"<domain/>"})
    return repo


def test_run_lists_under_a_readers_lock_and_turns_libguestfs_errors_into_clear_ones(tmp_path):
    repo = _repo_with_backup(tmp_path)
    seen = {}

    def factory(_module):
        fake = FakeGuestFS(TREE)
        seen["readers"] = [n for n in os.listdir(os.path.join(repo.path, ".locks")) if ".shared-" in n]
        return fake

    module = RepoModule({"path": repo.path, "vm": "web1", "action": "list", "paths": ["/etc"]})
    out = bf.run(module, factory)
    assert out["backup_id"] == "20261206T010000Z" and [e["path"] for e in out["entries"]][0] == "/etc/app"
    assert len(seen["readers"]) == 1  # held while reading
    assert [n for n in os.listdir(os.path.join(repo.path, ".locks")) if ".shared-" in n] == []  # given back

    class Broken(FakeGuestFS):
        def launch(self):
            raise RuntimeError("guestfs_launch failed, see earlier error messages")

    with pytest.raises(VmbackupError, match="libguestfs failed on host .*guestfs_launch failed.*force_tcg"):
        bf.run(module, lambda _m: Broken(TREE))
    assert [n for n in os.listdir(os.path.join(repo.path, ".locks")) if ".shared-" in n] == []


def test_disk_images_applies_an_rbd_chain_from_its_last_full_into_a_private_raw_file(tmp_path):
    from test_rbd import diff, rec_w  # the hand-built rbd diff v1 streams of test_rbd.py

    class Repo:
        def image_path(self, _vm, backup_id, disk):
            return str(tmp_path / backup_id / disk["file"])

    streams = {"B1": diff("vmbackup-B1", 8192, [rec_w(0, b"old!")]),  # an older chain: never read
               "B2": diff("vmbackup-B2", 8192, [rec_w(0, b"full")]),
               "B3": diff("vmbackup-B3", 8192, [rec_w(4096, b"incr")], from_snap="vmbackup-B2")}
    for bid, data in streams.items():
        (tmp_path / bid).mkdir()
        (tmp_path / bid / "vdb.rbddiff").write_bytes(data)
    chain = [{"backup_id": bid, "disks": [{"target": "vdb", "file": "vdb.rbddiff", "mode": mode}]}
             for bid, mode in (("B1", "full"), ("B2", "full"), ("B3", "incremental"))]
    chain[-1]["disks"].append({"target": "vda", "file": "vda.qcow2", "mode": "delta"})
    scratch = []
    images = bf.disk_images(Repo(), "web1", chain, chain[-1]["disks"][::-1], str(tmp_path), scratch)
    assert images[0] == (str(tmp_path / "B3" / "vda.qcow2"), "qcow2")
    path, fmt = images[1]
    assert fmt == "raw" and scratch == [path] and os.path.dirname(path) == str(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as fh:
        data = fh.read()
    assert len(data) == 8192 and data[:4] == b"full" and data[4096:4100] == b"incr"

    # a broken chain is refused before anything is written
    (tmp_path / "B3" / "vdb.rbddiff").write_bytes(diff("vmbackup-B3", 8192, [], from_snap="vmbackup-B9"))
    with pytest.raises(VmbackupError, match="the chain is broken"):
        bf.disk_images(Repo(), "web1", chain, chain[-1]["disks"][:1], str(tmp_path), [])
