#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: libvirt_secret
short_description: Make sure a libvirt secret for a Ceph (cephx) user exists with the right value
version_added: 0.1.0
description:
  - A domain's RBD disks refer to a libvirt secret by UUID. Restoring such a domain on
    another hypervisor needs the same secret there; this module defines it with the given
    UUID and sets its value - given directly, or read with C(ceph auth get-key).
  - The value is passed through a private temporary file (C(virsh secret-set-value --file)),
    never on a command line, and never returned.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.libvirt
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  uuid:
    description: The secret's UUID, as the domain XML's C(<secret uuid=...>) names it.
    type: str
    required: true
  usage_name:
    description: The usage name of a new secret. Default C(client.CEPH_CLIENT secret).
    type: str
  value:
    description: The base64 cephx key. Mark the variable it comes from as secret (vault, no_log).
    type: str
  ceph_client:
    description: Read the key of C(client.CEPH_CLIENT) from Ceph when O(value) is not given.
    type: str
  ceph_conf:
    description: ceph.conf for reading the key.
    type: path
  ceph_keyring:
    description: A keyring allowed to read the key.
    type: path
  state:
    description: V(present) or V(absent).
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: The secret the restored domain's RBD disks refer to
  vmbackup.libvirt.libvirt_secret:
    uuid: 2a5b08e4-3dbc-4e6a-9b7c-1f0a8c5e9d21
    ceph_client: vmbackup
    ceph_conf: /etc/ceph/ceph.conf
"""

RETURN = r"""
uuid:
  description: The secret's UUID.
  returned: always
  type: str
created:
  description: Whether the secret was defined.
  returned: state=present
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._libvirt_secret import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
