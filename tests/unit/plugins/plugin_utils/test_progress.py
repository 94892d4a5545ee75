"""Progress of modules that run on another host: when the action polls, what it shows, what it returns."""

from __future__ import annotations

import json

import pytest

from ansible_collections.vmbackup.libvirt.plugins.plugin_utils import _progress
from ansible_collections.vmbackup.libvirt.plugins.plugin_utils._progress import (
    ProgressAction, describe, interval_of, job_done, parse_state, shell_path, should_poll)


@pytest.mark.parametrize("transport, check_mode, user_async, path, interval, expected", [
    ("ssh", False, 0, "/p/x.json", 5.0, True),
    ("ansible.builtin.ssh", False, 0, "~/p/x.json", 0.5, True),
    ("paramiko_ssh", False, 0, "/p/x.json", 5.0, True),
    ("local", False, 0, "/p/x.json", 5.0, False),          # the callback reads local files
    ("ansible.builtin.local", False, 0, "/p/x.json", 5.0, False),
    ("ssh", True, 0, "/p/x.json", 5.0, False),             # check mode: nothing long happens
    ("ssh", False, 600, "/p/x.json", 5.0, False),          # the user's own async
    ("ssh", False, 0, None, 5.0, False),                   # no progress file asked for
    ("ssh", False, 0, "", 5.0, False),
    ("ssh", False, 0, "/p/x.json", 0.0, False),            # turned off
])
def test_should_poll(transport, check_mode, user_async, path, interval, expected):
    assert should_poll(transport, check_mode, user_async, path, interval) is expected


@pytest.mark.parametrize("task_vars, environ, expected", [
    ({}, {}, 5.0),
    ({"vmbackup_progress_interval": 0.5}, {"VMBACKUP_PROGRESS_INTERVAL": "9"}, 0.5),
    ({}, {"VMBACKUP_PROGRESS_INTERVAL": "2"}, 2.0),
    ({"vmbackup_progress_interval": "0"}, {}, 0.0),
    ({"vmbackup_progress_interval": -3}, {}, 0.0),
    ({"vmbackup_progress_interval": "soon"}, {}, 5.0),
])
def test_interval_of(task_vars, environ, expected):
    assert interval_of(task_vars, environ) == expected


@pytest.mark.parametrize("status, expected", [
    ({"started": True, "finished": False, "ansible_job_id": "j1", "_ansible_parsed": True}, False),
    ({"started": True, "finished": False, "ansible_job_id": "j1", "results_file": "/r/j1"}, False),  # not written yet
    # backup_repo's begin returns its own "started": async_status then says finished=False
    ({"started": "2026-12-02T05:52:39+00:00", "finished": False, "changed": True, "backup_id": "B"}, True),
    ({"finished": True, "ansible_job_id": "j1", "changed": False}, True),
    ({"failed": True, "msg": "could not find job", "started": True, "finished": True}, True),
])
def test_job_done(status, expected):
    assert job_done(status) is expected


@pytest.mark.parametrize("path, expected", [
    ("~/.ansible/vmbackup-progress/a b.json", "~/'.ansible/vmbackup-progress/a b.json'"),
    ("/var/tmp/p/x.json", "/var/tmp/p/x.json"),
    ("/tmp/$(reboot).json", "'/tmp/$(reboot).json'"),
])
def test_shell_path(path, expected):
    assert shell_path(path) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"label": "vda", "done": 1}', {"label": "vda", "done": 1}),
    ("", None),                 # not written yet
    ('{"label": "vd', None),    # never half a file (the writer renames), but a read may race
    ("[1, 2]", None),
])
def test_parse_state(text, expected):
    assert parse_state(text) == expected


@pytest.mark.parametrize("state, expected", [
    ({"label": "hv1:/img/a.qcow2 -> /r/vda.qcow2", "done": 3 * 1024 ** 2, "percent": 50.0, "rate": 1024 ** 2, "eta": 3},
     "hv1:/img/a.qcow2 -> /r/vda.qcow2: 3.0 MiB done, 50%, 1.0 MiB/s, about 3s left"),
    ({"label": "vdb", "done": 0}, "vdb: 0.0 B done"),
    ({"message": "waiting for the lock of web1 held by run X for 12 s"}, "waiting for the lock of web1 held by run X for 12 s"),
])
def test_describe(state, expected):
    assert describe(state) == expected


class FakeConnection:
    transport = "ssh"
    has_native_async = False

    class _shell:  # noqa: N801 - the attribute ActionBase reads
        tmpdir = None

    def get_option(self, name):
        assert name == "host"
        return "node1.example"


class FakeTask:
    def __init__(self, args, check_mode=False, async_val=0):
        self.args = args
        self.check_mode = check_mode
        self.async_val = async_val


class Display:
    def __init__(self):
        self.lines = []

    def display(self, msg):
        self.lines.append(msg)


def make_action(monkeypatch, args, statuses, progress, check_mode=False):
    """A ProgressAction whose remote side is faked at its boundary: module runs and shell commands."""
    monkeypatch.setattr(_progress.time, "sleep", lambda s: None)
    action = ProgressAction.__new__(ProgressAction)
    action.MODULE = "vmbackup.libvirt.disk_transfer"
    action.PROGRESS_OPTION = "progress_file"
    action._task = FakeTask(args, check_mode)
    action._connection = FakeConnection()
    action._display = Display()
    calls = []

    def execute_module(module_name=None, module_args=None, task_vars=None, wrap_async=False):
        calls.append((module_name, module_args, wrap_async, action._task.async_val))
        if module_name == action.MODULE:
            if wrap_async:
                return {"ansible_job_id": "j1", "results_file": "/root/.ansible_async/j1", "started": 1, "finished": 0}
            return {"changed": True, "sync": True}
        if (module_args or {}).get("mode") == "cleanup":
            return {}
        return statuses.pop(0)

    def low_level(cmd, *a, **kw):
        calls.append(("shell", cmd))
        text = progress.pop(0) if progress else ""
        return {"rc": 0 if text else 1, "stdout": text}

    action._execute_module = execute_module
    action._low_level_execute_command = low_level
    action._remove_tmp_path = lambda path: calls.append(("rm", path))
    monkeypatch.setattr(ActionProgressBase, "run", lambda self, tmp=None, task_vars=None: {}, raising=True)
    return action, calls


ActionProgressBase = _progress.ActionBase


def test_remote_module_runs_as_a_job_and_shows_its_progress(monkeypatch):
    state = {"label": "vda", "done": 1024 ** 2, "percent": 25.0}
    action, calls = make_action(
        monkeypatch, {"progress_file": "~/.ansible/vmbackup-progress/b-vda.json"},
        statuses=[{"started": 1, "finished": 0}, {"started": 1, "finished": 0},
                  {"started": "2026-12-02T05:52:39+00:00", "finished": False, "changed": True,
                   "sha256": "ab", "bytes_sent": 7}],
        progress=[json.dumps(state), ""])
    result = action.run(task_vars={"inventory_hostname": "web1@hv1", "vmbackup_progress_interval": 1})
    # the module's result (its own "started" too), without the job's keys
    assert result == {"started": "2026-12-02T05:52:39+00:00", "changed": True, "sha256": "ab", "bytes_sent": 7}
    assert calls[0] == ("vmbackup.libvirt.disk_transfer", None, True, _progress.DEFAULT_ASYNC_LIMIT)
    assert action._task.async_val == 0  # given back
    assert ("shell", "cat -- ~/.ansible/vmbackup-progress/b-vda.json 2>/dev/null") in calls
    assert action._display.lines == ["  [progress] web1@hv1 (on node1.example): vda: 1.0 MiB done, 25%"]
    assert calls[-2] == ("shell", "rm -f -- /root/.ansible_async/j1")  # the job's result file goes


def test_failed_remote_module_keeps_its_error(monkeypatch):
    action, _calls = make_action(
        monkeypatch, {"progress_file": "/p/x.json"},
        statuses=[{"finished": 1, "failed": True, "msg": "qemu-img convert failed (rc=1): no space", "rc": 1}],
        progress=[])
    result = action.run(task_vars={"vmbackup_progress_interval": 1})
    assert result == {"failed": True, "msg": "qemu-img convert failed (rc=1): no space", "rc": 1}


@pytest.mark.parametrize("args, check_mode, task_vars", [
    ({"progress_file": "/p/x.json"}, True, {}),
    ({}, False, {}),
    ({"progress_file": "/p/x.json"}, False, {"vmbackup_progress_interval": 0}),
])
def test_runs_plainly_without_polling(monkeypatch, args, check_mode, task_vars):
    action, calls = make_action(monkeypatch, args, statuses=[], progress=[], check_mode=check_mode)
    assert action.run(task_vars=task_vars) == {"changed": True, "sync": True}
    assert calls[0][2] is False and not [c for c in calls if c[0] == "shell"]


@pytest.mark.parametrize("result, hidden", [
    ({"changed": False, "secrets_returned": True, "domain_xml": "<domain/>"}, True),
    ({"failed": True, "secrets_returned": True, "msg": "sha256 differs"}, False),  # an error stays readable
    ({"changed": False, "secrets_returned": False}, False),
    ({"changed": True}, False),
])
def test_hide_returned_secrets(result, hidden):
    assert bool(_progress.hide_returned_secrets(dict(result)).get("_ansible_no_log")) is hidden


def test_a_result_with_secrets_is_hidden_when_run_plainly_and_as_a_job(monkeypatch):
    # The module's own result says it carries secrets (backup_repo select with include_xml).
    for args, statuses in (({}, []), ({"progress_file": "/p/x.json"},
                                      [{"finished": 1, "changed": False, "secrets_returned": True}])):
        action, _calls = make_action(monkeypatch, args, statuses=statuses, progress=[])
        plain = action._execute_module

        def execute_module(module_name=None, module_args=None, task_vars=None, wrap_async=False, plain=plain):
            got = plain(module_name, module_args, task_vars, wrap_async)
            return dict(got, secrets_returned=True) if got.get("sync") else got

        action._execute_module = execute_module
        assert action.run(task_vars={"vmbackup_progress_interval": 1})["_ansible_no_log"] is True
