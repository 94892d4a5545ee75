# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Harness of the collection's unit tests (run: .venv/bin/python -m pytest tests/unit -q).

The collection is imported as ``ansible_collections.vmbackup.libvirt``: this file puts
``build/collections`` on ``sys.path``, where ``ansible_collections/vmbackup/libvirt`` is a
relative symlink to the repository root (created when missing).

Modules run for real (``main()`` with module args set through
``ansible.module_utils.testing.patch_module_args``). The command boundary,
``AnsibleModule.run_command``, is replaced by :class:`RunCommandMock`, which checks each
call against the next expected one (argv, in order) and answers with its rc/out/err.
Around it, two more things are made deterministic and observable:

- ``AnsibleModule.get_bin_path`` answers ``/usr/bin/<name>`` (so argv do not depend on
  what the machine has installed); in expected argv a first element without ``/`` is
  written as the bare name and means ``/usr/bin/<name>``;
- ``exit_json``/``fail_json`` raise :class:`AnsibleExitJson`/:class:`AnsibleFailJson`
  (``SystemExit`` subclasses, as the real ones exit) carrying the result.

Case format (YAML files under tests/unit/plugins/modules/fixtures/, see there)::

    - id: name-of-the-case
      input: {module args}
      check_mode: false          # optional
      diff: false                # optional
      output: {changed: true, ...}  # subset of the result (dicts by key, lists item by item)
      failed: false              # true: the module must fail
      msg_contains: [..]         # substrings of msg (with failed: true)
      warnings_contain: [..]     # substrings, each in some warning
      run_command_calls:         # every call, in order, and nothing else
        - command: [virsh, -q, -c, "qemu:///system", domuuid, vm1]
          environ_update: {LC_ALL: C, LANG: C, LANGUAGE: C}   # optional check
          data: null             # optional check of stdin
          umask: "077"           # optional check of the umask the command runs with (octal)
          rc: 0
          out: "..."
          err: ""
          file_contains: [..]    # optional: the file named by the last argv item holds these

An argv item may be ``{regex: "..."}`` to match a generated name (temp files).
Strings in a case may use ``@@name@@`` placeholders that the test module fills in
(``@@host@@`` is always this machine's hostname, which modules put in messages).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from unittest import mock

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, "build", "collections")


def _ensure_collection_link():
    link = os.path.join(COLLECTIONS, "ansible_collections", "vmbackup", "libvirt")
    if os.path.isfile(os.path.join(link, "galaxy.yml")):
        return
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(os.path.join("..", "..", "..", ".."), link)  # build/collections/ansible_collections/vmbackup -> repo


_ensure_collection_link()
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

import yaml  # noqa: E402  (ansible-core's dependency)

from ansible.module_utils import basic  # noqa: E402

try:  # ansible-core >= 2.19
    from ansible.module_utils.testing import patch_module_args as _patch_module_args
except ImportError:  # pragma: no cover - older ansible-core
    import contextlib

    from ansible.module_utils.common.text.converters import to_bytes

    @contextlib.contextmanager
    def _patch_module_args(args=None):
        with mock.patch.object(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}))):
            yield

FAKE_BIN_DIR = "/usr/bin"


# --- exit_json / fail_json ------------------------------------------------------------
class AnsibleExitJson(SystemExit):
    """Raised by the patched ``exit_json``; ``result`` is what the module returned."""

    def __init__(self, result):
        super().__init__(0)
        self.result = result


class AnsibleFailJson(SystemExit):
    """Raised by the patched ``fail_json``; ``result`` holds msg, failed and the details."""

    def __init__(self, result):
        super().__init__(1)
        self.result = result


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, msg, **kwargs):
    kwargs.pop("exception", None)
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


def _get_bin_path(self, arg, required=False, opt_dirs=None):
    return "%s/%s" % (FAKE_BIN_DIR, arg)


def set_module_args(args, check_mode=False, diff=False):
    """Context manager exposing module args (plus check/diff mode) to AnsibleModule."""
    args = dict(args or {})
    if check_mode:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    return _patch_module_args(args)


# --- run_command ------------------------------------------------------------------------
def _argv_item_matches(expected, actual, first):
    if isinstance(expected, dict) and "regex" in expected:
        return re.search(expected["regex"], actual) is not None
    expected = str(expected)
    if first and "/" not in expected:
        expected = "%s/%s" % (FAKE_BIN_DIR, expected)
    return expected == actual


def argv_matches(expected, actual):
    return len(expected) == len(actual) and all(
        _argv_item_matches(e, a, i == 0) for i, (e, a) in enumerate(zip(expected, actual))
    )


class RunCommandMock:
    """Stands in for ``AnsibleModule.run_command``: expected calls in order, nothing else."""

    def __init__(self, calls):
        self.expected = list(calls or [])
        self.calls = []  # what the module actually ran: (argv, kwargs)

    def __call__(self, module, args, **kwargs):
        argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else args
        index = len(self.calls)
        self.calls.append((argv, kwargs))
        if index >= len(self.expected):
            pytest.fail("unexpected command #%d: %s\n(expected only %d commands)" % (index + 1, argv, len(self.expected)))
        call = self.expected[index]
        if not argv_matches(call["command"], argv):
            pytest.fail("command #%d differs\n  expected: %s\n  actual:   %s" % (index + 1, call["command"], argv))
        # pytest.fail, not assert: the module's own ``except Exception`` must not swallow it.
        if "environ_update" in call and kwargs.get("environ_update") != call["environ_update"]:
            pytest.fail("command #%d: environ_update %r, expected %r"
                        % (index + 1, kwargs.get("environ_update"), call["environ_update"]))
        if "data" in call and kwargs.get("data") != call["data"]:
            pytest.fail("command #%d: stdin %r, expected %r" % (index + 1, kwargs.get("data"), call["data"]))
        if "umask" in call:
            current = os.umask(0)
            os.umask(current)
            if current != int(str(call["umask"]), 8):
                pytest.fail("command #%d ran with umask %04o, expected %s" % (index + 1, current, call["umask"]))
        if call.get("file_contains") or call.get("file_lacks"):
            with open(argv[-1]) as fh:
                content = fh.read()
            for text in call.get("file_contains") or []:
                if text not in content:
                    pytest.fail("command #%d: %s lacks %r:\n%s" % (index + 1, argv[-1], text, content))
            for text in call.get("file_lacks") or []:
                if text in content:
                    pytest.fail("command #%d: %s has %r:\n%s" % (index + 1, argv[-1], text, content))
        return call.get("rc", 0), call.get("out", ""), call.get("err", "")

    def assert_all_called(self):
        if len(self.calls) < len(self.expected):
            missing = [c["command"] for c in self.expected[len(self.calls):]]
            pytest.fail("%d expected command(s) not run, first: %s" % (len(missing), missing[0]))


@pytest.fixture
def patched_module():
    """AnsibleModule with exit/fail raising and get_bin_path deterministic."""
    with mock.patch.multiple(basic.AnsibleModule, exit_json=_exit_json, fail_json=_fail_json,
                             get_bin_path=_get_bin_path):
        yield


@pytest.fixture
def run_command(patched_module):
    """``run_command(calls)`` installs a RunCommandMock answering ``calls``; returns it."""
    patchers = []

    def install(calls):
        fake = RunCommandMock(calls)
        patcher = mock.patch.object(basic.AnsibleModule, "run_command", autospec=True, side_effect=fake)
        patcher.start()
        patchers.append(patcher)
        return fake

    yield install
    for patcher in patchers:
        patcher.stop()


# --- YAML-driven module cases ----------------------------------------------------------------
def fill(value, values):
    """Replace ``@@name@@`` placeholders in every string of ``value``."""
    if isinstance(value, str):
        def sub(m):
            if m.group(1) not in values:
                raise KeyError("placeholder @@%s@@ has no value" % m.group(1))
            return str(values[m.group(1)])
        return re.sub(r"@@([A-Za-z0-9_.-]+)@@", sub, value)
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    return value


def load_cases(path):
    """The ``test_cases`` of a YAML file, as pytest params with their ids."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    return [pytest.param(case, id=case["id"]) for case in data["test_cases"]]


def assert_subset(expected, actual, where="result"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), "%s: expected a dict, got %r" % (where, actual)
        for key, value in expected.items():
            assert key in actual, "%s: no key %r in %s" % (where, key, sorted(actual))
            assert_subset(value, actual[key], "%s.%s" % (where, key))
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), \
            "%s: expected %r, got %r" % (where, expected, actual)
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_subset(e, a, "%s[%d]" % (where, i))
    else:
        assert expected == actual, "%s: expected %r, got %r" % (where, expected, actual)


def run_case(module_main, case, install_run_command, values=None):
    """Run one YAML case against ``module_main`` and check everything it states."""
    values = dict(values or {})
    values.setdefault("host", socket.gethostname())
    case = fill(case, values)
    fake = install_run_command(case.get("run_command_calls"))
    with set_module_args(case.get("input", {}), check_mode=case.get("check_mode", False),
                         diff=case.get("diff", False)):
        with pytest.raises((AnsibleExitJson, AnsibleFailJson)) as raised:
            module_main()
    result = raised.value.result
    failed = isinstance(raised.value, AnsibleFailJson)
    assert failed == bool(case.get("failed", False)), "failed=%s: %s" % (failed, json.dumps(result, indent=1, default=str))
    fake.assert_all_called()
    for text in case.get("msg_contains") or []:
        assert text in result.get("msg", ""), "msg lacks %r: %s" % (text, result.get("msg"))
    for text in case.get("warnings_contain") or []:
        assert any(text in w for w in result.get("warnings", [])), "no warning with %r: %s" % (text, result.get("warnings"))
    if "output" in case:
        assert_subset(case["output"], result)
    return result


@pytest.fixture
def module_case(run_command):
    """``module_case(main, case, values)`` runs a YAML case; returns the module's result."""
    def run(module_main, case, values=None):
        return run_case(module_main, case, run_command, values)
    return run


def pytest_generate_tests(metafunc):
    """A test taking ``case`` runs once per entry of its module's ``CASES_FILE``."""
    if "case" in metafunc.fixturenames and hasattr(metafunc.module, "CASES_FILE"):
        metafunc.parametrize("case", load_cases(metafunc.module.CASES_FILE))


class _Harness:
    """The helpers above, for test modules (which do not import conftest)."""

    AnsibleExitJson = AnsibleExitJson
    AnsibleFailJson = AnsibleFailJson
    RunCommandMock = RunCommandMock
    set_module_args = staticmethod(set_module_args)
    argv_matches = staticmethod(argv_matches)
    assert_subset = staticmethod(assert_subset)
    fill = staticmethod(fill)


@pytest.fixture
def harness(patched_module):
    return _Harness
