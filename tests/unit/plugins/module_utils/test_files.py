# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_files (fsync, atomic writes, private modes) and the order in which a backup becomes durable.

os.fsync and os.rename are wrapped to record what they touch (the path behind each fsynced
descriptor), so the tests check the real order: every image fsynced, then its directory,
then the manifest, then the rename into place, then the directories above.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _backup_repo
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _retention
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import Repository

BID = "20261122T010000Z"


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def events(monkeypatch):
    """Every fsync (as ("fsync", path)) and rename (("rename", src, dst)), in order."""
    log = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        log.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        return real_fsync(fd)

    def rename(src, dst):
        log.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return log


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- the helpers ------------------------------------------------------------------------

def test_fsync_file_and_dir_flush_what_they_name(tmp_path, events):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    _files.fsync_file(str(path))
    _files.fsync_dir(str(tmp_path))
    assert events == [("fsync", str(path)), ("fsync", str(tmp_path))]


def test_write_atomic_is_private_whole_and_durable(tmp_path, events, loose_umask):
    path = str(tmp_path / "domain.xml")
    _files.write_atomic(path, b"<domain/>")
    with open(path, "rb") as fh:
        assert fh.read() == b"<domain/>"
    assert mode_of(path) == 0o600 and not os.path.exists(path + ".tmp")
    # The data is flushed before the name appears, the name once it is there.
    assert events == [("fsync", path + ".tmp"), ("rename", path + ".tmp", path), ("fsync", str(tmp_path))]


def test_write_atomic_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "x")

    def boom(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        _files.write_atomic(path, b"data")
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("exists, expected", [(True, True), (False, False)])
def test_unlink_quietly(tmp_path, exists, expected):
    path = tmp_path / "f"
    if exists:
        path.write_bytes(b"")
    assert _files.unlink_quietly(str(path)) is expected
    assert not path.exists()


def test_write_atomic_with_its_own_temp_name(tmp_path, events):
    path, tmp = str(tmp_path / "tpm2-00.permall"), str(tmp_path / ".tpm2-00.permall.vmbackup-tmp")
    _files.write_atomic(path, b"new", tmp=tmp)
    assert os.listdir(str(tmp_path)) == ["tpm2-00.permall"] and mode_of(path) == 0o600
    assert events == [("fsync", tmp), ("rename", tmp, path), ("fsync", str(tmp_path))]


@pytest.mark.parametrize("mode, sync_dir, expected_fsyncs", [
    (0o600, True, ["f", "."]),
    (0o600, False, ["f"]),
    (0o640, True, ["f", "."]),
])
def test_write_new(tmp_path, events, loose_umask, mode, sync_dir, expected_fsyncs):
    path = str(tmp_path / "f")
    _files.write_new(path, b"x" * 70000, mode, os.getuid(), os.getgid(), sync_dir=sync_dir)
    with open(path, "rb") as fh:
        assert fh.read() == b"x" * 70000
    assert mode_of(path) == mode and os.stat(path).st_uid == os.getuid()
    assert events == [("fsync", os.path.normpath(os.path.join(str(tmp_path), n))) for n in expected_fsyncs]
    with pytest.raises(FileExistsError):  # never replaces what is there
        _files.write_new(path, b"other")
    with open(path, "rb") as fh:
        assert fh.read() == b"x" * 70000


def test_write_new_mode_holds_under_a_tight_umask(tmp_path):
    old = os.umask(0o277)
    try:
        _files.write_new(str(tmp_path / "lock"), b"{}")
    finally:
        os.umask(old)
    assert mode_of(str(tmp_path / "lock")) == 0o600


def test_commit_part_flushes_the_data_then_names_it_then_the_name(tmp_path, events):
    part, dest = str(tmp_path / "vda.qcow2.part"), str(tmp_path / "vda.qcow2")
    with open(part, "wb") as fh:
        fh.write(b"QFI\xfb")
    _files.commit_part(part, dest)
    assert events == [("fsync", part), ("rename", part, dest), ("fsync", str(tmp_path))]
    assert os.listdir(str(tmp_path)) == ["vda.qcow2"]


def test_rename_durably_fsyncs_the_new_names_directory(tmp_path, events):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"")
    _files.rename_durably(str(tmp_path / "a" / "f"), str(tmp_path / "b" / "g"))
    assert events == [("rename", str(tmp_path / "a" / "f"), str(tmp_path / "b" / "g")), ("fsync", str(tmp_path / "b"))]


@pytest.mark.parametrize("missing_only, raises", [(False, False), (True, True)])
def test_unlink_quietly_other_failures(tmp_path, missing_only, raises):
    """A directory cannot be unlinked: ignored, or with missing_only raised (only 'missing' is quiet)."""
    (tmp_path / "d").mkdir()
    if raises:
        with pytest.raises(OSError):
            _files.unlink_quietly(str(tmp_path / "d"), missing_only=missing_only)
    else:
        assert _files.unlink_quietly(str(tmp_path / "d"), missing_only=missing_only) is False
    assert _files.unlink_quietly(str(tmp_path / "gone"), missing_only=missing_only) is False
    assert (tmp_path / "d").is_dir()


def test_write_progress_replaces_whole_unflushed_and_never_fails(tmp_path, events, loose_umask):
    path = str(tmp_path / "progress" / "t.json")
    _files.write_progress(path, {"done": 1})
    _files.write_progress(path, {"done": 2})
    with open(path) as fh:
        assert json.load(fh) == {"done": 2}
    # A courtesy: no fsync, and readable as the umask allows (the callback may be another user).
    assert [e for e in events if e[0] == "fsync"] == [] and mode_of(path) == 0o644
    assert os.listdir(os.path.dirname(path)) == ["t.json"]
    (tmp_path / "file").write_bytes(b"")
    _files.write_progress(str(tmp_path / "file" / "t.json"), {"done": 3})  # its directory cannot be made


def test_temp_text_is_private_and_removed(tmp_path):
    with _files.temp_text("<domain/>", "vmbackup-", ".xml") as path:
        assert os.path.basename(path).startswith("vmbackup-") and path.endswith(".xml")
        assert mode_of(path) == 0o600
        with open(path) as fh:
            assert fh.read() == "<domain/>"
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError):
        with _files.temp_text("secret", "vmbackup-secret-") as path:
            raise RuntimeError("virsh failed")
    assert not os.path.exists(path)


@pytest.mark.parametrize("size", [0, 1, _files.CHUNK, _files.CHUNK + 7])
def test_sha256_file(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "img"
    path.write_bytes(data)
    assert _files.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_private_umask_reaches_child_processes_and_is_restored(tmp_path, loose_umask):
    with _files.private_umask():
        out = subprocess.run(["sh", "-c", "umask; touch %s" % (tmp_path / "made")], capture_output=True,
                             text=True, check=True).stdout
    assert out.strip() == "0077"
    assert mode_of(str(tmp_path / "made")) == 0o600
    current = os.umask(0o022)
    assert current == 0o022


def test_makedirs_private_creates_0700_and_fsyncs_each_parent(tmp_path, events):
    old = os.umask(0)
    try:
        created = _files.makedirs_private(str(tmp_path / "a" / "b"))
    finally:
        os.umask(old)
    assert created == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert mode_of(str(tmp_path / "a")) == mode_of(str(tmp_path / "a" / "b")) == 0o700
    assert events == [("fsync", str(tmp_path)), ("fsync", str(tmp_path / "a"))]
    assert _files.makedirs_private(str(tmp_path / "a" / "b")) == []


@pytest.mark.parametrize("mode, loose", [(0o700, None), (0o600, None), (0o755, 0o755), (0o710, 0o710), (0o701, 0o701)])
def test_loose_mode(tmp_path, mode, loose):
    os.chmod(str(tmp_path), mode)
    try:
        assert _files.loose_mode(str(tmp_path)) == loose
    finally:
        os.chmod(str(tmp_path), 0o700)


# --- the repository: modes and the commit order -----------------------------------------

class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict((k, v.get("default")) for k, v in _backup_repo.ARGUMENT_SPEC.items())
        self.params.update(params)
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)


def test_a_loose_repository_root_is_made_private_and_reported(tmp_path, loose_umask):
    repo = str(tmp_path / "repo")
    os.mkdir(repo, 0o755)
    os.mkdir(os.path.join(repo, "web1"), 0o755)
    module = FakeModule(path=repo, vm="web1", action="begin", backup_id=BID, lock_owner="run-a")
    got = _backup_repo.run(module)
    assert mode_of(repo) == 0o700 and mode_of(os.path.join(repo, "web1")) == 0o700
    assert len(got["mode_fixes"]) == 2 and module.warnings == got["mode_fixes"]
    assert "%s had mode 0755" % repo in got["mode_fixes"][0] and "set it to 0700" in got["mode_fixes"][0]
    # The partial directory and the lock file are private from creation on.
    assert mode_of(got["dir"]) == 0o700
    assert mode_of(os.path.join(repo, ".locks")) == 0o700
    assert mode_of(os.path.join(repo, ".locks", "web1.lock")) == 0o600
    # Once private, nothing more to say.
    again = FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T020000Z")
    assert _backup_repo.run(again)["mode_fixes"] == [] and again.warnings == []


def test_check_mode_changes_no_mode(tmp_path):
    repo = str(tmp_path / "repo")
    os.mkdir(repo)
    os.chmod(repo, 0o755)
    _backup_repo.run(FakeModule(check_mode=True, path=repo, vm="web1", action="begin", backup_id=BID))
    assert mode_of(repo) == 0o755


def test_report_is_private(tmp_path, loose_umask):
    repo = str(tmp_path / "repo")
    got = _backup_repo.run(FakeModule(path=repo, action="report", report_name="hv1", report={"results": []}))
    assert mode_of(got["report_path"]) == 0o600 and mode_of(repo) == 0o700


def test_commit_flushes_every_image_and_directory_before_the_manifest(tmp_path, events, loose_umask):
    repo = Repository(str(tmp_path / "repo"))
    partial = repo.begin("web1", BID)
    image = os.path.join(partial, "vda.qcow2")
    with open(image, "wb") as fh:  # as qemu-img would have left it: 0644, maybe unflushed
        fh.write(b"QFI\xfb")
    os.chmod(image, 0o644)
    del events[:]
    final = repo.commit("web1", BID, {"disks": [{"target": "vda", "file": "vda.qcow2"}]},
                        {"domain.xml": b"<domain/>", "nvram.fd": b"\0" * 16})
    vm_dir, root = os.path.dirname(final), repo.path

    def at(event):
        assert event in events, "%s not in %s" % (event, events)
        return events.index(event)

    manifest_in = at(("rename", os.path.join(partial, "manifest.json.tmp"), os.path.join(partial, "manifest.json")))
    made_visible = at(("rename", partial, final))
    for name in ("vda.qcow2", "domain.xml.tmp", "nvram.fd.tmp"):
        assert at(("fsync", os.path.join(partial, name))) < manifest_in, name
    # The partial directory's entries are flushed after the last file is in and before the manifest.
    last_file = max(i for i, e in enumerate(events) if e[0] == "fsync" and not e[1].endswith("manifest.json.tmp")
                    and e[1] != partial and e[1].startswith(partial))
    assert ("fsync", partial) in events[last_file + 1:manifest_in]
    assert manifest_in < made_visible
    # The rename into place is made durable: the VM's directory, then the root.
    after = events[made_visible + 1:]
    assert after == [("fsync", vm_dir), ("fsync", root)]
    for name in ("vda.qcow2", "domain.xml", "nvram.fd", "manifest.json"):
        assert mode_of(os.path.join(final, name)) == 0o600, name
    with open(os.path.join(final, "manifest.json")) as fh:
        assert json.load(fh)["disks"][0]["file"] == "vda.qcow2"


def test_begin_of_a_new_vm_fsyncs_the_root(tmp_path, events):
    repo = Repository(str(tmp_path / "repo"))
    repo.ensure()
    del events[:]
    partial = repo.begin("web1", BID)
    assert events == [("fsync", repo.path), ("fsync", os.path.join(repo.path, "web1"))]
    assert mode_of(partial) == 0o700


# --- qemu-img argument lists and the transfers that write images --------------------------

@pytest.mark.parametrize("argv, expected", [
    (["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "a", "b"],
     ["qemu-img", "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", "a", "b"]),
    (["qemu-img", "convert", "-t", "none", "-O", "raw", "a", "b"],
     ["qemu-img", "convert", "-t", "none", "-O", "raw", "a", "b"]),
    (["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "src", "nbd://x"],
     ["qemu-img", "convert", "-t", "writeback", "-n", "-f", "qcow2", "-O", "raw", "src", "nbd://x"]),
    (["qemu-img", "check", "-q", "x"], ["qemu-img", "check", "-q", "x"]),
])
def test_convert_argv_sets_the_output_cache_mode(argv, expected):
    assert _transfer.convert_argv(argv) == expected


def test_synthesize_argv_flushes_its_output():
    assert _retention.synthesize_argv("/r/vm/B/vda.qcow2", "/r/vm/.partial-C/vda.qcow2.part") == [
        "qemu-img", "convert", "-t", "writeback", "-f", "qcow2", "-O", "qcow2",
        "/r/vm/B/vda.qcow2", "/r/vm/.partial-C/vda.qcow2.part"]


class FakeRunner:
    """Records each command with the umask it ran under; qemu-img convert 'writes' its output."""

    host = "node1"

    def __init__(self):
        self.calls = []

    def run(self, argv, what="", hint=None, check_rc=True, data=None):
        umask = os.umask(0)
        os.umask(umask)
        self.calls.append((list(argv), umask))
        if argv[:2] == ["qemu-img", "convert"]:
            with open(argv[-1], "wb") as fh:  # created as qemu-img does: mode 0666 & ~umask
                fh.write(b"QFI\xfb")
        if argv[:2] == ["qemu-img", "map"]:
            return 0, "[]", ""
        return 0, "", ""


def test_pull_full_flushes_a_private_image_before_naming_it(tmp_path, events, loose_umask):
    runner = FakeRunner()
    hv = _ssh.Hypervisor(runner, {"transport": "local"})
    dest = str(tmp_path / "vda.qcow2")
    _transfer.pull_full(runner, hv, "/images/vm.qcow2", "qcow2", dest)
    convert, umask = runner.calls[0]
    assert convert == ["qemu-img", "convert", "-t", "writeback", "-U", "-f", "qcow2", "-O", "qcow2", "-o",
                       "compat=1.1", "-m", "8", "-W", "/images/vm.qcow2", dest + ".part"]
    assert umask == 0o077 and mode_of(dest) == 0o600
    assert events == [("fsync", dest + ".part"), ("rename", dest + ".part", dest), ("fsync", str(tmp_path))]


def test_pull_delta_flushes_the_rebased_header_before_naming_it(tmp_path, events, loose_umask):
    runner = FakeRunner()
    hv = _ssh.Hypervisor(runner, {"transport": "local"})
    overlay = tmp_path / "overlay.qcow2"
    overlay.write_bytes(b"QFI\xfb" + b"\0" * 100)
    os.mkdir(str(tmp_path / "B2"))
    dest = str(tmp_path / "B2" / "vda.qcow2")
    _transfer.pull_delta(runner, hv, str(overlay), dest, str(tmp_path / "B1" / "vda.qcow2"))
    assert runner.calls[0][0] == ["qemu-img", "rebase", "-u", "-t", "writeback", "-f", "qcow2", "-b",
                                  "../B1/vda.qcow2", "-F", "qcow2", dest + ".part"]
    assert mode_of(dest) == 0o600
    # The streamed bytes are flushed, then (after rebase wrote the header) the whole file again.
    part_fsyncs = [i for i, e in enumerate(events) if e == ("fsync", dest + ".part")]
    rename = events.index(("rename", dest + ".part", dest))
    assert len(part_fsyncs) == 2 and part_fsyncs[-1] < rename
    assert events[rename + 1:] == [("fsync", os.path.dirname(dest))]


BAD = {"corrupt": True}


@pytest.mark.parametrize("content, valid, expected", [
    (None, None, None),                       # no file: None, never BAD
    (b'{"owner": "a"}', None, {"owner": "a"}),
    (b"null", None, BAD),                     # JSON, but not a dict: not to be taken for "missing"
    (b"[1]", None, BAD),
    (b'{"own', None, BAD),                    # cut short by a crash
    (b"\xff\xfe", None, BAD),
    (b'{"problems": 1}', lambda v: isinstance(v.get("problems"), list), BAD),
    (b'{"problems": []}', lambda v: isinstance(v.get("problems"), list), {"problems": []}),
])
def test_read_json(tmp_path, content, valid, expected):
    path = tmp_path / "f.json"
    if content is not None:
        path.write_bytes(content)
    kwargs = {"valid": valid} if valid else {}
    assert _files.read_json(str(path), BAD, **kwargs) == expected


def test_read_json_of_a_directory_is_bad(tmp_path):
    assert _files.read_json(str(tmp_path), BAD) is BAD
