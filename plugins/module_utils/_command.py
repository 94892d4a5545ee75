# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where the collection runs external commands.

Every command is an argument list (never a shell string), runs in the C locale
so that parsed output is stable, and finds its binary by name with a clear
error when it is missing. A failure raises CommandError, whose message quotes
the host, the command, its rc, stdout and stderr, and what to do about it.
Unit tests patch ``AnsibleModule.run_command``: that is the command boundary for short
commands; for streams (``CommandRunner.spawn``) it is ``popen`` below.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess

C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}

# Where system tools live on hypervisors whose PATH for non-login shells is short.
EXTRA_BIN_DIRS = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/lib/qemu"]


class VmbackupError(Exception):
    """An error that the module turns into ``fail_json`` with its details."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


class CommandError(VmbackupError):
    def __init__(self, argv, rc, stdout, stderr, what=None, hint=None, host=None):
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        head = "%s failed" % (what or "command")
        if host:
            head += " on host %s" % host
        msg = "%s: command '%s' exited with rc=%s" % (head, cmd, rc)
        if stderr and stderr.strip():
            msg += "; stderr: %s" % stderr.strip()
        elif stdout and stdout.strip():
            msg += "; stdout: %s" % stdout.strip()[-2000:]
        if hint:
            msg += ". %s" % hint
        super().__init__(msg, cmd=argv, rc=rc, stdout=stdout, stderr=stderr)
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class CommandRunner:
    """Runs commands for a module: ``run`` for short ones, ``spawn`` for streams."""

    def __init__(self, module, host=None):
        self.module = module
        self.host = host or socket.gethostname()
        self._bins = {}

    def binary(self, name, hint=None):
        if name not in self._bins:
            path = self.module.get_bin_path(name, required=False, opt_dirs=EXTRA_BIN_DIRS)
            if not path:
                raise VmbackupError(
                    "'%s' was not found on host %s (searched PATH and %s). %s"
                    % (name, self.host, ", ".join(EXTRA_BIN_DIRS),
                       hint or "Install the package that provides it, or run the vmbackup.libvirt.prep playbook.")
                )
            self._bins[name] = path
        return self._bins[name]

    def argv(self, argv, timeout=None):
        """Resolve the binary of an argument list; ``timeout`` wraps it in timeout(1)."""
        full = [self.binary(argv[0])] + [str(a) for a in argv[1:]]
        if timeout:
            full = [self.binary("timeout"), "--kill-after=10", "%ds" % int(timeout)] + full
        return full

    def run(self, argv, data=None, check_rc=True, what=None, hint=None, timeout=None,
            ok_rcs=(0,), binary_data=False):
        """Run a command and return (rc, stdout, stderr); raise CommandError on failure.

        ``data`` goes to stdin: that is how secrets are passed, never as arguments.
        """
        full = self.argv(argv, timeout=timeout)
        rc, out, err = self.module.run_command(
            full, data=data, environ_update=C_LOCALE, binary_data=binary_data,
        )
        if timeout and rc == 124:
            err = (err or "") + " (timed out after %ss)" % timeout
        if check_rc and rc not in ok_rcs:
            raise CommandError(full, rc, out, err, what=what, hint=hint, host=self.host)
        return rc, out, err

    def spawn(self, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, resolve=True):
        """Start a long-running process (ssh tunnels, qemu-nbd, streams).

        It gets SIGTERM when the module dies, so a killed run leaves no transfer behind
        that holds images open or writes into the repository.
        """
        env = dict(os.environ)
        env.update(C_LOCALE)
        full = self.argv(argv) if resolve else [str(a) for a in argv]
        return popen(full, stdin=stdin, stdout=stdout, stderr=stderr, env=env, preexec_fn=_die_with_parent)


def popen(argv, **kwargs):
    """The boundary of streamed commands, as ``AnsibleModule.run_command`` is of short ones:
    unit tests replace this one function to answer ``spawn`` with stand-in processes."""
    return subprocess.Popen(argv, **kwargs)


def _die_with_parent():
    """In the child: ask Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: no such guarantee, the transfer still ends with its connection
