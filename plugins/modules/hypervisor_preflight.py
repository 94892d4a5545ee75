#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hypervisor_preflight
short_description: Report whether a libvirt hypervisor has what backups and restores need
version_added: 0.1.0
description:
  - Checks a hypervisor and reports, for each piece, what it found, whether it is required
    here, and how to fix it when it is missing.
  - libvirt reachable at O(uri) (and its version), the hypervisor and QEMU versions and emulator,
    whether live (active-layer) blockcommit is available, qemu-img and qemu-nbd, Python and lxml
    for the modules, lvm2 with JSON reports and device-mapper (when LVM disks exist or
    O(lvm=required)), rbd with a ceph config and keyring (when RBD disks exist or
    O(rbd=required)), free space for overlays in O(images_dir), and the qemu user and group
    for file ownership on restore (detected from C(/etc/libvirt/qemu.conf) or the distribution).
  - Live blockcommit is judged by version (QEMU >= 2.0, libvirt >= 1.2.7, not the base
    RHEL/CentOS 7 qemu-kvm, not Xen), not by a trial job, and the report says so.
  - The module never fails on a missing piece; the report's C(failures) lists the required
    checks that failed. The C(vmbackup.libvirt.prep) role turns them into one error.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.attributes.INFO_MODULE
  - vmbackup.libvirt.libvirt
options:
  images_dir:
    description:
      - Where the VM images and the backup overlays live; its free space is checked.
    type: path
    default: /var/lib/libvirt/images
  min_free_mb:
    description:
      - Free space (MiB) required in O(images_dir).
    type: int
    default: 1024
  image_owner:
    description:
      - The C(user:group) restored images are given; both must exist.
    type: str
    default: qemu:qemu
  lvm:
    description:
      - V(auto) checks lvm2 and device-mapper as required when a VM has a disk on a logical volume,
        and reports them otherwise; V(required) always requires them; V(skip) does not look.
    type: str
    choices: [auto, required, skip]
    default: auto
  rbd:
    description:
      - V(auto) checks rbd and the ceph config and keyring when a VM has an RBD disk;
        V(required) always; V(skip) never.
    type: str
    choices: [auto, required, skip]
    default: auto
  ceph_conf:
    description: The ceph configuration file.
    type: path
    default: /etc/ceph/ceph.conf
  ceph_id:
    description: The ceph client id (without C(client.)).
    type: str
    default: admin
  ceph_keyring:
    description: The keyring; defaults to C(/etc/ceph/ceph.client.<ceph_id>.keyring).
    type: path
  require_live_blockcommit:
    description:
      - Whether the lack of live blockcommit is a failure (V(true)) or a warning.
    type: bool
    default: true
  commands:
    description:
      - Command names or paths to use instead of the defaults, by key
        (C(virsh), C(qemu_img), C(qemu_nbd), C(lvs), C(lvm), C(dmsetup), C(rbd)).
    type: dict
    default: {}
  timeout:
    description:
      - Seconds each command may take.
    type: int
    default: 30
requirements:
  - python3 on the hypervisor (lxml is checked, not required to run).
"""

EXAMPLES = r"""
- name: Check a hypervisor
  vmbackup.libvirt.hypervisor_preflight:
    image_owner: libvirt-qemu:kvm
  register: preflight

- name: Fail with every missing piece and its fix
  ansible.builtin.fail:
    msg: "{{ preflight.preflight.failures | map('extract', preflight.preflight.checks) | map(attribute='fix') | list }}"
  when: not preflight.preflight.ok

- name: A Xen host with LVM disks
  vmbackup.libvirt.hypervisor_preflight:
    uri: xen:///system
    lvm: required
    require_live_blockcommit: false
"""

RETURN = r"""
preflight:
  description: The report.
  returned: always
  type: dict
  contains:
    host:
      description: The hypervisor's host name.
      type: str
    ok:
      description: Whether every required check passed.
      type: bool
    failures:
      description: Names of the required checks that failed.
      type: list
      elements: str
    warnings:
      description: Names of the checks that failed but are not required here.
      type: list
      elements: str
    checks:
      description: >-
        Each check by name (C(python_lxml), C(libvirt), C(live_blockcommit), C(qemu_img),
        C(qemu_nbd), C(lvm2), C(device_mapper), C(rbd), C(ceph_config), C(free_space),
        C(image_owner)): C(ok) (true, false, or null when unknown or not checked), C(required),
        C(detail), C(fix).
      type: dict
    libvirt:
      description: C(uri), C(reachable), C(version), C(hypervisor), C(hypervisor_version).
      type: dict
    qemu:
      description: C(emulator), C(version), C(version_text).
      type: dict
    blockcommit:
      description: C(live) (true, false, null) and the C(basis) of that verdict.
      type: dict
    device_mapper:
      description: C(available), C(proc_misc), C(dm_mod_loaded), C(control_node), C(targets).
      type: dict
    lvm:
      description: C(needed), C(version), C(json_reports), C(volume_groups), C(lv_disks).
      type: dict
    rbd:
      description: C(needed), C(rbd_disks), C(conf), C(keyring), C(version).
      type: dict
    disks:
      description: Counts of VM disks by backend over all domains.
      type: dict
    free_space:
      description: C(path), C(free_bytes), C(required_bytes).
      type: dict
    image_owner:
      description: C(configured), C(exists), C(detected), C(detected_from).
      type: dict
    python:
      description: C(version), C(executable), C(lxml).
      type: dict
  sample:
    host: hv1
    ok: false
    failures: [image_owner]
    warnings: []
    device_mapper: {available: false, proc_misc: false, dm_mod_loaded: false, control_node: false, targets: []}
    blockcommit: {live: true, basis: "libvirt 9.0.0 >= 1.2.7; QEMU 7.2.22 >= 2.0 (judged by version, not by a trial job)"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._preflight import ARGUMENT_SPEC, gather


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, gather)


if __name__ == "__main__":
    main()
