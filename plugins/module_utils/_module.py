# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module of the collection does around its own logic."""

from __future__ import annotations

import traceback

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError


def run_module(module, logic):
    """Call ``logic(module)`` and exit with its result, or fail with the error's details.

    Errors of ours carry their own message (host, VM, command, rc, stderr, what to do);
    anything else is a bug, reported with its traceback.
    """
    try:
        result = logic(module)
    except VmbackupError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except Exception as exc:  # pragma: no cover - a bug: show where
        module.fail_json(msg="unexpected error: %s" % exc, exception=traceback.format_exc())
    module.exit_json(**result)
