# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_lock's logic on real lock files: single locks, slots (the parallel backup limits)."""

from __future__ import annotations

import json
import time

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict((k, v.get("default")) for k, v in _lock.ARGUMENT_SPEC.items())
        self.params.update(params)


def take(path, owner, **kw):
    return _lock.run(FakeModule(path=str(path), owner=owner, **kw))


def test_single_lock_is_exclusive_and_names_its_holder(tmp_path):
    path = tmp_path / "web1.lock"
    assert take(path, "run-a", purpose="backup of VM web1")["changed"]
    assert take(path, "run-a") == {"changed": False, "held": True, "broke_stale": None, "path": str(path)}
    with pytest.raises(VmbackupError, match="backup of VM web1 is locked by run run-a"):
        take(path, "run-b", purpose="backup of VM web1")
    assert take(path, "run-b", state="absent")["changed"] is False  # not ours: left alone
    assert path.exists()
    assert take(path, "run-a", state="absent")["changed"]
    assert not path.exists()


def test_slots_bound_how_many_holders_there_are(tmp_path):
    pool = tmp_path / "slots" / "hypervisor-hv1"
    first = take(pool, "run:vm1", slots=2)
    second = take(pool, "run:vm2", slots=2)
    assert {first["path"], second["path"]} == {str(pool) + ".1", str(pool) + ".2"}
    assert take(pool, "run:vm1", slots=2)["path"] == first["path"]  # idempotent
    with pytest.raises(VmbackupError, match="All 2 slots for hv1 are taken .*run:vm1.*run:vm2"):
        take(pool, "run:vm3", slots=2, purpose="hv1", wait=1)
    assert take(pool, "run:vm1", slots=2, state="absent")["path"] == first["path"]
    assert take(pool, "run:vm3", slots=2)["path"] == first["path"]


def test_a_dead_holders_slot_is_taken_over(tmp_path):
    pool = tmp_path / "node-localhost"
    (tmp_path / "node-localhost.1").write_text(json.dumps({"owner": "old", "created": time.time() - 10, "host": "x"}))
    got = take(pool, "new", slots=1, stale_after=5)
    assert got["held"] and "older than 5s" in got["broke_stale"]


def test_check_mode_takes_nothing(tmp_path):
    path = tmp_path / "a.lock"
    got = _lock.run(FakeModule(check_mode=True, path=str(path), owner="r", slots=3))
    assert got["changed"] and not got["held"] and not (tmp_path / "a.lock.1").exists()
