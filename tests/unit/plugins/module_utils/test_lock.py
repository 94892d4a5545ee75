# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_lock's logic on real lock files: single locks, slots (the parallel backup limits)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
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
    again = take(path, "run-a")
    assert {k: again[k] for k in ("changed", "held", "broke_stale", "path")} == {
        "changed": False, "held": True, "broke_stale": None, "path": str(path)}
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


def test_several_locks_are_taken_in_order_and_none_is_kept_when_one_cannot_be_had(tmp_path):
    hv, node = str(tmp_path / "hypervisor-hv1"), str(tmp_path / "node-n1")
    locks = [{"path": hv, "slots": 2, "purpose": "hypervisor hv1"}, {"path": node, "slots": 1, "purpose": "node n1"}]
    got = _lock.run(FakeModule(locks=locks, owner="run:vm1"))
    assert got["changed"] and [r["path"] for r in got["locks"]] == [hv + ".1", node + ".1"]
    again = _lock.run(FakeModule(locks=locks, owner="run:vm1"))
    assert not again["changed"]  # idempotent
    # vm2 gets the hypervisor's second slot, then not the node's only one: it gives the first back.
    with pytest.raises(VmbackupError) as err:
        _lock.run(FakeModule(locks=locks, owner="run:vm2", wait=1))
    assert "All 1 slots for node n1 are taken" in err.value.msg
    assert "given back: %s.2" % hv in err.value.msg
    assert err.value.details["locks"][0]["held"] is False
    assert not os.path.exists(hv + ".2")
    released = _lock.run(FakeModule(locks=locks, owner="run:vm1", state="absent"))
    assert released["changed"] and not os.path.exists(hv + ".1") and not os.path.exists(node + ".1")
    assert not _lock.run(FakeModule(locks=locks, owner="run:vm1", state="absent"))["changed"]


def test_a_dead_holders_slot_is_taken_over(tmp_path):
    pool = tmp_path / "node-localhost"
    (tmp_path / "node-localhost.1").write_text(json.dumps({"owner": "old", "created": time.time() - 10, "host": "x"}))
    got = take(pool, "new", slots=1, stale_after=5)
    assert got["held"] and "older than 5s" in got["broke_stale"]


def test_check_mode_takes_nothing(tmp_path):
    path = tmp_path / "a.lock"
    got = _lock.run(FakeModule(check_mode=True, path=str(path), owner="r", slots=3))
    assert got["changed"] and not got["held"] and not (tmp_path / "a.lock.1").exists()


STALE = {"owner": "dead-run", "purpose": "backup of VM web1", "created": 1000.0, "host": "elsewhere"}


def _race(path, owner, barrier, results):
    """One waiter: wait for the others, then try to take the stale lock at once."""
    barrier.wait()
    try:
        got = _lock.acquire(FakeModule(path=path, owner=owner), _params(path, owner))
        results.put((owner, bool(got["held"])))
    except VmbackupError:
        results.put((owner, False))


def _params(path, owner, **kw):
    return dict(FakeModule(path=path, owner=owner, **kw).params)


@pytest.mark.parametrize("waiters", [2, 4])
def test_waiters_breaking_one_stale_lock_at_once_exactly_one_holds_it(tmp_path, waiters):
    """200 rounds of N real processes, all judging the same stale lock at the same moment."""
    ctx = multiprocessing.get_context("fork")
    rounds, doubles = 200, []
    for n in range(rounds):
        path = str(tmp_path / ("r%d.lock" % n))
        with open(path, "w") as fh:
            json.dump(STALE, fh)
        barrier, results = ctx.Barrier(waiters), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, "w%d" % i, barrier, results)) for i in range(waiters)]
        for p in procs:
            p.start()
        outcome = [results.get(timeout=60) for _proc in procs]
        for p in procs:
            p.join(60)
        holders = sorted(o for o, held in outcome if held)
        with open(path) as fh:
            on_disk = json.load(fh)["owner"]
        if holders != [on_disk]:
            doubles.append((n, holders, on_disk))
    assert not doubles, "rounds where not exactly one waiter held the lock: %s" % doubles[:5]


def _alive_lock(**extra):
    pid = os.getpid()
    return dict({"owner": "live-run", "purpose": "backup of VM web1", "created": 1000.0, "node": "node1",
                 "repository": "/srv/a", "host": socket.gethostname(), "pid": pid,
                 "pid_start": _lock._proc_start(pid)}, **extra)


def test_a_live_owner_is_never_broken_for_its_age_nor_by_break_from_of_another_repository(tmp_path):
    path = tmp_path / "web1.lock"
    path.write_text(json.dumps(_alive_lock()))
    with pytest.raises(VmbackupError, match="locked by run live-run"):
        take(path, "new", stale_after=5)
    with pytest.raises(VmbackupError, match="locked by run live-run"):
        take(path, "new", break_from="node1", repository="/srv/a")  # even the same node and repository
    # A dead owner (another start time: the PID was reused) is broken.
    path.write_text(json.dumps(_alive_lock(pid_start="1")))
    assert "is gone" in take(path, "new")["broke_stale"]


@pytest.mark.parametrize("recorded, repository, broken", [
    ("/srv/a", "/srv/a", True),
    ("/srv/a", "/srv/b", False),   # a run into repository B must not break a run into A
    ("", "/srv/b", False),
    ("", "", True),
])
def test_break_from_matches_node_and_repository(tmp_path, recorded, repository, broken):
    path = tmp_path / "web1.lock"
    path.write_text(json.dumps({"owner": "old", "created": time.time(), "node": "node1", "repository": recorded,
                                "host": "hv1"}))
    if broken:
        got = take(path, "new", break_from="node1", repository=repository)
        assert got["held"] and "repository" in got["broke_stale"]
    else:
        with pytest.raises(VmbackupError, match="locked by run old"):
            take(path, "new", break_from="node1", repository=repository)
    assert json.loads(path.read_text())["owner"] == ("new" if broken else "old")


def test_shared_readers_exclude_writers_and_writers_exclude_readers(tmp_path):
    path = tmp_path / "web1.lock"
    first = take(path, "restore-1", mode="shared", purpose="restore of VM web1")
    second = take(path, "restore-2", mode="shared")
    assert first["held"] and second["held"] and first["path"] != second["path"]
    assert take(path, "restore-1", mode="shared")["changed"] is False  # idempotent
    with pytest.raises(VmbackupError, match=r"locked by run restore-\d \(restore of VM web1, shared\)|locked by run restore"):
        take(path, "prune-1", purpose="prune of VM web1")
    assert not path.exists()
    assert take(path, "restore-1", state="absent")["changed"]
    with pytest.raises(VmbackupError, match="locked by run restore-2"):
        take(path, "prune-1")
    assert take(path, "restore-2", state="absent")["changed"]
    assert take(path, "prune-1")["held"]
    with pytest.raises(VmbackupError, match="locked by run prune-1"):
        take(path, "restore-3", mode="shared")
    # A reader whose run is dead is broken like any stale lock.
    take(path, "prune-1", state="absent")
    dead = _lock.shared_path(str(path), "dead")
    with open(dead, "w") as fh:
        json.dump(_alive_lock(owner="dead", pid_start="1"), fh)
    assert "is gone" in take(path, "prune-2")["broke_stale"] and not os.path.exists(dead)


def test_a_waiting_run_says_who_holds_the_lock_and_how_long_it_waits(tmp_path):
    path = tmp_path / "web1.lock"
    progress = tmp_path / "progress" / "lock.json"
    take(path, "run-a", purpose="backup of VM web1")
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=lambda: take(path, "run-b", purpose="backup of VM web1", wait=30,
                                           progress_file=str(progress)))
    proc.start()
    try:
        for _try in range(100):
            if progress.exists():
                break
            time.sleep(0.1)
        state = json.loads(progress.read_text())
        assert "held by run run-a (backup of VM web1)" in state["message"]
        assert "waiting up to" in state["message"] and "of 30s" in state["message"]
    finally:
        take(path, "run-a", state="absent")
        proc.join(30)
    assert not progress.exists() and json.loads(path.read_text())["owner"] == "run-b"


def test_an_appending_holder_lets_readers_in_but_not_another_writer(tmp_path):
    path = tmp_path / "web1.lock"
    assert take(path, "backup-1", mode="append", purpose="backup of VM web1")["held"]
    assert take(path, "restore-1", mode="shared")["held"]  # a backup removes nothing a restore reads
    with pytest.raises(VmbackupError, match="locked by run restore-1 .*; run backup-1"):
        take(path, "prune-1")
    with pytest.raises(VmbackupError, match="locked by run backup-1"):
        take(path, "backup-2", mode="append")
    take(path, "backup-1", state="absent")
    with pytest.raises(VmbackupError, match="locked by run restore-1"):
        take(path, "prune-1")
    assert take(path, "backup-2", mode="append")["held"]
    with pytest.raises(VmbackupError, match="does not combine with slots"):
        take(path, "x", mode="shared", slots=2)


# make_exclusive: a backup's append lock turned exclusive in place, for the prune in its commit.
# Each case: who holds PATH (mode), the readers there, check mode; then the error (a regex) or
# the lock's mode afterwards, and whether a new reader is refused.
MAKE_EXCLUSIVE_CASES = [
    dict(id="append_lock_no_reader", holder=("backup-1", "append"), readers=[], check=False,
         error=None, mode="exclusive", changed=True, reader_refused=True),
    dict(id="already_exclusive", holder=("backup-1", "exclusive"), readers=[], check=False,
         error=None, mode="exclusive", changed=False, reader_refused=True),
    dict(id="live_reader_keeps_it_append", holder=("backup-1", "append"), readers=["live"], check=False,
         error=r"prune of VM web1 is locked by run restore-live \(restore of VM web1, shared\)", mode="append",
         changed=None, reader_refused=False),
    dict(id="dead_reader_is_broken", holder=("backup-1", "append"), readers=["dead"], check=False,
         error=None, mode="exclusive", changed=True, reader_refused=True),
    dict(id="check_mode_changes_nothing", holder=("backup-1", "append"), readers=[], check=True,
         error=None, mode="append", changed=True, reader_refused=False),
    dict(id="lock_of_another_run", holder=("backup-2", "append"), readers=[], check=False,
         error=r"run backup-1 does not hold the lock .*held by run backup-2", mode="append", changed=None,
         reader_refused=False),
    dict(id="no_lock_at_all", holder=None, readers=[], check=False,
         error=r"run backup-1 does not hold the lock .*it is free", mode=None, changed=None, reader_refused=False),
]


@pytest.mark.parametrize("case", MAKE_EXCLUSIVE_CASES, ids=[c["id"] for c in MAKE_EXCLUSIVE_CASES])
def test_make_exclusive(tmp_path, case):
    path = tmp_path / "web1.lock"
    if case["holder"]:
        owner, mode = case["holder"]
        assert take(path, owner, mode=mode, purpose="backup of VM web1")["held"]
    for kind in case["readers"]:
        if kind == "live":
            assert take(path, "restore-live", mode="shared", purpose="restore of VM web1")["held"]
        else:
            with open(_lock.shared_path(str(path), "restore-dead"), "w") as fh:
                json.dump(_alive_lock(owner="restore-dead", mode="shared", pid_start="1"), fh)
    module = FakeModule(check_mode=case["check"], path=str(path), owner="backup-1")
    params = dict(module.params, purpose="prune of VM web1")
    if case["error"]:
        with pytest.raises(VmbackupError, match=case["error"]):
            _lock.make_exclusive(module, params)
    else:
        got = _lock.make_exclusive(module, params)
        assert got["held"] and got["path"] == str(path) and got["changed"] is case["changed"]
    if case["mode"]:
        assert json.loads(path.read_text())["mode"] == case["mode"]
    else:
        assert not path.exists()
    if case["holder"]:
        if case["reader_refused"]:
            with pytest.raises(VmbackupError, match="is locked by run"):
                take(path, "restore-new", mode="shared")
        elif not case["readers"]:
            assert take(path, "restore-new", mode="shared")["held"]
    assert not os.path.exists(str(path) + ".tmp")
