# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_repo's begin (with clean) and report actions on a real directory."""

from __future__ import annotations

import datetime
import json
import os
import stat

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _backup_repo
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _retention
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.no_log_values = set()  # as AnsibleModule: values masked in every result and error
        self.params = dict((k, v.get("default")) for k, v in _backup_repo.ARGUMENT_SPEC.items())
        self.params.update(params)
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)


def test_begin_creates_a_private_repository_and_cleans_dead_partials(tmp_path):
    repo = str(tmp_path / "new" / "repo")
    first = _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T010000Z"))
    assert first["removed"] == [] and first["complete"] == [] and first["parent"] is None
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(tmp_path / "new")).st_mode) == 0o700
    assert os.path.isdir(first["dir"])
    # A later run that holds the VM's lock: the dead run's partial goes first.
    second = _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T020000Z",
                                         clean=True))
    assert second["removed"] == ["20261122T010000Z"]
    assert not os.path.exists(first["dir"]) and os.path.isdir(second["dir"])
    # Without clean, partials stay.
    third = _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T030000Z"))
    assert third["removed"] == [] and os.path.isdir(second["dir"])


def test_report_is_written_whole_and_named_safely(tmp_path):
    repo = str(tmp_path / "repo")
    got = _backup_repo.run(FakeModule(path=repo, action="report", report_name="hv1",
                                      report={"hypervisor": "hv1", "results": [{"vm": "a", "result": "ok"}]}))
    with open(got["report_path"]) as fh:
        assert json.load(fh)["results"] == [{"vm": "a", "result": "ok"}]
    assert got["report_path"].endswith("report-hv1-latest.json")
    assert not os.path.exists(got["report_path"] + ".tmp")
    with pytest.raises(VmbackupError, match="invalid report name"):
        _backup_repo.run(FakeModule(path=repo, action="report", report_name="../x", report={}))


def test_begin_takes_the_vms_lock_and_commit_or_abort_gives_it_back(tmp_path):
    repo = str(tmp_path / "repo")
    lock = os.path.join(repo, ".locks", "web1.lock")
    begun = _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T010000Z",
                                        lock_owner="run-a", lock_purpose="backup of VM web1 on hv1", clean=True))
    assert begun["lock"]["held"] and begun["lock"]["path"] == lock and os.path.exists(lock)
    # Another live run cannot begin, and learns who holds the VM; its lock file stays the first run's.
    with pytest.raises(VmbackupError, match=r"backup of VM web1 on hv1 is locked by run run-a \(backup of VM web1"):
        _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", lock_owner="run-b", clean=True,
                                    lock_purpose="backup of VM web1 on hv1"))
    assert os.path.isdir(begun["dir"])
    # Abort by another owner removes nothing of the lock; by the owner, it gives it back.
    other = _backup_repo.run(FakeModule(path=repo, vm="web1", action="abort", backup_id="20261122T010000Z",
                                        lock_owner="run-b"))
    assert other["unlocked"] is False and os.path.exists(lock)
    _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T010000Z",
                                lock_owner="run-a"))
    manifest = {"type": "full", "parent": None, "disks": []}
    done = _backup_repo.run(FakeModule(path=repo, vm="web1", action="commit", backup_id="20261122T010000Z",
                                       manifest=manifest, domain_xml="<domain/>", lock_owner="run-a"))
    assert done["unlocked"] is True and not os.path.exists(lock)
    assert os.path.isdir(os.path.join(repo, "web1", "20261122T010000Z"))
    # Now the second run can begin; its abort gives the lock back too.
    second = _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id="20261122T020000Z",
                                         lock_owner="run-b"))
    assert second["parent"]["backup_id"] == "20261122T010000Z"
    gone = _backup_repo.run(FakeModule(path=repo, vm="web1", action="abort", backup_id="20261122T020000Z",
                                       lock_owner="run-b"))
    assert gone["unlocked"] is True and gone["changed"] is True and not os.path.exists(lock)


# --- the repository path, checked by begin before anything else (issue 13, new-user findings)
def _repo_path_case(tmp_path, kind):
    if kind == "file":
        path = tmp_path / "repo"
        path.write_text("not a repository")
        return str(path), r"backup repository .*/repo on backup node nodeA is a file; nothing was written"
    if kind == "parent-file":
        (tmp_path / "plain").write_text("x")
        return (str(tmp_path / "plain" / "sub" / "repo"),
                r"cannot be created: .*/plain is not a directory; nothing was written")
    if kind == "missing-parents":
        return str(tmp_path / "a" / "b" / "repo"), None
    return str(tmp_path / "repo"), None


@pytest.mark.parametrize("kind", ["file", "parent-file", "missing-parents", "fine"])
def test_begin_checks_the_repository_path_first(tmp_path, kind):
    path, error = _repo_path_case(tmp_path, kind)
    module = FakeModule(path=path, vm="web1", action="begin", lock_owner="run-a", lock_node="nodeA")
    if error:
        with pytest.raises(VmbackupError, match=error):
            _backup_repo.run(module)
        assert not os.path.exists(os.path.join(os.path.dirname(path), ".locks"))
    else:
        assert os.path.isdir(_backup_repo.run(module)["dir"])


def test_begin_and_report_refuse_a_repository_that_takes_no_file(tmp_path, monkeypatch):
    """Root passes every mode check: the check is a real write, which a read-only mount refuses."""
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(_backup_repo.tempfile, "mkstemp", refuse)
    for params in (dict(vm="web1", action="begin"), dict(action="report", report_name="hv1", report={})):
        with pytest.raises(VmbackupError, match=r"is not writable: .* cannot take a file \(Read-only file system\)"):
            _backup_repo.run(FakeModule(path=str(tmp_path / "repo"), **params))
    assert not os.path.exists(str(tmp_path / "repo"))


def test_commit_masks_the_domain_passwords(tmp_path):
    module = FakeModule(path=str(tmp_path / "repo"), vm="web1", action="begin", backup_id="20261122T010000Z")
    _backup_repo.run(module)
    module = FakeModule(path=str(tmp_path / "repo"), vm="web1", action="commit", backup_id="20261122T010000Z",
                        manifest={"type": "full", "disks": []},
                        domain_xml="<domain><name>web1</name><devices><graphics type='vnc' passwd='pw-1'/>"
                                   "</devices></domain>")
    _backup_repo.run(module)
    assert module.no_log_values == {"pw-1"}


# --------------------------------------------------------------------------
# retention inside commit: each case commits the full backup C of web1 (A full, B incremental
# on A already there, hours old) with these options; then what is left, what prune says, the lock.

def _hours_ago(h):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=h)).strftime("%Y%m%dT%H%M%SZ")


COMMIT_PRUNE_CASES = [
    dict(id="no_rule_prunes_nothing", options={}, left="ABC", prune=None),
    dict(id="min_age_alone_is_not_read", options={"min_age": "soon"}, left="ABC", prune=None),
    dict(id="keep_last_1_removes_the_older_chain_newest_first", options={"keep_last": 1}, left="C",
         prune={"removed": "BA", "kept": "C", "locked": 0}),
    dict(id="keep_last_2_keeps_what_b_needs", options={"keep_last": 2}, left="ABC",
         prune={"removed": "", "kept": "CBA", "locked": 0}),
    dict(id="min_age_keeps_young_backups", options={"keep_last": 1, "min_age": "1d"}, left="ABC",
         prune={"removed": "", "kept": "CBA", "locked": 0}),
    dict(id="a_reader_keeps_everything_and_is_named", options={"keep_last": 1}, reader=True, left="ABC",
         prune={"removed": "", "kept": "", "locked": 1}, warning="prune left 1 VM(s) alone"),
    dict(id="without_lock_owner_prune_takes_the_lock_itself", options={"keep_last": 1}, lock_owner=None,
         left="C", prune={"removed": "BA", "kept": "C", "locked": 0}),
    dict(id="check_mode_plans_on_what_is_there", options={"keep_last": 1}, check_mode=True, left="AB",
         prune={"removed": "", "kept": "BA", "locked": 0}),
    dict(id="negative_rule_refused_before_anything_is_written", options={"keep_daily": -1},
         error="keep_daily must be 0 or more", left="AB"),
    dict(id="bad_min_age_refused_before_anything_is_written", options={"keep_last": 1, "min_age": "soon"},
         error="min_age 'soon' is not a duration", left="AB"),
    dict(id="a_failed_prune_leaves_the_backup_complete", options={"keep_last": 1}, fail_removal=True,
         left="ABC", prune={"removed": "", "kept": "", "locked": 0, "failed": True},
         warning="backup %(C)s is complete, but retention failed: disk on fire"),
]


@pytest.mark.parametrize("case", COMMIT_PRUNE_CASES, ids=[c["id"] for c in COMMIT_PRUNE_CASES])
def test_commit_applies_retention_under_the_vms_lock(tmp_path, monkeypatch, case):
    repo = str(tmp_path / "repo")
    ids = {"A": _hours_ago(3), "B": _hours_ago(2), "C": _hours_ago(1)}
    for key, parent in (("A", None), ("B", "A")):
        _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id=ids[key]))
        _backup_repo.run(FakeModule(path=repo, vm="web1", action="commit", backup_id=ids[key], domain_xml="<domain/>",
                                    manifest={"type": "incremental" if parent else "full",
                                              "parent": ids.get(parent), "disks": []}))
    owner = case.get("lock_owner", "run-c")
    _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id=ids["C"], lock_owner=owner))
    lock = os.path.join(repo, ".locks", "web1.lock")
    if case.get("reader"):
        reader = FakeModule(path=lock, owner="restore-1")
        _lock.acquire(reader, _lock.lock_params(lock, "restore-1", "restore of VM web1", mode="shared"))
    if case.get("fail_removal"):
        def on_fire(_repo, _vm, _backup_id):
            raise OSError("disk on fire")
        monkeypatch.setattr(_retention, "remove_backup", on_fire)
    module = FakeModule(check_mode=case.get("check_mode", False), path=repo, vm="web1", action="commit",
                        backup_id=ids["C"], lock_owner=owner, domain_xml="<domain/>",
                        manifest={"type": "full", "parent": None, "disks": []}, **case["options"])
    if case.get("error"):
        with pytest.raises(VmbackupError, match=case["error"]):
            _backup_repo.run(module)
    else:
        got = _backup_repo.run(module)
        want = case["prune"]
        if want is None:
            assert got["prune"] is None
        else:
            assert [r["backup_id"] for r in got["prune"]["removed"]] == [ids[k] for k in want["removed"]]
            assert [k["backup_id"] for k in got["prune"]["kept"]] == [ids[k] for k in want["kept"]]
            assert len(got["prune"]["locked"]) == want["locked"]
            assert got["prune"].get("failed", False) is want.get("failed", False)
            if want["locked"]:
                assert "restore of VM web1, shared" in got["prune"]["locked"][0]["msg"]
        if not module.check_mode:
            # The lock goes with the commit, whatever the prune did; the reader's stays.
            assert got["unlocked"] is bool(owner) and not os.path.exists(lock)
            assert os.path.exists(_lock.shared_path(lock, "restore-1")) is bool(case.get("reader"))
    if case.get("warning"):
        assert any(case["warning"] % ids in w for w in module.warnings), module.warnings
    left = sorted(e for e in os.listdir(os.path.join(repo, "web1")) if not e.startswith("."))
    assert left == sorted(ids[k] for k in case["left"])
    # A refused commit leaves the partial backup for abort; a commit moves it into place.
    assert os.path.isdir(os.path.join(repo, "web1", ".partial-" + ids["C"])) is bool(
        case.get("error") or case.get("check_mode"))


# --- select for a restore: the reader's lock, the domain XML, NVRAM and TPM state in one run
def _committed_backup(repo, backup_id="20261122T010000Z"):
    import base64
    _backup_repo.run(FakeModule(path=repo, vm="web1", action="begin", backup_id=backup_id))
    manifest = {"type": "full", "parent": None, "disks": [], "nvram": "/var/lib/libvirt/qemu/nvram/web1_VARS.fd",
                "tpm": {"model": "tpm-crb", "version": "2.0", "files": ["tpm2-00.permall"]}}
    files = {"nvram.fd": base64.b64encode(b"uefi vars").decode(), "tpm-tpm2-00.permall": base64.b64encode(b"sealed").decode()}
    _backup_repo.run(FakeModule(path=repo, vm="web1", action="commit", backup_id=backup_id, manifest=manifest,
                                domain_xml="<domain><name>web1</name></domain>", files=files))
    return os.path.join(repo, "web1", backup_id)


def test_select_returns_the_xml_and_files_under_a_readers_lock_it_keeps(tmp_path):
    import base64
    repo = str(tmp_path / "repo")
    bdir = _committed_backup(repo)
    got = _backup_repo.run(FakeModule(path=repo, vm="web1", action="select", include_xml=True, include_files=True,
                                      lock_owner="restore-a", lock_purpose="restore of VM web1 to hv2"))
    assert got["backup"]["dir"] == bdir and got["changed"] is False and got["secrets_returned"] is True
    assert got["domain_xml"] == "<domain><name>web1</name></domain>"
    assert base64.b64decode(got["nvram_content"]) == b"uefi vars"
    assert {k: base64.b64decode(v) for k, v in got["tpm_state"].items()} == {"tpm2-00.permall": b"sealed"}
    lock = os.path.join(repo, ".locks", "web1.lock")
    assert got["lock_path"] == lock and got["lock"]["held"]
    reader = _lock.shared_path(lock, "restore-a")
    assert os.path.exists(reader) and _lock.read_lock(reader)["mode"] == "shared"
    # Another restore reads too; a prune (exclusive) is refused while the reader holds the lock.
    _backup_repo.run(FakeModule(path=repo, vm="web1", action="select", lock_owner="restore-b"))
    with pytest.raises(VmbackupError, match="restore of VM web1 to hv2"):
        _lock.acquire(FakeModule(), _lock.lock_params(lock, "prune-1", "prune of web1"))
    # Without include_*, nothing secret comes back; without lock_owner, no lock.
    plain = _backup_repo.run(FakeModule(path=repo, vm="web1", action="select"))
    assert "domain_xml" not in plain and "nvram_content" not in plain and plain["secrets_returned"] is False
    assert plain["lock"] is None and plain["lock_path"] is None


@pytest.mark.parametrize("damage, match", [
    ("nvram.fd", r"nvram.fd has sha256 [0-9a-f]{64}, its manifest says"),
    ("tpm-tpm2-00.permall", r"tpm-tpm2-00.permall has sha256"),
    ("domain.xml", r"domain.xml has sha256"),
    ("missing-nvram", r"nvram.fd cannot be read"),
    ("no-such-backup", r"20990101T000000Z"),
])
def test_select_that_fails_gives_its_readers_lock_back(tmp_path, damage, match):
    repo = str(tmp_path / "repo")
    bdir = _committed_backup(repo)
    backup = "latest"
    if damage == "missing-nvram":
        os.unlink(os.path.join(bdir, "nvram.fd"))
    elif damage == "no-such-backup":
        backup = "20990101T000000Z"
    else:
        with open(os.path.join(bdir, damage), "ab") as fh:
            fh.write(b"x")
    with pytest.raises(VmbackupError, match=match):
        _backup_repo.run(FakeModule(path=repo, vm="web1", action="select", backup=backup, include_xml=True,
                                    include_files=True, lock_owner="restore-a"))
    assert not os.path.exists(_lock.shared_path(os.path.join(repo, ".locks", "web1.lock"), "restore-a"))


def test_select_refuses_a_tpm_file_name_outside_the_backup(tmp_path):
    repo = str(tmp_path / "repo")
    bdir = _committed_backup(repo)
    path = os.path.join(bdir, "manifest.json")
    with open(path) as fh:
        manifest = json.load(fh)
    manifest["tpm"]["files"] = ["../../../etc/shadow"]
    with open(path, "w") as fh:
        json.dump(manifest, fh)
    with pytest.raises(VmbackupError, match="not a plain file name"):
        _backup_repo.run(FakeModule(path=repo, vm="web1", action="select", include_files=True))
