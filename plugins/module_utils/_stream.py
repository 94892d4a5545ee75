# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bytes on their way into the repository: streamed in constant memory into a part file that
goes away if the copy fails, and the progress file that the vmbackup.libvirt.progress
callback shows meanwhile (``qemu-img convert -p`` percentages, or bytes copied).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files

CHUNK = 1024 * 1024


def stored_bytes(path):
    """Bytes the file really occupies (sparse files count only their data)."""
    return os.stat(path).st_blocks * 512


class Progress:
    """A small JSON file that the vmbackup.libvirt.progress callback shows while a transfer runs."""

    def __init__(self, path, label, watch=None):
        self.path = path
        self.label = label
        self.watch = watch  # a file whose allocated size is the bytes done so far
        self.start = time.time()
        self.last = 0.0

    def update(self, done=None, percent=None, force=False):
        if not self.path or (not force and time.time() - self.last < 1.0):
            return
        self.last = time.time()
        if done is None and self.watch:
            try:
                done = stored_bytes(self.watch)
            except OSError:
                done = 0
        elapsed = max(self.last - self.start, 0.001)
        state = {"label": self.label, "done": done, "percent": percent, "elapsed": round(elapsed, 1),
                 "rate": int(done / elapsed) if done else 0,
                 "eta": round(elapsed * (100.0 - percent) / percent, 1) if percent else None}
        _files.write_progress(self.path, state)  # never fails a transfer

    def close(self):
        if self.path:
            _files.unlink_quietly(self.path)


def last_percent(output):
    """The last percentage in the output of ``qemu-img convert -p`` (bytes, "(12.50/100%)" marks
    ended by \r), or None when it holds no whole one."""
    marks = [m for m in output.replace(b"\r", b"\n").split(b"\n") if b"/100%" in m]
    if not marks:
        return None
    try:
        return float(marks[-1].strip().strip(b"()").split(b"/")[0])
    except ValueError:
        return None


def run_with_progress(runner, argv, progress):
    """Run qemu-img convert -p, feeding its percentages to ``progress``; (rc, stdout, stderr)."""
    full = [argv[0], argv[1], "-p"] + list(argv[2:])
    proc = runner.spawn(full)
    buf = b""
    while True:
        ready, _w, _x = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf = (buf + chunk)[-256:]  # the last marks are enough
            percent = last_percent(buf)
            if percent is not None:
                progress.update(percent=percent)
        elif proc.poll() is not None:
            break
    err = proc.stderr.read().decode("utf-8", "replace")
    return proc.wait(), "", err


@contextlib.contextmanager
def writing_part(dest, host, what="image"):
    """``dest + ".part"``, for the block that writes it: removed if the block fails, and a full
    file system (ENOSPC) said so in one message."""
    part = dest + ".part"
    try:
        yield part
    except BaseException as exc:
        _files.unlink_quietly(part)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise VmbackupError("writing %s on the backup node %s failed: the repository's file system is "
                                "full. Free space or prune old backups; the partial %s was removed." % (dest, host, what))
        raise


def copy_stream(src, path, progress):
    """Copy a byte stream into ``path`` (0600 from creation on) in constant memory, fsynced."""
    sent = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _files.FILE_MODE)
    with src, os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            out.write(block)
            sent += len(block)
            progress.update(done=sent)
        out.flush()
        os.fsync(out.fileno())
