# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_snapshot, driven by fixtures/kvm_snapshot.yaml (format: tests/unit/conftest.py)."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.modules import kvm_snapshot

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "kvm_snapshot.yaml")


def test_kvm_snapshot(case, module_case):
    module_case(kvm_snapshot.main, case)
