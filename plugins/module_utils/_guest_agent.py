# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the guest_agent module: ping, run a command, freeze/thaw, pause/resume.

A guest must never stay frozen or paused because the run that froze it died: the controller
killed, its SSH link dropped, the module killed. ``always:`` in a role does not run then. So
``freeze`` and ``pause`` first arm a watchdog on the hypervisor (``arm_watchdog``): a small
``sh`` started through ``setsid --fork``, so it belongs to no SSH session, no module and no
process group of the run. It sleeps until its deadline, then thaws the guest's file systems
(``virsh domfsthaw``) or resumes the domain (``virsh resume``, only if it is still paused),
each bounded by timeout(1), and ends. It writes no file: its state is its command line,
``vmbackup-watchdog URI VM KIND DEADLINE``. ``thaw`` and ``resume`` thaw / resume first and
then disarm (``disarm_watchdogs``): every watchdog of that VM and kind found in /proc is
killed with its process group. The order is what makes the race harmless: if the run dies
between the two, the watchdog thaws a thawed guest (a no-op) or finds it running; if the
watchdog fires while the run thaws, both thaws are idempotent, and resume is only sent to a
paused domain. A watchdog found past its deadline (or gone) may have thawed or resumed the
guest before the run did, that is, before all snapshots were taken: ``thaw`` / ``resume``
say so (``watchdog.fired``) and the backup role fails the backup rather than keep one that
is not from one instant.
"""

from __future__ import annotations

import os
import time
from xml.etree import ElementTree

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import URI_ARGSPEC, Virsh

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    action=dict(type="str", required=True,
                choices=["ping", "exec", "freeze", "thaw", "status", "pause", "resume"]),
    command=dict(type="list", elements="str"),
    timeout=dict(type="int", default=60),
    wait=dict(type="int", default=0),
    watchdog=dict(type="int", default=300),
    **URI_ARGSPEC
)

WATCHDOG_MARK = "vmbackup-watchdog"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
PROC = "/proc"

# $0 mark, $1 URI, $2 VM, $3 thaw|resume, $4 deadline (epoch s), $5 seconds, $6 virsh, $7 timeout(1).
# It prints its PID (the leader of its own session and process group), lets go of the module's pipes,
# sleeps, then fires once and ends.
WATCHDOG_SCRIPT = (
    'echo $$; exec </dev/null >/dev/null 2>&1; cd / || exit 1; sleep "$5"; '
    'if [ "$3" = thaw ]; then "$7" -k 10 60 "$6" -q -c "$1" domfsthaw "$2"; '
    'elif [ "$("$7" -k 10 60 "$6" -q -c "$1" domstate "$2")" = paused ]; then '
    '"$7" -k 10 60 "$6" -q -c "$1" resume "$2"; fi'
)


def _now():
    return time.time()


def watchdog_argv(runner, uri, name, kind, seconds, now):
    """The command that starts a watchdog (``setsid --fork``: it returns at once)."""
    return ["setsid", "--fork", runner.binary("sh"), "-c", WATCHDOG_SCRIPT, WATCHDOG_MARK, uri, name, kind,
            str(int(now + seconds)), str(int(seconds)), runner.binary("virsh"), runner.binary("timeout")]


def arm_watchdog(virsh, name, kind, seconds, now=None):
    """Start a watchdog that thaws (kind ``thaw``) or resumes (``resume``) VM ``name`` in ``seconds``."""
    now = _now() if now is None else now
    runner = virsh.runner
    _rc, out, _err = runner.run(
        watchdog_argv(runner, virsh.uri, name, kind, seconds, now),
        what="arming the watchdog that will %s VM %s after %ss" % (kind, name, seconds),
        hint="Nothing was frozen or paused. setsid comes with util-linux; install it, or set the "
             "watchdog to 0 (no protection against a run that dies).")
    try:
        pid = int(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise VmbackupError("arming the watchdog of VM %s on host %s: setsid did not report the watchdog's "
                            "process (stdout %r). Nothing was frozen or paused." % (name, runner.host, out))
    return {"pid": pid, "deadline": int(now + seconds), "seconds": int(seconds)}


def find_watchdogs(uri, name, kind, proc=None):
    """[(pid, deadline)] of the watchdogs of VM ``name`` and ``kind`` running on this host."""
    proc = proc or PROC
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as fh:
                argv = [a.decode("utf-8", "surrogateescape") for a in fh.read().split(b"\0")]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        # sh -c SCRIPT MARK URI VM KIND DEADLINE ..., leading its own session (a child that sh forks
        # has the same command line for a moment: it is not the watchdog).
        if len(argv) > 7 and argv[3] == WATCHDOG_MARK and argv[4:7] == [uri, name, kind] \
                and argv[2] == WATCHDOG_SCRIPT and _session(proc, entry) == int(entry):
            try:
                found.append((int(entry), int(argv[7])))
            except ValueError:
                continue
    return sorted(found)


def _session(proc, pid):
    """The session ID of a process (field 6 of /proc/PID/stat), or None."""
    try:
        with open(os.path.join(proc, pid, "stat")) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def disarm_watchdogs(virsh, name, kind, now=None, proc=None):
    """Stop the watchdogs of VM ``name`` and ``kind``; return {disarmed: [pid], fired: bool}.

    ``fired``: one of them had reached its deadline, so it may have thawed or resumed the guest
    before the caller did. Killing its process group (the watchdog leads one of its own) ends its
    sleep, or its virsh call, which is harmless after the caller's own thaw or resume.
    """
    now = _now() if now is None else now
    disarmed = []
    fired = False
    for pid, deadline in find_watchdogs(virsh.uri, name, kind, proc):
        if now >= deadline:
            fired = True
        virsh.runner.run(["kill", "-TERM", "--", "-%d" % pid], check_rc=False,
                         what="disarming the watchdog %d of VM %s" % (pid, name))
        disarmed.append(pid)
    return {"disarmed": disarmed, "fired": fired}


def has_agent_channel(virsh, name):
    """Whether VM ``name``'s live XML has the guest agent's channel (org.qemu.guest_agent.0)."""
    root = ElementTree.fromstring(virsh.dumpxml(name))
    return any(t.get("name") == AGENT_CHANNEL for t in root.findall("./devices/channel/target"))


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
    if p["watchdog"] < 0:
        raise VmbackupError("watchdog must be 0 (none) or a number of seconds, not %s" % p["watchdog"])
    if action in ("pause", "resume"):
        return _pause_resume(module, virsh, name, action)
    try:
        status = virsh.agent_command(name, "guest-fsfreeze-status", timeout=min(p["timeout"], 10))
    except VmbackupError:
        # A VM with no agent channel has nothing an agent froze: its thaw (the backup role thaws
        # after a failed freeze too) must not fail the backup. A channel whose agent does not
        # answer may hide a frozen guest: that thaw still fails.
        if action != "thaw" or has_agent_channel(virsh, name):
            raise
        result = {"changed": False, "frozen": False, "agent": False}
        if not module.check_mode:
            result["watchdog"] = disarm_watchdogs(virsh, name, "thaw")
        return result
    if action == "freeze":
        if status == "frozen":
            return {"changed": False, "frozen": True}
        result = {"changed": True, "frozen": True}
        if not module.check_mode:
            # Armed first: whatever happens to this run from here on, the guest is thawed in time.
            if p["watchdog"]:
                result["watchdog"] = arm_watchdog(virsh, name, "thaw", p["watchdog"])
            # domfsfreeze blocks while the agent hangs; timeout(1) bounds it, and the caller thaws.
            virsh.run(["domfsfreeze", name], what="freezing the file systems of VM %s" % name,
                      timeout=p["timeout"], hint="The guest stays usable; thaw runs next.")
        return result
    # thaw
    result = {"changed": status == "frozen", "frozen": False}
    if module.check_mode:
        return result
    if status == "frozen":
        virsh.run(["domfsthaw", name], what="thawing the file systems of VM %s" % name, timeout=p["timeout"])
    # After the thaw, never before: a run that dies in between leaves the watchdog to thaw again.
    result["watchdog"] = disarm_watchdogs(virsh, name, "thaw")
    return result


def _pause_resume(module, virsh, name, action):
    state = virsh.state(name)
    if action == "pause":
        if state == "paused":
            return {"changed": False, "state": state}
        if state != "running":
            raise VmbackupError("VM %s on host %s is %s, not running: it cannot be paused for the snapshot."
                                % (name, virsh.runner.host, state))
        result = {"changed": True, "state": "paused"}
        if not module.check_mode:
            if module.params["watchdog"]:
                result["watchdog"] = arm_watchdog(virsh, name, "resume", module.params["watchdog"])
            virsh.run(["suspend", name], what="pausing VM %s" % name, timeout=module.params["timeout"],
                      hint="The watchdog resumes it in time if it was paused all the same.")
        return result
    result = {"changed": state == "paused", "state": "running" if state == "paused" else state}
    if module.check_mode:
        return result
    if state == "paused":
        rc = virsh.run(["resume", name], check_rc=False, timeout=module.params["timeout"])[0]
        # The watchdog may have resumed it a moment ago: then it runs, which is what was asked.
        if rc != 0 and virsh.state(name) == "paused":
            virsh.run(["resume", name], what="resuming VM %s" % name, timeout=module.params["timeout"])
    result["watchdog"] = disarm_watchdogs(virsh, name, "resume")
    return result
