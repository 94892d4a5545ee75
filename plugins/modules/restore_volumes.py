#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_volumes
short_description: Decide where a restore writes each disk, and swap forced restores in
version_added: 0.2.0
description:
  - Runs on the target hypervisor. A restore writes only into volumes it creates in the run.
  - O(action=prepare) looks at each disk's target (a file, an LV found with C(lvs) also by a
    C(/dev/mapper/VG-LV) or any other path of its device, another block device, an RBD image)
    and returns where the data is written. A target that does not exist is created and written
    in place. An existing target is refused (all of them are listed, nothing is changed) unless
    O(force=true); then the data goes into a new volume beside it, C(PATH.vmbackup-restore-RUN),
    LV C(NAME-vmbr-RUN8) in the same VG, or RBD image C(IMAGE.vmbackup-restore-RUN).
  - A target only the backup's manifest names (entry C(origin) other than V(user), see
    P(vmbackup.libvirt.restore_plan#filter)) is written only when this hypervisor vouches for it - a
    disk source or the NVRAM of the VM O(vm) defined here now (read from libvirt at O(uri)), or a new
    file inside an allowed directory (the dir, fs and netfs storage pools, C(/var/lib/libvirt/images),
    C(/var/lib/libvirt/qemu/nvram), O(allowed_dirs)); a new LV or RBD image is created. Any other such
    target is refused, also with O(force), before anything is written.
  - A block device that is not an LV has no "beside". It is refused, and with O(force=true)
    written in place (with a warning), the one case where a failed restore leaves a damaged target.
  - O(action=swap), once every new volume is complete and verified, renames each old volume
    aside (C(.vmbackup-old-RUN), C(NAME-vmbo-RUN8)) and the new one into its place (rename,
    C(lvrename), C(rbd rename)), disk by disk; a failure puts back what was done. Given O(owner) or
    O(group), it first gives every image file this run wrote to that account, mode 0600 (opened
    without following symlinks), so that no separate task touches the new files.
  - O(action=undo) reverses a complete swap (after the domain definition failed);
    O(action=finish) removes the old volumes put aside; O(action=discard) removes the new
    volumes and the created targets of a failed restore (an LV only if it carries the
    C(vmbackup_restored) tag).
  - O(action=write) writes a small file (the NVRAM) from base64 O(content) into a new file
    O(path), mode 0600 from its creation, owned by O(owner) and O(group), fsynced.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - O(action=prepare) only reads; the other actions change nothing in check mode.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(action=prepare) changes nothing; O(action=undo), O(action=finish) and O(action=discard)
        do nothing a second time. O(action=swap) and O(action=write) act once (their sources are gone,
        or the file exists, the second time).
options:
  action:
    description: What to do (see the description).
    type: str
    required: true
    choices: [prepare, write, swap, undo, finish, discard]
  disks:
    description:
      - For O(action=prepare), the entries of the restore plan (C(target), C(type) V(file),
        V(block) or V(rbd), C(path), C(size), C(origin) V(user) when the user named the path);
        for the other actions, the entries it returned.
    type: list
    elements: dict
    default: []
  force:
    description: Accept existing targets (they are replaced by new volumes written beside them).
    type: bool
    default: false
  run_id:
    description: The restore run's ID (8 to 32 lowercase letters and digits); it names the new and old volumes.
    type: str
    required: true
  vm:
    description:
      - The restored VM's name. For O(action=prepare), the disks of the VM of this name defined on the
        hypervisor are trusted targets.
    type: str
    default: ""
  uri:
    description: libvirt URI on the hypervisor, for O(action=prepare).
    type: str
    default: qemu:///system
  allowed_dirs:
    description:
      - For O(action=prepare), more directories where a new file that only the manifest names may be created.
    type: list
    elements: path
    default: []
  path:
    description: For O(action=write), the file to create.
    type: path
  content:
    description: For O(action=write), its content, base64.
    type: str
  owner:
    description:
      - Owner (name or uid) of the restored image files (O(action=swap)) and of the written file
        (O(action=write)).
      - For O(action=prepare), the owner to check; empty, the account QEMU runs as (C(qemu), or
        C(libvirt-qemu) where C(qemu) does not exist). RV(owner) returns the choice.
    type: str
  group:
    description:
      - Their group (name or gid); default the owner's primary group. O(action=prepare) returns the
        choice in RV(group).
    type: str
  ceph_conf:
    description: ceph.conf for RBD targets.
    type: path
  ceph_id:
    description: Ceph client name without C(client.).
    type: str
    default: admin
  ceph_keyring:
    description: Keyring file of that client.
    type: path
  cluster:
    description: Ceph cluster name.
    type: str
  ceph_timeout:
    description: Seconds to wait for the Ceph monitors.
    type: int
    default: 30
seealso:
  - module: vmbackup.libvirt.disk_transfer
  - module: vmbackup.libvirt.lvm_volume
"""

EXAMPLES = r"""
- name: Decide where each disk is written (refuses existing targets unless forced)
  vmbackup.libvirt.restore_volumes:
    action: prepare
    disks: "{{ plan }}"
    force: true
    run_id: k3v9q2m7x1c4b8n6
  register: stage

- name: Put the new volumes in place once all are written and verified
  vmbackup.libvirt.restore_volumes:
    action: swap
    disks: "{{ stage.disks }}"
    owner: "{{ stage.owner }}"
    group: "{{ stage.group }}"
    run_id: k3v9q2m7x1c4b8n6
"""

RETURN = r"""
disks:
  description:
    - The entries with C(staged) (where to write), C(swap), C(aside), C(create_lv) (C(vg), C(name),
      C(size) of an LV to create first, or null), C(created), C(in_place).
  returned: action=prepare
  type: list
  elements: dict
owner:
  description: The owner of the restored images (O(owner), or the account QEMU runs as).
  returned: action=prepare
  type: str
  sample: libvirt-qemu
group:
  description: Their group (O(group), or the owner's primary group).
  returned: action=prepare
  type: str
  sample: kvm
owned:
  description: The image files given to O(owner) and O(group) before the swap.
  returned: action=swap
  type: list
  elements: str
swapped:
  description: Targets of the disks put in place.
  returned: action=swap
  type: list
  elements: str
removed:
  description: Volumes removed.
  returned: action=finish or action=discard
  type: list
  elements: str
restored:
  description: Number of old volumes put back.
  returned: action=undo
  type: int
size:
  description: Bytes written.
  returned: action=write
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._restore_volumes import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("action", "write", ["path", "content"])])
    run_module(module, run)


if __name__ == "__main__":
    main()
