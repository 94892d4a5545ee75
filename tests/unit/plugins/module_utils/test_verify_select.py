# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups backup_verify reads (a restore verifies its whole chain in one run)."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils._verify import select_backups

BACKUPS = [{"backup_id": i} for i in ("20261201T010000Z", "20261202T010000Z", "20261203T010000Z")]


@pytest.mark.parametrize("wanted, expected", [
    (["all"], ["20261201T010000Z", "20261202T010000Z", "20261203T010000Z"]),
    (["latest"], ["20261203T010000Z"]),
    (["20261202T010000Z"], ["20261202T010000Z"]),
    (["20261203T010000Z", "20261201T010000Z"], ["20261201T010000Z", "20261203T010000Z"]),  # repository order
    (["20261201T010000Z", "latest"], ["20261201T010000Z", "20261203T010000Z"]),
    (["20261130T010000Z"], []),  # not there: nothing read
    (["latest", "all"], ["20261201T010000Z", "20261202T010000Z", "20261203T010000Z"]),
], ids=["all", "latest", "one_id", "chain", "id_and_latest", "missing_id", "all_wins"])
def test_select_backups(wanted, expected):
    assert [m["backup_id"] for m in select_backups(BACKUPS, wanted)] == expected


def test_latest_of_no_backups_is_nothing():
    assert select_backups([], ["latest"]) == []
