# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_info, driven by fixtures/vm_info.yaml (format: tests/unit/conftest.py).

Cases with the O(lock) option may also give ``pre_lock`` (the owner of a live lock file put at
``@@tmp@@/web1.lock`` first) and ``lock_after`` (the owner of the lock file afterwards, or null
for none); ``@@tmp@@`` is the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import socket

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.modules import vm_info

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "vm_info.yaml")


def live_lock(path, owner):
    """A lock file whose process (this one) is alive, so it is never broken."""
    pid = os.getpid()
    with open(path, "w") as fh:
        json.dump({"owner": owner, "purpose": "backup of VM web1", "mode": "exclusive", "created": 1000.0,
                   "host": socket.gethostname(), "pid": pid, "pid_start": _lock._proc_start(pid)}, fh)


def test_vm_info(case, module_case, tmp_path):
    lock = str(tmp_path / "web1.lock")
    if case.get("pre_lock"):
        live_lock(lock, case["pre_lock"])
    module_case(vm_info.main, case, {"tmp": str(tmp_path)})
    if "lock_after" in case:
        owner = case["lock_after"]
        assert (json.loads(open(lock).read())["owner"] if os.path.exists(lock) else None) == owner
