# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt_define, driven by fixtures/libvirt_define.yaml (format: tests/unit/conftest.py)."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _libvirt_define
from ansible_collections.vmbackup.libvirt.plugins.modules import libvirt_define

CASES_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "libvirt_define.yaml")


def expected_values(module_input):
    """@@digest@@ and @@defined_xml@@ for a case: what a define of its input records."""
    params = {k: spec.get("default") for k, spec in _libvirt_define.ARGUMENT_SPEC.items()}
    params.update(module_input)
    domain = _libvirt_define.desired_domain(params)
    digest = _libvirt_define.definition_hash(domain)
    meta = dict(params["metadata"] or {})
    meta["definition_sha256"] = digest
    domain.set_metadata(meta)
    return {"digest": digest, "defined_xml": domain.to_xml()}


def test_libvirt_define(case, module_case):
    module_case(libvirt_define.main, case, expected_values(case["input"]))


def test_digest_ignores_runtime_details():
    """The recorded hash is of the normalized definition: aliases or ids do not change it."""
    base = {k: spec.get("default") for k, spec in _libvirt_define.ARGUMENT_SPEC.items()}
    xml = ("<domain type='kvm'><name>a</name><uuid>6f0d1c7e-3b9a-4c55-9a39-3c2b4c1e0a01</uuid><devices>"
           "<disk type='file' device='disk'><source file='/x.qcow2'/><target dev='vda'/>%s</disk></devices></domain>")
    plain = dict(base, xml=xml % "", emulator="")
    runtime = dict(base, xml=(xml % "<alias name='virtio-disk0'/>").replace("<domain type='kvm'>", "<domain type='kvm' id='4'>"),
                   emulator="")
    digest = _libvirt_define.definition_hash
    assert digest(_libvirt_define.desired_domain(plain)) == digest(_libvirt_define.desired_domain(runtime))
