#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Re-read stored backups against their checksums and mark the damaged ones
version_added: 0.1.0
description:
  - For each selected backup in the repository, re-reads every stored image and compares its
    sha256 with the manifest, runs C(qemu-img check) on qcow2 images, checks the format of
    RBD diff files, and checks that the domain XML and the parent backup exist.
  - A backup that fails gets a C(damaged.json) file beside its manifest. Damaged backups,
    and every backup whose chain needs one, are then never offered for restore nor used as
    the parent of an incremental (the next backup of the VM is a full one). A marked backup
    that checks out again is unmarked.
  - Nothing read from the repository is trusted. Before C(qemu-img) opens an image, the backing file
    named in its qcow2 header must be exactly C(../PARENT/FILE) of the same disk in the parent backup
    (no absolute path, no other VM's or backup's image, no external data file), and every file the
    manifest names must resolve inside the backup's directory; a backup that fails is marked damaged
    and nothing outside the repository is read. A manifest that cannot be read (not JSON, wrong
    shape) marks only its own backup damaged; the VM's other backups are verified as usual.
  - O(backup) names V(all), V(latest) or backup IDs, in any combination (a name with C(/) is
    refused); a restore verifies the whole chain it reads in one run this way.
  - Runs on the backup node.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks everything but writes no marks.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The repository directory.
    type: path
    required: true
  vm:
    description: The VM whose backups to verify. Omit for every VM.
    type: str
  backup:
    description:
      - V(all), V(latest), or backup IDs; a list verifies each backup it names (IDs that are not in
        the repository are skipped).
    type: list
    elements: str
    default: [all]
  fail_on_damage:
    description: Fail the task when a damaged backup is found (after marking it).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Verify every backup of web1
  vmbackup.libvirt.backup_verify:
    path: /srv/vmbackup
    vm: web1

- name: Verify the chain a restore reads, in one run
  vmbackup.libvirt.backup_verify:
    path: /srv/vmbackup
    vm: web1
    backup: [20261201T020000Z, 20261202T020000Z]
"""

RETURN = r"""
backups:
  description: One entry per verified backup - vm, backup_id, ok, problems, usable.
  returned: always
  type: list
  elements: dict
damaged:
  description: The entries of RV(backups) that failed.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._verify import ARGUMENT_SPEC, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
