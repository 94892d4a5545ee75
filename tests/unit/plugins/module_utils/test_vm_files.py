# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_info include_files: the NVRAM and the TPM's state files, read where vm_info found them, under
the names backup_repo commit stores them as (what the backup role's two slurp tasks did)."""

from __future__ import annotations

import base64

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._vm_info import vm_files


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def test_nvram_and_tpm_state_files_by_their_stored_names(tmp_path):
    nvram = tmp_path / "web1_VARS.fd"
    nvram.write_bytes(b"\x00vars\xff")
    state = tmp_path / "tpm2"
    state.mkdir()
    (state / "tpm2-00.permall").write_bytes(b"sealed")
    vm = {"nvram": str(nvram), "tpm": {"state_dir": str(state), "files": ["tpm2-00.permall"]}}
    assert vm_files("web1", vm, "hv1") == {"nvram.fd": _b64(b"\x00vars\xff"), "tpm-tpm2-00.permall": _b64(b"sealed")}


@pytest.mark.parametrize("vm", [{"nvram": None, "tpm": None}, {"nvram": None, "tpm": {"state_dir": "/x", "files": []}}])
def test_a_vm_without_them_has_no_files(vm):
    assert vm_files("web1", vm, "hv1") == {}


def test_a_missing_nvram_is_named_with_the_vm_and_host(tmp_path):
    missing = str(tmp_path / "never-started_VARS.fd")
    with pytest.raises(VmbackupError) as err:
        vm_files("web1", {"nvram": missing, "tpm": None}, "hv1")
    msg = str(err.value)
    for part in ("NVRAM", "VM web1", "host hv1", missing, "nothing was written", "first start"):
        assert part in msg
