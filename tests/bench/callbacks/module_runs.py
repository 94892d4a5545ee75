# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bench aid, not part of the collection: counts the module runs of each play and host.

A module run is a task result (each item of a loop) of an action that starts a module on a host:
not skipped, and not one of the controller-only actions (set_fact, debug, assert, fail,
include_tasks, ...). Runs delegated to localhost for the backup slots count apart (``slots``), as
the issue counts them apart. Written as JSON to $VMBACKUP_BENCH_MODULE_RUNS when the playbook ends.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

CONTROLLER_ONLY = {
    "set_fact", "debug", "assert", "fail", "include_tasks", "import_tasks", "include_role", "import_role",
    "include_vars", "meta", "add_host", "group_by", "set_stats", "pause", "validate_argument_spec",
}


def _short(action):
    return (action or "").rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "module_runs"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._play = None
        self._counts = {}

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def _count(self, result, *_args, **_kwargs):
        task = result._task
        action = _short(task.action)
        if action in CONTROLLER_ONLY or result._result.get("skipped"):
            return
        if task.loop and "results" in result._result:
            return  # the loop's summary; its items were counted one by one
        host = result._host.get_name()
        kind = "slots" if action == "backup_lock" and "slot" in (task.get_name() or "") else "runs"
        entry = self._counts.setdefault(self._play, {}).setdefault(host, {"runs": 0, "slots": 0, "modules": []})
        entry[kind] += 1
        if kind == "runs":
            entry["modules"].append(action)

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_item_on_ok = v2_runner_item_on_failed = _count

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("VMBACKUP_BENCH_MODULE_RUNS")
        if path:
            with open(path, "w") as fh:
                json.dump(self._counts, fh, indent=1)
