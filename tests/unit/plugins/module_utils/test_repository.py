# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tampered or damaged repository: what the reading side of _repository refuses, on real files."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _backup_repo, _retention, _verify
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    ManifestError,
    Repository,
    check_manifest,
)

B1, B2, B3 = "20261120T010000Z", "20261121T010000Z", "20261122T010000Z"


class FakeModule:
    def __init__(self, spec, check_mode=False, **params):
        self.check_mode = check_mode
        self._diff = False
        self.params = dict((k, v.get("default")) for k, v in spec.items())
        self.params.update(params)
        self.warnings = []
        self.commands = []

    def get_bin_path(self, name, **kw):
        return "/usr/bin/" + name

    def run_command(self, argv, **kw):  # the command boundary: qemu-img check of the fake images passes
        self.commands.append(argv)
        return 0, "", ""

    def warn(self, msg):
        self.warnings.append(msg)

    def fail_json(self, **kw):
        raise VmbackupError(kw["msg"])


def qcow2(backing=None):
    name = (backing or "").encode()
    head = b"QFI\xfb" + struct.pack(">I", 2) + struct.pack(">QI", 72 if name else 0, len(name))
    return head.ljust(72, b"\0") + name


def backup(root, vm, bid, parent=None, backing=None, **extra):
    d = os.path.join(root, vm, bid)
    os.makedirs(d)
    data = qcow2(backing if backing is not None else ("../%s/vda.qcow2" % parent if parent else None))
    with open(os.path.join(d, "vda.qcow2"), "wb") as fh:
        fh.write(data)
    with open(os.path.join(d, "domain.xml"), "w") as fh:
        fh.write("<domain/>")
    man = dict({"vm": vm, "backup_id": bid, "parent": parent, "type": "incremental" if parent else "full",
                "status": "complete", "disks": [{"target": "vda", "file": "vda.qcow2",
                                                 "mode": "delta" if parent else "full",
                                                 "sha256": hashlib.sha256(data).hexdigest()}]}, **extra)
    with open(os.path.join(d, "manifest.json"), "w") as fh:
        json.dump(man, fh)
    return d


@pytest.fixture
def repo(tmp_path):
    root = str(tmp_path / "repo")
    backup(root, "web1", B1)
    backup(root, "web1", B2, B1)
    backup(root, "web1", B3, B2)
    return root


def select(root, **kw):
    return _backup_repo.run(FakeModule(_backup_repo.ARGUMENT_SPEC, path=root, vm="web1", action="select", **kw))


def edit(root, bid, **changes):
    path = os.path.join(root, "web1", bid, "manifest.json")
    with open(path) as fh:
        man = json.load(fh)
    man.update(changes)
    with open(path, "w") as fh:
        json.dump(man, fh)


def test_an_untouched_chain_is_selected_with_its_images(repo):
    got = select(repo)
    assert [m["backup_id"] for m in got["chain"]] == [B1, B2, B3]
    assert got["backup"]["disks"][0]["image"] == os.path.join(repo, "web1", B3, "vda.qcow2")


@pytest.mark.parametrize("bad", ["../web2/" + B1, B1 + "/..", "/etc", "..", "latest/../x", B1 + "\n"])
def test_backup_ids_with_a_slash_or_no_id_are_refused_everywhere(repo, bad):
    with pytest.raises(VmbackupError, match="invalid backup"):
        select(repo, backup=bad)
    with pytest.raises(VmbackupError, match="invalid backup"):
        _verify.run(FakeModule(_verify.ARGUMENT_SPEC, path=repo, vm="web1", backup=bad))
    with pytest.raises(VmbackupError, match="invalid backup_id"):
        _backup_repo.run(FakeModule(_backup_repo.ARGUMENT_SPEC, path=repo, vm="web1", action="abort", backup_id=bad))
    with pytest.raises(VmbackupError, match="invalid backup"):
        _retention.run(FakeModule(_retention.ARGUMENT_SPEC, path=repo, vms=["web1"], action="synthesize",
                                  backup=bad, lock_owner="t"))


@pytest.mark.parametrize("field, value, why", [
    ("disks", [{"target": "vda", "file": "/etc/passwd", "mode": "full"}], "not a plain file name"),
    ("disks", [{"target": "vda", "file": "../../web2/%s/vda.qcow2" % B1, "mode": "full"}], "not a plain file name"),
    ("disks", [{"target": "../vda", "file": "vda.qcow2", "mode": "full"}], "target"),
    ("domain_xml", "/etc/shadow", "not a plain file name"),
    ("files", ["../nvram.fd"], "not a plain file name"),
    ("parent", "../../etc", "not an earlier backup ID"),
    ("parent", B3, "not an earlier backup ID"),
    ("backup_id", "../" + B2, "says it is backup"),
])
def test_a_manifest_that_points_outside_is_refused_and_marks_only_that_backup(repo, field, value, why):
    edit(repo, B2, **{field: value})
    with pytest.raises(ManifestError, match=why):
        Repository(repo).manifest("web1", B2)
    with pytest.raises(VmbackupError, match="cannot be used: .*%s" % why):
        select(repo, backup=B3)  # B3 needs B2
    assert select(repo)["backup"]["backup_id"] == B1  # latest usable
    listed = {m["backup_id"]: m for m in Repository(repo).backups("web1")}
    assert listed[B1]["usable"] and listed[B2]["status"] == "unreadable" and not listed[B3]["usable"]
    assert select(repo, backup=B1)["backup"]["backup_id"] == B1  # the rest of the VM is fine


def test_a_symlink_out_of_the_backup_directory_is_refused(repo, tmp_path):
    canary = tmp_path / "canary"
    canary.write_bytes(qcow2())
    image = os.path.join(repo, "web1", B1, "vda.qcow2")
    os.unlink(image)
    os.symlink(str(canary), image)
    with pytest.raises(VmbackupError, match="points outside its backup directory"):
        select(repo, backup=B3)
    nvram = os.path.join(repo, "web1", B3, "nvram.fd")
    os.symlink("/etc/shadow", nvram)
    with pytest.raises(ManifestError, match="nvram.fd .*points outside"):
        Repository(repo).manifest("web1", B3)


@pytest.mark.parametrize("backing", [
    "/etc/passwd",
    "../../web2/%s/vda.qcow2" % B1,   # another VM's image
    "../%s/vda.qcow2" % B1,           # not the parent (B2)
    "../%s/vdb.qcow2" % B2,           # the parent, but another disk
    "json:{\"file.filename\":\"/etc/passwd\"}",
])
def test_a_delta_whose_backing_is_not_its_parents_image_is_refused(repo, backing):
    with open(os.path.join(repo, "web1", B3, "vda.qcow2"), "wb") as fh:
        fh.write(qcow2(backing))
    with pytest.raises(VmbackupError, match="has the backing file .*may only build on ../%s/vda.qcow2" % B2):
        select(repo)
    out = _verify.run(FakeModule(_verify.ARGUMENT_SPEC, path=repo, vm="web1", fail_on_damage=False))
    assert [(d["backup_id"], "backing file" in d["problems"][0]) for d in out["damaged"]] == [(B3, True)]


def test_a_full_image_with_a_backing_file_is_refused(repo):
    with open(os.path.join(repo, "web1", B1, "vda.qcow2"), "wb") as fh:
        fh.write(qcow2("/etc/passwd"))
    with pytest.raises(VmbackupError, match="nothing \\(its backup has no parent\\)"):
        select(repo)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"backup_id": B2, "disks": "vda"})])
def test_an_unreadable_manifest_marks_its_backup_damaged_and_blocks_nothing_else(repo, content):
    with open(os.path.join(repo, "web1", B2, "manifest.json"), "w") as fh:
        fh.write(content)
    listed = _backup_repo.run(FakeModule(_backup_repo.ARGUMENT_SPEC, path=repo, vm="web1", action="list"))
    by_id = {m["backup_id"]: m for m in listed["backups"]}
    assert sorted(by_id) == [B1, B2, B3]
    assert by_id[B2]["status"] == "unreadable" and by_id[B2]["problems"] and by_id[B1]["usable"]
    assert select(repo)["backup"]["backup_id"] == B1  # B3 builds on the damaged B2
    out = _verify.run(FakeModule(_verify.ARGUMENT_SPEC, path=repo, vm="web1", fail_on_damage=False))
    assert {d["backup_id"] for d in out["damaged"]} == {B2, B3}
    assert os.path.exists(os.path.join(repo, "web1", B2, "damaged.json"))
    module = FakeModule(_retention.ARGUMENT_SPEC, path=repo, vms=["web1"], keep_last=1)
    got = _retention.run(module)
    assert [d["backup_id"] for d in got["damaged"]] == [B2]
    assert os.path.isdir(os.path.join(repo, "web1", B2))  # left alone
    assert any("left alone" in w for w in module.warnings)


def test_check_manifest_accepts_what_commit_writes():
    check_manifest({"vm": "web1", "backup_id": B2, "parent": B1, "domain_xml": "domain.xml", "files": ["nvram.fd"],
                    "disks": [{"target": "vda", "file": "vda.qcow2"}, {"target": "vdb", "file": "vdb.rbddiff"}]},
                   "web1", B2)
    check_manifest({"vm": "web1", "backup_id": B2 + "-1", "parent": None, "disks": []}, "web1", B2 + "-1")


def test_prune_waits_for_no_reader_and_leaves_a_read_vm_alone(repo):
    from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
    reader = _lock.lock_params(Repository(repo).lock_path("web1"), "restore-1", "restore of VM web1", mode="shared")
    _lock.acquire(FakeModule(_lock.ARGUMENT_SPEC), reader)
    module = FakeModule(_retention.ARGUMENT_SPEC, path=repo, vms=["web1"], keep_last=1, fail_on_locked=False)
    got = _retention.run(module)
    assert got["removed"] == [] and got["locked"][0]["vm"] == "web1"
    assert "restore-1" in got["locked"][0]["msg"]
    with pytest.raises(VmbackupError, match="prune left 1 VM.*restore of VM web1, shared"):
        _retention.run(FakeModule(_retention.ARGUMENT_SPEC, path=repo, vms=["web1"], keep_last=1))
    _lock.release(FakeModule(_lock.ARGUMENT_SPEC), reader)
    got = _retention.run(FakeModule(_retention.ARGUMENT_SPEC, path=repo, vms=["web1"], keep_last=1))
    assert got["locked"] == [] and not os.path.exists(Repository(repo).lock_path("web1"))
