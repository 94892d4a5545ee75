# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Prometheus textfile of a repository (backup_repo action=metrics)."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _metrics

FULL = {"backup_id": "20261205T010000Z", "type": "full", "started": "2026-12-05T01:00:00+00:00",
        "finished": "2026-12-05T01:02:30+00:00", "bytes_sent": 1000, "bytes_stored": 900}
INCR = {"backup_id": "20261206T010000Z", "type": "incremental", "started": "2026-12-06T01:00:00Z",
        "finished": "2026-12-06T01:00:10Z", "bytes_sent": 10, "bytes_stored": 12}


@pytest.mark.parametrize("started, finished, expected", [
    ("2026-12-06T01:00:00+00:00", "2026-12-06T01:00:10.5+00:00", 10.5),
    ("2026-12-06T01:00:00Z", "2026-12-06T02:00:00+01:00", 0.0),  # offsets count
    ("2026-12-06T01:00:00", "2026-12-06T01:01:00", 60.0),  # naive: UTC
    (None, "2026-12-06T01:00:00Z", None),
    ("s", "f", None),
])
def test_duration(started, finished, expected):
    assert _metrics.duration(started, finished) == expected


def test_last_success_survives_a_failed_run_and_a_vm_never_backed_up_shows_its_failure():
    reports = [{"hypervisor": "hv1", "results": [
        {"vm": "web1", "result": "failed", "started": "2026-12-07T01:00:00Z"},
        {"vm": "new1", "result": "failed"}]},
        {"hypervisor": "hv0", "results": [{"vm": "db1", "result": "ok", "finished": "2026-12-06T01:00:10Z"}]}]
    got = _metrics.samples("/srv/b", {"web1": [FULL, INCR], "db1": [FULL], "empty": []}, reports, 1796000000.0)
    web1 = {"vm": "web1", "repository": "/srv/b"}
    assert (web1, _metrics._epoch(INCR["finished"])) in got["vmbackup_last_success_timestamp_seconds"]
    assert (web1, 10.0) in got["vmbackup_last_success_duration_seconds"]
    assert (web1, 0) in got["vmbackup_last_success_full"]
    assert ({"vm": "db1", "repository": "/srv/b"}, 1) in got["vmbackup_last_success_full"]
    assert ({"vm": "empty", "repository": "/srv/b"}, 0) in got["vmbackup_usable_backups"]
    assert [lab["vm"] for lab, _v in got["vmbackup_last_success_timestamp_seconds"]] == ["db1", "web1"]
    runs = {(lab["hypervisor"], lab["vm"]): v for lab, v in got["vmbackup_last_run_success"]}
    assert runs == {("hv0", "db1"): 1, ("hv1", "web1"): 0, ("hv1", "new1"): 0}
    # a run with neither time has no run timestamp; one that never finished is dated by its start
    when = {lab["vm"]: v for lab, v in got["vmbackup_last_run_timestamp_seconds"]}
    assert when == {"db1": _metrics._epoch("2026-12-06T01:00:10Z"), "web1": _metrics._epoch("2026-12-07T01:00:00Z")}


def test_render_is_the_text_format():
    text = _metrics.render(_metrics.samples('/srv/"b"', {"web1": [FULL]}, [], 1796000000.5))
    lines = text.splitlines()
    assert lines[0] == ("# HELP vmbackup_last_success_timestamp_seconds When the VM's newest complete, usable backup "
                        "finished (Unix time).")
    assert lines[1] == "# TYPE vmbackup_last_success_timestamp_seconds gauge"
    assert lines[2] == 'vmbackup_last_success_timestamp_seconds{repository="/srv/\\"b\\"",vm="web1"} 1796432550.0'
    assert 'vmbackup_last_success_bytes_stored{repository="/srv/\\"b\\"",vm="web1"} 900' in lines
    assert lines[-1] == 'vmbackup_metrics_timestamp_seconds{repository="/srv/\\"b\\""} 1796000000.5'
    assert text.endswith("\n") and all(line.startswith(("# ", "vmbackup_")) for line in lines)
