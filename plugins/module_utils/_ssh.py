# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the backup node reaches a hypervisor: the command lines of SSH (or of the node itself,
when the two are one machine), the connection's argument spec, and what an ssh exit status 255
means (the link failed, not the command).

SSH always checks host keys strictly against the given known_hosts file.
"""

from __future__ import annotations

import os
import shlex

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    VmbackupError,
)

CONNECTION_ARGSPEC = dict(
    transport=dict(type="str", default="ssh", choices=["ssh", "local"]),
    ssh_host=dict(type="str"),
    ssh_port=dict(type="int", default=22),
    ssh_user=dict(type="str", default="root"),
    ssh_private_key=dict(type="path"),
    known_hosts=dict(type="path", default="~/.ssh/known_hosts"),
    ssh_options=dict(type="list", elements="str", default=[]),
    ready_timeout=dict(type="int", default=60),
)

# The fast data channels (disk_transfer only): ssh (the default, inside the SSH connection),
# tls (NBD over TLS with a pre-shared key made for each transfer) and insecure-tcp (plain NBD,
# no authentication at all: a bench reference, refused for restores).
DATA_CHANNELS = ("ssh", "tls", "insecure-tcp")
DATA_CHANNEL_ARGSPEC = dict(
    data_channel=dict(type="str", default="ssh", choices=list(DATA_CHANNELS)),
    data_address=dict(type="str"),
    data_port=dict(type="int", default=0),
)


class Hypervisor:
    """How the node reaches a hypervisor: over SSH, or locally when they are one machine."""

    def __init__(self, runner, params):
        self.runner = runner
        self.transport = params["transport"]
        self.host = params.get("ssh_host")
        self.port = params.get("ssh_port") or 22
        self.user = params.get("ssh_user") or "root"
        self.key = params.get("ssh_private_key")
        self.known_hosts = os.path.expanduser(params.get("known_hosts") or "~/.ssh/known_hosts")
        self.extra = params.get("ssh_options") or []
        self.ready_timeout = params.get("ready_timeout") or 60
        # tls / insecure-tcp: bulk data over NBD on a TCP port of the hypervisor's data_address;
        # the SSH session still sets the server up (and hands it the key) and tears it down.
        self.channel = params.get("data_channel") or "ssh"
        if self.channel not in DATA_CHANNELS:
            raise VmbackupError("data_channel %r is not one of %s (the plain channel 'tcp' is now called "
                                "'insecure-tcp'; 'tls' is its authenticated, encrypted replacement)"
                                % (self.channel, ", ".join(DATA_CHANNELS)))
        self.data_address = params.get("data_address") or self.host or "127.0.0.1"
        self.data_port = params.get("data_port") or 0
        if self.transport == "ssh":
            if not self.host:
                raise VmbackupError("ssh_host is required with transport=ssh")
            if not os.path.exists(self.known_hosts):
                raise VmbackupError(
                    "known_hosts file %s does not exist on the backup node %s: host keys are always "
                    "checked. Run the vmbackup.libvirt.prep playbook to record the hypervisors' keys."
                    % (self.known_hosts, runner.host))

    @property
    def label(self):
        return self.host if self.transport == "ssh" else "localhost"

    def ssh_argv(self, forward=None):
        argv = ["ssh", "-T", "-p", str(self.port),
                "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "UserKnownHostsFile=%s" % self.known_hosts,
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "ServerAliveInterval=10",
                "-o", "ServerAliveCountMax=6",
                "-o", "Compression=no",
                "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if forward:
            argv += ["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", "-L", forward]
        for opt in self.extra:
            argv += ["-o", opt]
        argv += ["-l", self.user, self.host, "--"]
        return argv

    def command_argv(self, argv, forward=None):
        """An argument list to run ``argv`` on the hypervisor (``forward``: ssh's -L, remote only).

        ssh hands the remote shell one string: each argument is quoted for it, here only."""
        if self.transport == "local":
            return list(argv)
        return self.ssh_argv(forward=forward) + [" ".join(shlex.quote(str(a)) for a in argv)]

    def run(self, argv, what, check_rc=True, data=None):
        full = self.command_argv(argv)
        try:
            return self.runner.run(full, what="%s on hypervisor %s" % (what, self.label),
                                   check_rc=check_rc, data=data)
        except CommandError as exc:
            lost = ssh_link_error(self, exc.rc, exc.stderr, cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            if lost:
                raise lost
            raise

    def exists(self, path):
        rc, _out, _err = self.run(["test", "-e", path], "checking %s" % path, check_rc=False)
        return rc == 0


def ssh_link_error(hv, returncode, err, doing=None, remedy=None, **details):
    """The error to raise when a command run over ssh ended with ``returncode`` 255, else None.

    ssh exits 255 for its own failures (unreachable, host key, authentication, a lost
    connection), so a 255 through it says the SSH link failed, not the command. ``details``
    go to the error as they are (cmd, rc, stderr).
    """
    if returncode != 255 or hv.transport != "ssh":
        return None
    return VmbackupError(ssh_failure_message(hv, err, doing=doing, remedy=remedy), **details)


def ssh_failure_message(hv, stderr, doing=None, remedy=None):
    """One message for an ssh that ended with 255: what failed, why, and what to do.

    ``doing`` names the transfer that was under way, for a connection lost in the middle of it.
    """
    err = (stderr or "").strip()
    hint = "Check that the hypervisor is reachable and that the backup node's key is authorized there."
    if "host key is known" in err:
        hint = ("The hypervisor's host key is not in %s: run the vmbackup.libvirt.prep playbook to "
                "record it (with its fingerprint pinned)." % hv.known_hosts)
    elif "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
        hint = ("The hypervisor's host key is not the one recorded in %s: if the key really changed, "
                "verify it and run the vmbackup.libvirt.prep playbook; otherwise someone may be "
                "intercepting the connection." % hv.known_hosts)
    elif "Permission denied" in err:
        hint = "The backup node's key is not authorized for %s@%s: run the vmbackup.libvirt.prep playbook." % (hv.user, hv.host)
    elif doing or _lost_connection(err):
        last = err.splitlines()[-1].strip().rstrip(".") if err else "the ssh process ended with rc=255"
        return ("lost the SSH connection from the backup node to %s@%s port %s while %s: %s. %s"
                % (hv.user, hv.host, hv.port, doing or "it was in use", last,
                   remedy or "Check the network and the hypervisor, then run it again."))
    return "SSH from the backup node to %s@%s port %s failed: %s. %s" % (hv.user, hv.host, hv.port, err, hint)


def _lost_connection(err):
    return any(m in err for m in ("closed by remote host", "Broken pipe", "Connection reset",
                                  "Timeout, server", "client_loop:", "Connection closed"))
