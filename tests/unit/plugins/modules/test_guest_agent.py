# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""guest_agent, driven by fixtures/guest_agent.yaml (format: tests/unit/conftest.py).

Two more things are made deterministic: the clock (``NOW``), so the watchdog's deadline is known,
and /proc, which a case describes as ``procs: [{pid, argv, session}]`` (argv items may use @@script@@;
session defaults to pid, as a watchdog leads its own session).
"""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _guest_agent
from ansible_collections.vmbackup.libvirt.plugins.modules import guest_agent

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "guest_agent.yaml")
NOW = 1764633600  # 2025-12-02T00:00:00Z


def test_guest_agent(case, module_case, tmp_path, monkeypatch):
    values = {"script": _guest_agent.WATCHDOG_SCRIPT}
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a PID: skipped
    for entry in case.get("procs") or []:
        (proc / str(entry["pid"])).mkdir()
        argv = [values["script"] if a == "@@script@@" else str(a) for a in entry["argv"]]
        (proc / str(entry["pid"]) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        # pid (comm) state ppid pgrp session ...: a watchdog leads its own session unless said otherwise
        session = entry.get("session", entry["pid"])
        (proc / str(entry["pid"]) / "stat").write_text("%d (sh) S 1 %d %d 0 -1" % (entry["pid"], session, session))
    monkeypatch.setattr(_guest_agent, "PROC", str(proc))
    monkeypatch.setattr(_guest_agent, "_now", lambda: NOW)
    module_case(guest_agent.main, case, values)
