# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run-level, manifest and restore decisions (_backup_run, _backup_manifest, _restore_plan),
driven by fixtures/decisions.yaml: each case is one call with its inputs and the exact value it
must return; and the filters that expose them are those functions."""

from __future__ import annotations

import importlib
import os
import re

import pytest

from ansible_collections.vmbackup.libvirt.plugins.filter import (
    backup_disk_plan, backup_hypervisor_errors, backup_jobs, backup_manifest, backup_result, backup_run_manifest,
    backup_run_results, backup_steps_left, hypervisor_error, restore_plan)
from ansible_collections.vmbackup.libvirt.plugins.module_utils import (
    _backup_manifest, _backup_plan, _backup_run, _restore_plan)

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "decisions.yaml")


def _function(case):
    module = importlib.import_module("ansible_collections.vmbackup.libvirt.plugins.module_utils." + case["module"])
    return getattr(module, case["call"])


def test_decision(case):
    if "raises" in case:
        with pytest.raises(ValueError, match=re.escape(case["raises"])):
            _function(case)(**case["args"])
        return
    assert _function(case)(**case["args"]) == case["expected"]


@pytest.mark.parametrize("plugin, name, function", [
    (backup_disk_plan, "backup_disk_plan", _backup_plan.disk_plan),
    (backup_result, "backup_result", _backup_plan.record),
    (backup_manifest, "backup_manifest", _backup_manifest.manifest),
    (backup_run_manifest, "backup_run_manifest", _backup_manifest.manifest_of_run),
    (backup_steps_left, "backup_steps_left", _backup_plan.steps_left),
    (backup_jobs, "backup_jobs", _backup_run.jobs_in_order),
    (backup_run_results, "backup_run_results", _backup_run.run_results),
    (backup_hypervisor_errors, "backup_hypervisor_errors", _backup_run.hypervisor_errors),
    (hypervisor_error, "hypervisor_error", _backup_run.hypervisor_error),
    (restore_plan, "restore_plan", _restore_plan.plan),
])
def test_filters_are_the_module_utils_functions(plugin, name, function):
    assert plugin.FilterModule().filters() == {name: function}
