# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_transfer moves several disks in one run: each disk's parameters, and what a failure reports."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _disk_transfer as dt
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError

SHARED = {"direction": "restore", "compare": False, "progress_file": "/p.json", "transport": "ssh",
          "ssh_host": "hv1", "data_channel": "ssh"}
TOP = {"image": None, "format": "raw", "mode": "full", "repo_image": None, "parent_image": None,
       "create": True, "size": None, "force": False, "verify": []}


def _disk(**kw):
    return dict(TOP, **kw)


@pytest.mark.parametrize("params, expected", [
    # one disk at the top level, as before
    (dict(SHARED, disks=None, **_disk(image="/i/a.qcow2", repo_image="/r/a.qcow2", format="qcow2")),
     [dict(SHARED, **_disk(image="/i/a.qcow2", repo_image="/r/a.qcow2", format="qcow2"))]),
    # several: each entry's own options, the shared ones (compare, progress, connection) for all
    (dict(SHARED, disks=[_disk(image="/i/a.qcow2", repo_image="/r/a.qcow2", format="qcow2", size=1),
                         _disk(image="/dev/vg0/b", repo_image="/r/b.qcow2", create=False, force=True)], **TOP),
     [dict(SHARED, **_disk(image="/i/a.qcow2", repo_image="/r/a.qcow2", format="qcow2", size=1)),
      dict(SHARED, **_disk(image="/dev/vg0/b", repo_image="/r/b.qcow2", create=False, force=True))]),
    # an empty list moves nothing
    (dict(SHARED, disks=[], **TOP), []),
], ids=["top_level", "two_disks", "none"])
def test_disk_params(params, expected):
    assert dt.disk_params(params) == expected


class _Module:
    def __init__(self, params):
        self.params = params
        self.check_mode = False


def test_a_failure_names_the_disks_done_before_it(monkeypatch):
    done = []

    def step(module, runner, hv, p):
        if p["image"] == "/i/b":
            raise VmbackupError("writing /i/b failed")
        done.append(p["image"])
        return {"changed": True, "target": p["image"], "duration": 1.5}

    monkeypatch.setattr(dt, "restore", step)
    monkeypatch.setattr(dt, "CommandRunner", lambda module: None)
    monkeypatch.setattr(dt._ssh, "Hypervisor", lambda runner, params: None)
    params = dict(SHARED, disks=[_disk(image="/i/a", repo_image="/r/a"), _disk(image="/i/b", repo_image="/r/b"),
                                 _disk(image="/i/c", repo_image="/r/c")], **TOP)
    with pytest.raises(VmbackupError) as err:
        dt.run(_Module(params))
    assert done == ["/i/a"]  # stops at the failing disk
    assert err.value.details["disks"] == [{"changed": True, "target": "/i/a", "duration": 1.5}]
    params["disks"] = params["disks"][:1]
    assert dt.run(_Module(params)) == {"changed": True, "duration": 1.5,
                                       "disks": [{"changed": True, "target": "/i/a", "duration": 1.5}]}
