# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller side of backup_repo: on a host other than the controller, show the progress
that the module writes to O(lock_progress_file) while it runs (see plugin_utils/_progress.py)."""

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.plugin_utils._progress import ProgressAction


class ActionModule(ProgressAction):
    MODULE = "vmbackup.libvirt.backup_repo"
    PROGRESS_OPTION = "lock_progress_file"
