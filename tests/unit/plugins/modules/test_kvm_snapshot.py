# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_snapshot, driven by fixtures/kvm_snapshot.yaml (format: tests/unit/conftest.py).

Cases with the O(unlock) option may also give ``pre_lock`` (the owner of a live lock file put at
``@@tmp@@/vm1.lock`` first) and ``lock_after`` (the owner of the lock file afterwards, or null
for none); ``@@tmp@@`` is the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import socket

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.modules import kvm_snapshot

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "kvm_snapshot.yaml")


def test_kvm_snapshot(case, module_case, tmp_path):
    lock = str(tmp_path / "vm1.lock")
    if case.get("pre_lock"):
        pid = os.getpid()
        with open(lock, "w") as fh:
            json.dump({"owner": case["pre_lock"], "purpose": "backup of VM vm1", "mode": "exclusive",
                       "created": 1000.0, "host": socket.gethostname(), "pid": pid,
                       "pid_start": _lock._proc_start(pid)}, fh)
    module_case(kvm_snapshot.main, case, {"tmp": str(tmp_path)})
    if "lock_after" in case:
        owner = case["lock_after"]
        assert (json.loads(open(lock).read())["owner"] if os.path.exists(lock) else None) == owner
