# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the guest_agent module: ping, run a command, freeze and thaw file systems."""

from __future__ import annotations

import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import URI_ARGSPEC, Virsh

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    action=dict(type="str", required=True, choices=["ping", "exec", "freeze", "thaw", "status"]),
    command=dict(type="list", elements="str"),
    timeout=dict(type="int", default=60),
    wait=dict(type="int", default=0),
    **URI_ARGSPEC
)


def run(module):
    p = module.params
    virsh = Virsh(CommandRunner(module), p["uri"])
    name = p["name"]
    virsh.require(name)
    action = p["action"]
    if action == "ping":
        deadline = time.time() + p["wait"]
        while True:
            if virsh.agent_ping(name, timeout=min(p["timeout"], 10)):
                return {"changed": False, "agent": True}
            if time.time() >= deadline:
                raise VmbackupError(
                    "the guest agent of VM %s on host %s does not answer%s. Check that qemu-guest-agent "
                    "runs in the guest and the domain has an org.qemu.guest_agent.0 channel."
                    % (name, virsh.runner.host, " after %ss" % p["wait"] if p["wait"] else ""))
            time.sleep(2)
    if action == "status":
        status = virsh.agent_command(name, "guest-fsfreeze-status", timeout=p["timeout"])
        return {"changed": False, "frozen": status == "frozen", "status": status}
    if action == "exec":
        if not p["command"]:
            raise VmbackupError("command is required with action=exec")
        if module.check_mode:
            return {"changed": True}
        rc, out, err = virsh.guest_exec(name, p["command"], timeout=p["timeout"])
        result = {"changed": True, "rc": rc, "stdout": out, "stderr": err}
        if rc != 0:
            raise VmbackupError("command %s in VM %s on host %s exited with rc=%s; stderr: %s"
                                % (p["command"], name, virsh.runner.host, rc, err.strip()), **result)
        return result
    status = virsh.agent_command(name, "guest-fsfreeze-status", timeout=min(p["timeout"], 10))
    if action == "freeze":
        if status == "frozen":
            return {"changed": False, "frozen": True}
        if not module.check_mode:
            # domfsfreeze blocks while the agent hangs; timeout(1) bounds it, and the caller thaws.
            virsh.run(["domfsfreeze", name], what="freezing the file systems of VM %s" % name,
                      timeout=p["timeout"], hint="The guest stays usable; thaw runs next.")
        return {"changed": True, "frozen": True}
    # thaw
    if status != "frozen":
        return {"changed": False, "frozen": False}
    if not module.check_mode:
        virsh.run(["domfsthaw", name], what="thawing the file systems of VM %s" % name, timeout=p["timeout"])
    return {"changed": True, "frozen": False}
