# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small file helpers that every writer of the repository shares.

Durability: a manifest may say "complete" only once every byte it names is on stable
storage. ``fsync_file`` flushes one file's data, ``fsync_dir`` flushes a directory's
entries (a created or renamed name is durable only once its directory is fsynced), and
``write_atomic`` writes a small file so that a reader (or a crash) sees either the old
content or the whole new one, never a part.

Privacy: the repository holds whole disks and the domain XML's secrets, so everything in it
is root's alone: directories 0700, files 0600 from creation on. ``private_umask`` sets a
077 umask around code that creates files (qemu-img and other child processes inherit it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat

CHUNK = 4 * 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_file(path):
    """Flush the data and metadata of the file at ``path`` to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    """Flush the entries of directory ``path`` (names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, mode=FILE_MODE):
    """Write ``data`` (bytes) to ``path``: temp file (``mode`` from creation on), fsync, rename, fsync dir."""
    tmp = path + ".tmp"
    unlink_quietly(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have taken bits away; never added any
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def unlink_quietly(path):
    """Remove ``path`` if it is there; True when something was removed."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def sha256_file(path):
    """Hex sha256 of a file's bytes, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def private_umask():
    """A 077 umask for this process (and the commands it starts) inside the block."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def makedirs_private(path):
    """Create ``path`` and its missing parents 0700; the directories created, outermost first.

    Each new directory's parent is fsynced, so the new names survive a crash.
    """
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
        fsync_dir(os.path.dirname(directory))
        created.append(directory)
    return created


def make_private(path, mode):
    """chmod ``path`` to ``mode`` if its permission bits differ: (old mode, new mode) or None."""
    old = stat.S_IMODE(os.stat(path).st_mode)
    if old == mode:
        return None
    os.chmod(path, mode)
    return old, mode


def loose_mode(path):
    """The permission bits of ``path`` when group or others have any access, else None."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return mode if mode & 0o077 else None
