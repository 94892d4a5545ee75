# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk image facts from qemu-img."""

from __future__ import annotations

import json
import os

QEMU_IMG_HINT = "Install qemu-img (Debian: qemu-utils, RHEL: qemu-img)."


def image_chain(runner, path, fmt=None):
    """The backing chain of an image, top first: [{filename, format, virtual-size, actual-size, ...}].

    ``-U`` (force share) reads images that a running QEMU holds open.
    """
    argv = ["qemu-img", "info", "-U", "--backing-chain", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(path)
    _rc, out, _err = runner.run(argv, what="reading image %s" % path, hint=QEMU_IMG_HINT)
    chain = json.loads(out)
    return chain if isinstance(chain, list) else [chain]


def image_info(runner, path, fmt=None):
    return image_chain(runner, path, fmt)[0]


def backing_path(info):
    """The absolute path of an image's backing file, or None."""
    name = info.get("full-backing-filename") or info.get("backing-filename")
    if not name:
        return None
    if not os.path.isabs(name):
        name = os.path.join(os.path.dirname(info["filename"]), name)
    return name
