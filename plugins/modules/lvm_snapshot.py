#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lvm_snapshot
short_description: Create, check and remove LVM snapshots of a VM's LV disks
version_added: 0.1.0
description:
  - Freezes a VM's LVM logical volumes for a backup with one snapshot LV per
    volume, named C(<lv>-vmbackup-<snapshot>) and tagged C(vmbackup). Only LVs
    that have such a name, the tag and the volume as origin are ever treated as
    the module's own, so no other LV is removed.
  - Thick LVs get a classic copy-on-write snapshot (C(lvcreate --snapshot
    --size)) of O(size). Before anything is created, the sizes of all thick
    snapshots of the task are added up per volume group and compared with the
    VG's free space; if one VG is short, the module fails with the sizes needed
    and free, and creates nothing.
  - Thin LVs get a thin snapshot in their pool (no size), created with
    C(--setactivationskip n) so that it is active and its device exists at once.
  - All volumes are snapshotted in one task, one C(lvcreate) after the other (LVM
    has no multi-volume snapshot), within about a second per volume. For a VM
    with several LV disks the backup role freezes the guest's file systems or
    suspends the VM around this task; RV(snapshot_window) says how long it took.
    If one C(lvcreate) fails, the snapshots made before it are removed again.
  - O(state=checked) reads the fill level of each snapshot after the transfer and
    fails if a snapshot is missing or invalid (a thick snapshot whose
    copy-on-write space overflowed while it was read; its content is not the
    state at the snapshot any more, and the backup must not be committed).
  - Volume groups and volumes are read with one C(lvs --reportformat json); lvm2
    older than 2.02.158 has no JSON reports and gets a clear error.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - The free-space check runs in check mode too, so a check run tells whether the snapshots fit.
  diff_mode:
    support: full
    details:
      - The diff lists the volumes' snapshots of ours before and after.
  idempotent:
    support: full
    details:
      - Idempotent by snapshot name; a second run with the same state changes nothing.
options:
  volumes:
    description:
      - The VM's LV disks, as C(/dev/VG/LV), C(VG/LV) or C(/dev/mapper/VG-LV).
    type: list
    elements: str
    required: true
  snapshot:
    description:
      - The ID of the backup point, usually the backup ID (C(20261122T013000Z)). Letters,
        digits and C(+_.-), as LVM names allow.
      - The snapshot LV of C(VG/LV) is C(LV-vmbackup-<snapshot>); when that is longer than
        LVM allows (127 characters for the device-mapper name, where each C(-) counts
        twice), C(LV) is cut and followed by a dot and 8 hex digits of a hash of its name.
      - With O(state=absent), V(all) removes every snapshot of ours of the volumes, whatever its ID.
    type: str
    required: true
  state:
    description:
      - V(present) creates the snapshots (and activates any of ours that is inactive).
      - V(absent) removes them.
      - V(checked) reports their fill levels and fails if one is missing or invalid (overflowed).
    type: str
    choices: [present, absent, checked]
    default: present
  size:
    description:
      - Copy-on-write space of each thick snapshot, as a size (V(512M), V(2G), V(1073741824)
        bytes; units are binary) or as a percentage of the origin's size (V(20%)).
      - Rounded up to whole extents; at least 2 extents (8 MiB with the default 4 MiB
        extents); at most what a complete overwrite of the origin can use (about
        100.4% of it), as LVM caps it too.
      - Writes to the origin while the snapshot exists take this space; if they need more,
        the snapshot becomes invalid and O(state=checked) fails.
      - Not used for thin snapshots.
    type: str
    default: 10%
notes:
  - Snapshots of ours that a failed run left behind are reported as warnings by
    O(state=present); remove them with O(state=absent) and O(snapshot=all).
  - A thick snapshot slows writes to its origin; keep it only while the backup reads it.
  - Hosts without udev (containers, minimal guests) need C(udev_sync = 0),
    C(udev_rules = 0) and C(verify_udev_operations = 1) in C(/etc/lvm/lvm.conf);
    the module passes no C(--config) of its own.
requirements:
  - lvm2 2.02.158 or later on the hypervisor (JSON reports).
seealso:
  - module: vmbackup.libvirt.lvm_volume
  - module: vmbackup.libvirt.disk_transfer
"""

EXAMPLES = r"""
- name: Freeze the LV disks of web1 for backup 20261122T010000Z
  vmbackup.libvirt.lvm_snapshot:
    volumes:
      - /dev/vg0/web1-root
      - /dev/vg0/web1-data
    snapshot: 20261122T010000Z
    size: 20%
  register: lvsnap

- name: Pull each snapshot into the repository (on the backup node)
  vmbackup.libvirt.disk_transfer:
    direction: backup
    image: "{{ item.path }}"
    format: raw
    repo_image: "/srv/vmbackup/web1/.partial-20261122T010000Z/{{ item.name }}.qcow2"
    ssh_host: "{{ ansible_host }}"
  loop: "{{ lvsnap.volumes }}"
  delegate_to: localhost

- name: Fail if a snapshot overflowed while it was read
  vmbackup.libvirt.lvm_snapshot:
    volumes: [/dev/vg0/web1-root, /dev/vg0/web1-data]
    snapshot: 20261122T010000Z
    state: checked

- name: Remove the snapshots (always)
  vmbackup.libvirt.lvm_snapshot:
    volumes: [/dev/vg0/web1-root, /dev/vg0/web1-data]
    snapshot: 20261122T010000Z
    state: absent

- name: Remove every vmbackup snapshot of these volumes (cleanup)
  vmbackup.libvirt.lvm_snapshot:
    volumes: [/dev/vg0/web1-root, /dev/vg0/web1-data]
    snapshot: all
    state: absent
"""

RETURN = r"""
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
volumes:
  description:
    - One entry per volume, in the order given (duplicates removed), after the change.
    - With O(snapshot=all), only RV(volumes[].volume), RV(volumes[].origin),
      RV(volumes[].vg) and C(snapshots) (our snapshots left, as C(VG/NAME)).
  returned: always
  type: list
  elements: dict
  contains:
    volume:
      description: The volume as given.
      type: str
    origin:
      description: The origin LV, C(VG/LV).
      type: str
    origin_path:
      description: The origin's device path, C(/dev/VG/LV).
      type: str
    vg:
      description: Its volume group.
      type: str
    thin:
      description: Whether the origin is a thin LV (the snapshot is then a thin snapshot).
      type: bool
    pool:
      description: The thin pool, for thin volumes.
      type: str
    virtual_size:
      description: Size of the origin in bytes, which is what a backup of the snapshot reads.
      type: int
    name:
      description: The snapshot LV's name.
      type: str
      sample: web1-root-vmbackup-20261122T010000Z
    snapshot:
      description: The snapshot LV, C(VG/NAME).
      type: str
    path:
      description: The snapshot's device path C(/dev/VG/NAME), what the backup reads.
      type: str
    device:
      description: The snapshot's device-mapper path (C(/dev/mapper/VG-NAME)); V(null) while it does not exist.
      type: str
    exists:
      description: Whether the snapshot exists.
      type: bool
    active:
      description: Whether it is active (its device exists).
      type: bool
    cow_size:
      description: Copy-on-write space of a thick snapshot in bytes (planned, when it does not exist yet); V(null) for thin.
      type: int
    data_percent:
      description: LVM's data_percent of the snapshot (for thick ones the same as RV(volumes[].snap_percent)).
      type: float
    snap_percent:
      description: How full a thick snapshot's copy-on-write space is; V(null) for thin snapshots.
      type: float
    invalid:
      description: Whether the snapshot is invalid (overflowed) or failed.
      type: bool
vgs:
  description: The volume groups involved, as read before any change (sizes in bytes).
  returned: always
  type: dict
  sample: {"vg0": {"size": 2143289344, "free": 1946157056, "extent_size": 4194304}}
snapshot_window:
  description: Seconds between the start of the first C(lvcreate) and the end of the last.
  returned: when snapshots were created
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._lvm import SNAPSHOT_ARGSPEC, run_snapshot
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=SNAPSHOT_ARGSPEC, supports_check_mode=True)
    run_module(module, run_snapshot)


if __name__ == "__main__":
    main()
