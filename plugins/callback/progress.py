# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: progress
type: notification
short_description: Show the progress of vmbackup transfers while they run
version_added: 0.1.0
description:
  - While a M(vmbackup.libvirt.disk_transfer) or M(vmbackup.libvirt.rbd_transfer) task runs,
    prints every few seconds the progress its transfers write on the backup node - bytes done,
    percent, rate and estimated time left - so long backups and restores do not look stuck.
  - While a M(vmbackup.libvirt.backup_lock), M(vmbackup.libvirt.backup_repo) or
    M(vmbackup.libvirt.backup_prune) task waits for another run's lock, prints who holds it and
    how long the task will still wait.
  - Reads the progress files in O(directory), which is where the backup and restore roles
    have the transfers write them when the backup node is the controller (the default).
  - When these modules run on another host (a backup node that is not the controller), this
    callback is not needed; their action plugins run them as async jobs and show the same lines,
    read over the host's own connection, every C(vmbackup_progress_interval) seconds (default
    5, V(0) turns it off).
requirements:
  - Enable it, for example with C(ANSIBLE_CALLBACKS_ENABLED=vmbackup.libvirt.progress).
options:
  directory:
    description: Where the transfers write their progress files.
    type: path
    default: ~/.ansible/vmbackup-progress
    env:
      - name: VMBACKUP_PROGRESS_DIR
    ini:
      - section: vmbackup
        key: progress_dir
  interval:
    description: Seconds between two progress lines.
    type: float
    default: 5
    env:
      - name: VMBACKUP_PROGRESS_INTERVAL
    ini:
      - section: vmbackup
        key: progress_interval
"""

import glob
import json
import os
import threading

from ansible.plugins.callback import CallbackBase

from ansible_collections.vmbackup.libvirt.plugins.plugin_utils._progress import describe

TRANSFER_ACTIONS = ("disk_transfer", "rbd_transfer")
# Tasks that may wait for another run's lock: their modules write who holds it while they wait.
LOCK_ACTIONS = ("backup_lock", "backup_repo", "backup_prune")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "vmbackup.libvirt.progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stop = None
        self._thread = None

    def _poll(self, stop, directory, interval):
        rounds = 0
        seen = False
        while not stop.wait(interval):
            rounds += 1
            for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
                try:
                    with open(path) as fh:
                        state = json.load(fh)
                except (OSError, ValueError):
                    continue
                seen = True
                self._display.display("  [progress] %s" % describe(state))
            if not seen and rounds == 3:
                # Never silent: the transfers write their progress on the backup node.
                self._display.display(
                    "  [progress] no progress in %s after %ds: a task that runs on another host than this "
                    "controller shows its own progress lines (vmbackup_progress_interval), unless it is set to 0"
                    % (directory, int(rounds * interval)))

    def _halt(self):
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._stop = self._thread = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._halt()
        if task.action.split(".")[-1] in TRANSFER_ACTIONS + LOCK_ACTIONS:
            directory = os.path.expanduser(self.get_option("directory"))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True,
                                            args=(self._stop, directory, float(self.get_option("interval"))))
            self._thread.start()

    def v2_playbook_on_stats(self, stats):
        self._halt()
