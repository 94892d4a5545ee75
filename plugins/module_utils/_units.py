# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes as people read them, for messages (modules) and progress lines (the controller)."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(num, digits=1, whole_bytes=False):
    """``num`` bytes in binary units with ``digits`` decimals ("1.5 GiB"); TiB at the most.

    ``whole_bytes``: below 1 KiB, a plain count ("512 B", not "512.0 B").
    """
    value = float(num or 0)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            if unit == "B" and whole_bytes:
                return "%d B" % value
            return "%.*f %s" % (digits, value, unit)
        value /= 1024.0
    raise AssertionError("unreachable")  # pragma: no cover
