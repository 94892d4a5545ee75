# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup role's decisions (_backup_plan), driven by fixtures/backup_plan.yaml: each case is
one call with its inputs and the exact value it must return."""

from __future__ import annotations

import os

import pytest

from ansible_collections.vmbackup.libvirt.plugins.filter import (
    backup_cleanup_warnings, backup_files, backup_plan, backup_result, backup_transfers)
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _backup_plan

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "backup_plan.yaml")


def _call(case):
    args = dict(case.get("args") or {})
    if "plan_args" in case:
        args["plan_"] = _backup_plan.plan(**case["plan_args"])
    return getattr(_backup_plan, case["call"])(**args)


def test_decision(case):
    if "raises" in case:
        with pytest.raises(ValueError, match=case["raises"]):
            _call(case)
        return
    assert _call(case) == case["expected"]


def test_filters_are_the_plan_functions():
    found = {}
    for plugin in (backup_plan, backup_transfers, backup_files, backup_result, backup_cleanup_warnings):
        found.update(plugin.FilterModule().filters())
    assert found["backup_plan"] is _backup_plan.plan
    assert found["backup_transfers"] is _backup_plan.transfers
    assert found["backup_files"] is _backup_plan.extra_files
    assert found["backup_cleanup_warnings"] is _backup_plan.with_cleanup_warnings
    run = {"vm": "web1", "backup_id": "B", "stage": "begun", "failed_result": {"msg": "m"}}
    assert found["backup_result"](run, "failed") == _backup_plan.result_failed(run)
    assert found["backup_result"]({"vm": "web1"}) == _backup_plan.result_ok({"vm": "web1"})
    assert found["backup_result"]({"vm": "web1", "clean": {"removed": ["P"]}}, "cleanup") == \
        {"vm": "web1", "repaired": ["removed partial backup P"]}
    assert found["backup_result"]({"kvm": {"actions": ["merge x"]}}, "repaired") == ["merge x"]
    with pytest.raises(ValueError, match="ok, failed, cleanup or repaired"):
        found["backup_result"](run, "maybe")
