# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side progress of long module runs: the lines shown, and when an action polls.

Transfers and lock waits write a small JSON state file on the host that runs them (see
``_transfer.Progress`` and ``_lock``). The progress callback reads those files when they are on
the controller; for a module that runs elsewhere (a backup node that is not the controller), its
action plugin starts it as an async job and reads the state file over the task's own connection
while it runs (``ProgressAction``).
"""

from __future__ import annotations

import json
import os
import shlex
import time

from ansible.plugins.action import ActionBase

from ansible_collections.vmbackup.libvirt.plugins.module_utils._units import human_size

DEFAULT_INTERVAL = 5.0
# The async job's time limit when the task sets none: longer than any transfer, so the limit
# never cuts a backup; the job still ends with its module.
DEFAULT_ASYNC_LIMIT = 7 * 24 * 3600
FIRST_LOOK = 0.3
LOCAL_CONNECTIONS = ("local", "ansible.builtin.local", "ansible.legacy.local")
# What async_status returns while the job runs (async_wrapper's first record); a module's own
# result may have a "started" key too (backup_repo's begin does), so "finished" alone cannot
# tell a running job from a finished one.
RUNNING_KEYS = ("started", "finished", "ansible_job_id", "results_file")
# Keys async_status adds to the module's own result.
ASYNC_KEYS = ("ansible_job_id", "finished", "results_file", "_ansible_suppress_tmpdir_delete")


def describe(state):
    if state.get("message"):
        return state["message"]
    parts = ["%s done" % human_size(state.get("done"))]
    if state.get("percent") is not None:
        parts.append("%.0f%%" % state["percent"])
    if state.get("rate"):
        parts.append("%s/s" % human_size(state["rate"]))
    if state.get("eta") is not None:
        parts.append("about %ds left" % state["eta"])
    return "%s: %s" % (state.get("label", "?"), ", ".join(parts))


def parse_state(text):
    """The state file's JSON, or None while it does not exist yet or is being replaced."""
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def interval_of(task_vars, environ):
    """Seconds between two progress reads: the vmbackup_progress_interval variable, else the
    VMBACKUP_PROGRESS_INTERVAL environment variable (the callback's), else 5; 0 turns it off."""
    value = task_vars.get("vmbackup_progress_interval", environ.get("VMBACKUP_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return DEFAULT_INTERVAL


def should_poll(transport, check_mode, user_async, progress_path, interval):
    """Run the module as an async job and show its progress, or just run it.

    Not for a local connection (the callback reads the files there), a check-mode run (nothing
    long happens), a task that is async already (the user polls it), a task without a progress
    file, or an interval of 0."""
    return bool(progress_path) and interval > 0 and not check_mode and not user_async \
        and transport not in LOCAL_CONNECTIONS


def job_done(status):
    """Whether async_status answered with the module's result rather than "still running"."""
    if status.get("finished") or status.get("failed"):
        return True
    return any(k not in RUNNING_KEYS and not k.startswith("_ansible") for k in status)


def hide_returned_secrets(result):
    """Mark a successful result that carries secrets (C(secrets_returned): a domain XML with its
    VNC/SPICE passwords, NVRAM, TPM state) as no_log; registered variables keep the data. Task-level
    no_log would also hide why a task failed: a failed result stays visible (its module masks
    the secrets it read)."""
    if result.get("secrets_returned") and not result.get("failed"):
        result["_ansible_no_log"] = True
    return result


def shell_path(path):
    """The path quoted for the remote shell, keeping a leading ~/ that the module would expand."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


class ProgressAction(ActionBase):
    """Run the module; on a remote host, as an async job whose progress file is shown while it runs."""

    _supports_check_mode = True
    _supports_async = True
    MODULE = None           # the module's FQCN
    PROGRESS_OPTION = None  # the module option that names its progress file

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # not used
        task_vars = task_vars or {}
        path = self._task.args.get(self.PROGRESS_OPTION)
        interval = interval_of(task_vars, os.environ)
        if not should_poll(self._connection.transport, self._task.check_mode, self._task.async_val, path, interval):
            wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
            result.update(self._execute_module(module_name=self.MODULE, task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return hide_returned_secrets(result)
        user_async, self._task.async_val = self._task.async_val, DEFAULT_ASYNC_LIMIT
        try:
            job = self._execute_module(module_name=self.MODULE, task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = user_async
        if job.get("failed") or "ansible_job_id" not in job:
            result.update(job)
            return result
        result.update(self._wait(job, path, interval, task_vars))
        return hide_returned_secrets(result)

    def _wait(self, job, path, interval, task_vars):
        poll = {"jid": job["ansible_job_id"], "_async_dir": os.path.dirname(job["results_file"])}
        host = task_vars.get("inventory_hostname", "?")
        try:
            node = self._connection.get_option("host")
        except KeyError:
            node = "?"
        # A first look soon: most runs of these modules (a lock that is free) end at once.
        pause = min(interval, FIRST_LOOK)
        while True:
            time.sleep(pause)
            pause = interval
            status = self._execute_module(module_name="ansible.legacy.async_status", module_args=poll,
                                          task_vars=task_vars, wrap_async=False)
            if job_done(status):
                break
            out = self._low_level_execute_command("cat -- %s 2>/dev/null" % shell_path(path))
            state = parse_state(out.get("stdout", "")) if out.get("rc") == 0 else None
            if state:
                self._display.display("  [progress] %s (on %s): %s" % (host, node, describe(state)))
        # The job's result file, as async_status mode=cleanup would remove it, without a module run.
        self._low_level_execute_command("rm -f -- %s" % shlex.quote(job["results_file"]))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return {k: v for k, v in status.items() if k not in ASYNC_KEYS}
