# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore_volumes action=prepare, driven by fixtures/restore_volumes.yaml (format: tests/unit/conftest.py):
the facts that confine targets the repository names come from libvirt on the hypervisor."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.modules import restore_volumes

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "restore_volumes.yaml")


def test_restore_volumes(case, module_case):
    module_case(restore_volumes.main, case)
