# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CommandRunner: argv, C locale, and what its errors say (host, command, rc, stderr, hint)."""

from __future__ import annotations

from unittest import mock

import pytest

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _command
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    C_LOCALE,
    CommandError,
    CommandRunner,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module

C_ENV = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}


@pytest.fixture
def module(harness):
    with harness.set_module_args({}):
        yield AnsibleModule(argument_spec={})


def test_c_locale_constant():
    assert C_LOCALE == C_ENV


def test_run_resolves_binary_and_uses_c_locale(module, run_command):
    fake = run_command([
        {"command": ["qemu-img", "info", "--output=json", "/images/a b.qcow2"], "environ_update": C_ENV,
         "data": None, "out": "{}"},
    ])
    runner = CommandRunner(module, host="hv1")
    assert runner.run(["qemu-img", "info", "--output=json", "/images/a b.qcow2"]) == (0, "{}", "")
    fake.assert_all_called()
    argv, kwargs = fake.calls[0]
    assert argv[0] == "/usr/bin/qemu-img"
    assert kwargs["environ_update"] == C_ENV


def test_run_passes_secrets_on_stdin(module, run_command):
    run_command([{"command": ["rbd", "import", "-"], "data": "s3cret", "environ_update": C_ENV}])
    CommandRunner(module, host="hv1").run(["rbd", "import", "-"], data="s3cret")


def test_error_names_host_command_rc_stderr_and_hint(module, run_command):
    run_command([{"command": ["virsh", "-q", "domstate", "my vm"], "rc": 1,
                  "out": "ignored", "err": "error: failed to get domain 'my vm'\n"}])
    runner = CommandRunner(module, host="hv1.example")
    with pytest.raises(CommandError) as raised:
        runner.run(["virsh", "-q", "domstate", "my vm"], what="reading the state of VM my vm",
                   hint="Check the name.")
    exc = raised.value
    assert exc.msg == (
        "reading the state of VM my vm failed on host hv1.example: command "
        "'/usr/bin/virsh -q domstate 'my vm'' exited with rc=1; "
        "stderr: error: failed to get domain 'my vm'. Check the name."
    )
    assert exc.rc == 1
    assert exc.argv == ["/usr/bin/virsh", "-q", "domstate", "my vm"]
    assert exc.details == {"cmd": exc.argv, "rc": 1, "stdout": "ignored",
                           "stderr": "error: failed to get domain 'my vm'\n"}


def test_error_without_stderr_quotes_stdout(module, run_command):
    run_command([{"command": ["qemu-img", "check", "/x"], "rc": 3, "out": "leaks found\n", "err": ""}])
    with pytest.raises(CommandError) as raised:
        CommandRunner(module, host="hv1").run(["qemu-img", "check", "/x"])
    assert raised.value.msg == "command failed on host hv1: command '/usr/bin/qemu-img check /x' exited with rc=3; stdout: leaks found"


def test_error_host_defaults_to_hostname(module, run_command):
    run_command([{"command": ["false"], "rc": 1}])
    with mock.patch.object(_command.socket, "gethostname", return_value="hv-local"):
        runner = CommandRunner(module)
    with pytest.raises(CommandError) as raised:
        runner.run(["false"])
    assert "on host hv-local" in raised.value.msg
    assert "rc=1" in raised.value.msg


def test_ok_rcs_and_check_rc(module, run_command):
    run_command([{"command": ["qemu-img", "compare", "a", "b"], "rc": 1},
                 {"command": ["virsh", "domuuid", "x"], "rc": 1, "err": "nope"}])
    runner = CommandRunner(module, host="hv1")
    assert runner.run(["qemu-img", "compare", "a", "b"], ok_rcs=(0, 1))[0] == 1
    assert runner.run(["virsh", "domuuid", "x"], check_rc=False) == (1, "", "nope")


def test_timeout_wraps_command_and_says_so(module, run_command):
    run_command([{"command": ["timeout", "--kill-after=10", "30s", "/usr/bin/virsh", "qemu-agent-command", "vm"],
                  "rc": 124, "err": ""}])
    with pytest.raises(CommandError) as raised:
        CommandRunner(module, host="hv1").run(["virsh", "qemu-agent-command", "vm"], timeout=30)
    assert "rc=124" in raised.value.msg
    assert "timed out after 30s" in raised.value.msg


def test_missing_binary_says_where_it_looked(module):
    with mock.patch.object(AnsibleModule, "get_bin_path", return_value=None):
        runner = CommandRunner(module, host="hv1")
        with pytest.raises(VmbackupError) as raised:
            runner.run(["qemu-img", "info", "x"])
        assert "'qemu-img' was not found on host hv1" in raised.value.msg
        assert "/usr/sbin" in raised.value.msg
        assert "vmbackup.libvirt.prep" in raised.value.msg
        with pytest.raises(VmbackupError) as raised:
            runner.binary("rbd", hint="Install ceph-common.")
        assert raised.value.msg.endswith("Install ceph-common.")


def test_run_module_turns_errors_into_fail_json(module, run_command, harness):
    run_command([{"command": ["virsh", "list"], "rc": 1, "err": "error: failed to connect"}])

    def logic(mod):
        CommandRunner(mod, host="hv1").run(["virsh", "list"], what="listing domains", hint="Start libvirtd.")

    with pytest.raises(harness.AnsibleFailJson) as raised:
        run_module(module, logic)
    result = raised.value.result
    assert result["failed"] is True
    assert result["msg"] == ("listing domains failed on host hv1: command '/usr/bin/virsh list' exited with "
                             "rc=1; stderr: error: failed to connect. Start libvirtd.")
    assert result["rc"] == 1
    assert result["cmd"] == ["/usr/bin/virsh", "list"]
    assert result["stderr"] == "error: failed to connect"


def test_run_module_exits_with_result(module, harness):
    with pytest.raises(harness.AnsibleExitJson) as raised:
        run_module(module, lambda mod: {"changed": True, "x": 1})
    assert raised.value.result == {"changed": True, "x": 1}
