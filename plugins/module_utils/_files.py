# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small file helpers that every writer of the repository shares.

Durability: a manifest may say "complete" only once every byte it names is on stable
storage. ``fsync_file`` flushes one file's data, ``fsync_dir`` flushes a directory's
entries (a created or renamed name is durable only once its directory is fsynced),
``write_atomic`` writes a small file so that a reader (or a crash) sees either the old
content or the whole new one, never a part, ``write_new`` creates a file that must not exist
yet, and ``commit_part`` gives a large streamed ``.part`` file its name once it is whole.

Privacy: the repository holds whole disks and the domain XML's secrets, so everything in it
is root's alone: directories 0700, files 0600 from creation on. ``private_umask`` sets a
077 umask around code that creates files (qemu-img and other child processes inherit it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile

CHUNK = 4 * 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


def _fsync(path, flags=0):
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    """Flush the data and metadata of the file at ``path`` to stable storage."""
    _fsync(path)


def fsync_dir(path):
    """Flush the entries of directory ``path`` (names created, renamed or removed in it)."""
    _fsync(path, getattr(os, "O_DIRECTORY", 0))


def write_atomic(path, data, mode=FILE_MODE, tmp=None):
    """Write ``data`` (bytes) to ``path``: temp file (``mode`` from creation on), fsync, rename, fsync dir.

    ``tmp``: the temp file's name where ``path + ".tmp"`` would be mistaken for a real file.
    """
    tmp = tmp or path + ".tmp"
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


def write_new(path, data, mode=FILE_MODE, uid=-1, gid=-1, sync_dir=True):
    """Create ``path`` (FileExistsError if it is there), ``mode`` and owner from creation on,
    write ``data`` (bytes) and fsync it; then its directory unless ``sync_dir`` is false."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def rename_durably(src, dst):
    """Rename ``src`` to ``dst`` and fsync the directory that holds the new name."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def commit_part(part, dest):
    """Name a finished streamed file: its data on stable storage first, then the rename, then its name."""
    fsync_file(part)
    rename_durably(part, dest)


def unlink_quietly(path, missing_only=False):
    """Remove ``path`` if it is there; True when something was removed.

    Any failure is ignored, or with ``missing_only`` only a missing file (others are raised).
    """
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        if missing_only:
            raise
        return False


def read_json(path, bad, valid=lambda value: isinstance(value, dict)):
    """The JSON in ``path`` if ``valid`` accepts it; None when there is no such file; ``bad``
    when it cannot be read or parsed, or ``valid`` refuses it (a crash or someone else wrote it)."""
    try:
        with open(path) as fh:
            value = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return bad
    return value if valid(value) else bad


def write_progress(path, state):
    """Replace the progress file ``path`` with ``state`` (JSON) by rename; never fails.

    Progress is a courtesy: not fsynced, and the file keeps the umask's mode, because the
    controller's callback (another user, perhaps) reads it while the module runs.
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.rename(path + ".tmp", path)
    except OSError:
        pass


@contextlib.contextmanager
def temp_text(text, prefix, suffix=""):
    """A temp file (0600, mkstemp's) holding ``text`` for a command to read; removed afterwards."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        yield path
    finally:
        os.unlink(path)


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
