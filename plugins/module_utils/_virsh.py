# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt through virsh: the calls the modules share, with errors that say what to do."""

from __future__ import annotations

import base64
import json
import time
from xml.etree import ElementTree

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)

DEFAULT_URI = "qemu:///system"

URI_ARGSPEC = dict(uri=dict(type="str", default=DEFAULT_URI))

# Domain states (virsh domstate) in which a QEMU process holds the VM's disks open.
RUNNING_STATES = ("running", "paused", "in shutdown", "pmsuspended")


class DomainNotFound(VmbackupError):
    pass


class Virsh:
    def __init__(self, runner, uri=DEFAULT_URI):
        self.runner = runner
        self.uri = uri or DEFAULT_URI

    @property
    def is_xen(self):
        return self.uri.startswith("xen") or self.uri.startswith("libxl")

    def run(self, args, what=None, hint=None, data=None, check_rc=True, timeout=None):
        try:
            return self.runner.run(
                ["virsh", "-q", "-c", self.uri] + list(args), what=what or "virsh %s" % args[0],
                hint=hint, data=data, check_rc=check_rc, timeout=timeout,
            )
        except CommandError as exc:
            err = (exc.stderr or "")
            if "failed to connect" in err.lower() or "no connection driver" in err.lower():
                raise VmbackupError(
                    "libvirt at URI %s does not answer on host %s: %s. Check that libvirtd (or "
                    "virtqemud) runs there and that the URI is right (qemu:///system for KVM, "
                    "xen:///system for Xen)." % (self.uri, self.runner.host, err.strip()),
                    cmd=exc.argv, rc=exc.rc, stderr=exc.stderr,
                )
            raise

    def version(self):
        _rc, out, _err = self.run(["version"], what="querying the libvirt version")
        info = {}
        for line in out.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                info[key.strip()] = value.strip()
        return info

    def exists(self, name):
        rc, _out, err = self.run(["domuuid", name], check_rc=False)
        if rc == 0:
            return True
        if "failed to get domain" in err.lower() or "domain not found" in err.lower():
            return False
        # A connection problem: let run() raise its clear message.
        self.run(["domuuid", name])
        return False  # pragma: no cover

    def require(self, name):
        if not self.exists(name):
            raise DomainNotFound(
                "VM '%s' does not exist on host %s (libvirt URI %s). Check the name with "
                "'virsh -c %s list --all'." % (name, self.runner.host, self.uri, self.uri)
            )

    def list_names(self):
        _rc, out, _err = self.run(["list", "--all", "--name"], what="listing domains")
        return [line.strip() for line in out.splitlines() if line.strip()]

    def pool_paths(self, types):
        """Target paths of the storage pools of these types (dir, fs, netfs), active or not; None
        when this libvirt has no storage driver (pool-list fails, say the Xen or a minimal build)."""
        rc, out, _err = self.run(["pool-list", "--all", "--name", "--type", ",".join(types)],
                                 what="listing the storage pools", check_rc=False)
        if rc != 0:
            return None
        paths = []
        for name in [line.strip() for line in out.splitlines() if line.strip()]:
            xml = self.run(["pool-dumpxml", name], what="reading storage pool %s" % name)[1]
            try:  # libvirt's own output, not the repository's
                path = ElementTree.fromstring(xml).findtext("target/path")
            except ElementTree.ParseError as exc:
                raise VmbackupError("the XML of storage pool %s on host %s does not parse: %s"
                                    % (name, self.runner.host, exc))
            if path:
                paths.append(path.strip())
        return paths

    def dumpxml(self, name, inactive=False, security_info=False):
        args = ["dumpxml", name]
        if inactive:
            args.append("--inactive")
        if security_info:
            args.append("--security-info")
        return self.run(args, what="reading the XML of VM %s" % name)[1]

    def state(self, name):
        _rc, out, _err = self.run(["domstate", name], what="reading the state of VM %s" % name)
        return out.strip()

    def dominfo(self, name):
        _rc, out, _err = self.run(["dominfo", name], what="reading dominfo of VM %s" % name)
        info = {}
        for line in out.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                info[key.strip().lower()] = value.strip()
        return info

    def domblkinfo(self, name, target):
        _rc, out, _err = self.run(["domblkinfo", name, target],
                                  what="reading the size of disk %s of VM %s" % (target, name))
        info = {}
        for line in out.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                try:
                    info[key.strip().lower()] = int(value.strip())
                except ValueError:
                    pass
        return info

    def agent_command(self, name, command, arguments=None, timeout=5):
        payload = {"execute": command}
        if arguments is not None:
            payload["arguments"] = arguments
        _rc, out, _err = self.run(
            ["qemu-agent-command", name, "--timeout", str(int(timeout)), json.dumps(payload)],
            what="guest agent command %s in VM %s" % (command, name),
            hint="Check that qemu-guest-agent runs in the guest and that the domain has an "
                 "org.qemu.guest_agent.0 channel.",
            timeout=timeout + 30,
        )
        return json.loads(out).get("return")

    def agent_ping(self, name, timeout=5):
        try:
            self.agent_command(name, "guest-ping", timeout=timeout)
            return True
        except VmbackupError:
            return False

    def guest_exec(self, name, argv, timeout=60, stdin=None):
        """Run a command in the guest through the agent; return (exitcode, stdout, stderr)."""
        args = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin.encode("utf-8")).decode("ascii")
        pid = self.agent_command(name, "guest-exec", args, timeout=10)["pid"]
        deadline = time.time() + timeout
        while True:
            status = self.agent_command(name, "guest-exec-status", {"pid": pid}, timeout=10)
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode("utf-8", "replace")
                err = base64.b64decode(status.get("err-data", "")).decode("utf-8", "replace")
                return status.get("exitcode", -1), out, err
            if time.time() > deadline:
                raise VmbackupError(
                    "command %s in VM %s did not finish within %ss" % (argv, name, timeout)
                )
            time.sleep(0.5)
