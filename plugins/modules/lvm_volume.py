#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lvm_volume
short_description: Create or remove the logical volume a restore writes into
version_added: 0.1.0
description:
  - Creates an LV of at least O(size) bytes (rounded up to whole extents) in
    volume group O(vg), thick (C(lvcreate --size)) or thin in O(thin_pool)
    (C(lvcreate --virtualsize --thin)), tagged C(vmbackup_restored). A restore
    then writes the backup into it with M(vmbackup.libvirt.disk_transfer)
    (O(vmbackup.libvirt.disk_transfer#module:create=false)).
  - Restores never overwrite a volume unless told. An existing LV is refused
    unless O(force=true); then it is kept (and activated) if it is at least
    O(size) bytes, and refused with its size and the size needed otherwise.
  - Before a thick LV is created, the VG's free space is checked; a short VG
    fails with both sizes and creates nothing.
  - O(state=absent) removes the LV if it carries the C(vmbackup_restored) tag
    (it was created by this module, for example by a restore test), or any
    plain LV with O(force=true). It never removes an LV that is open (in use
    by a running VM or a mount), a thin pool, or an LV with snapshots.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the LV (name, size, pool) before and after.
  idempotent:
    support: partial
    details:
      - With O(force=true) a second run keeps the LV and changes nothing; without it an
        existing LV is refused, because a restore must not overwrite a volume by accident.
      - O(state=absent) is idempotent.
options:
  vg:
    description: The volume group.
    type: str
    required: true
  name:
    description: The LV's name.
    type: str
    required: true
  size:
    description:
      - Size in bytes (a disk's C(virtual_size) from the backup manifest). Required with O(state=present).
    type: int
  thin_pool:
    description: Create a thin LV in this thin pool of O(vg) instead of a thick one.
    type: str
  state:
    description: V(present) creates the LV; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=present), accept an existing LV of at least O(size) bytes.
      - With O(state=absent), remove the LV even without the C(vmbackup_restored) tag.
    type: bool
    default: false
notes:
  - A new thick LV may hold old data of earlier LVs in the same extents, so a restore into
    it must write zero regions too (the default of M(vmbackup.libvirt.disk_transfer) for
    O(vmbackup.libvirt.disk_transfer#module:create=false)). A new thin LV reads as zeroes.
requirements:
  - lvm2 2.02.158 or later on the hypervisor (JSON reports).
seealso:
  - module: vmbackup.libvirt.lvm_snapshot
  - module: vmbackup.libvirt.disk_transfer
"""

EXAMPLES = r"""
- name: Create the LV that vda of the restored VM is written into
  vmbackup.libvirt.lvm_volume:
    vg: vg0
    name: web1-test-vda
    size: 10737418240
  register: newlv

- name: The same as a thin volume
  vmbackup.libvirt.lvm_volume:
    vg: vg0
    name: web1-test-vda
    size: 10737418240
    thin_pool: pool0

- name: Remove a restore test's LV
  vmbackup.libvirt.lvm_volume:
    vg: vg0
    name: web1-test-vda
    state: absent
"""

RETURN = r"""
vg:
  description: The volume group.
  returned: always
  type: str
name:
  description: The LV's name.
  returned: always
  type: str
lv_path:
  description: The LV's device path, C(/dev/VG/NAME) (the restore's target).
  returned: always
  type: str
device:
  description: Its device-mapper path.
  returned: when the LV exists and not check mode
  type: str
size:
  description: Its size in bytes (whole extents).
  returned: state=present
  type: int
thin:
  description: Whether it is a thin LV.
  returned: state=present
  type: bool
pool:
  description: Its thin pool.
  returned: state=present
  type: str
active:
  description: Whether it is active.
  returned: state=present and not check mode
  type: bool
tags:
  description: Its LVM tags.
  returned: state=present and not check mode
  type: list
  elements: str
created:
  description: Whether the LV was created by this run.
  returned: always
  type: bool
removed:
  description: Whether the LV was removed by this run.
  returned: always
  type: bool
actions:
  description: What was done (or would be, in check mode).
  returned: changed
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._lvm import VOLUME_ARGSPEC, run_volume
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=VOLUME_ARGSPEC, supports_check_mode=True,
                           required_if=[("state", "present", ["size"])])
    run_module(module, run_volume)


if __name__ == "__main__":
    main()
