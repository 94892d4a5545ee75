# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_info, driven by fixtures/vm_info.yaml (format: tests/unit/conftest.py)."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.modules import vm_info

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "vm_info.yaml")


def test_vm_info(case, module_case):
    module_case(vm_info.main, case)
