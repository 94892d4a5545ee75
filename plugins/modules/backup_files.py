#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_files
short_description: List, find and extract files inside a backup's guest disks, read-only
version_added: 0.2.0
description:
  - File-level restore. Opens the stored disk images of one backup of a VM (any point of a chain -
    a full or an incremental, read with its parent backups) read-only with libguestfs, finds the
    guest's file systems (inspection of its operating system, partitions and LVM inside the guest;
    a disk with no operating system is mounted from its only file system, or the one named by
    O(filesystem)), then lists directories, finds files by pattern or extracts files and trees.
  - Runs on the backup node. The VM, its hypervisor and the repository's images are never written;
    libguestfs reads the images in its own small appliance VM, so the guest's file systems are
    parsed by the appliance's kernel, not the node's. File systems as libguestfs supports them
    (ext2/3/4, XFS, Btrfs, NTFS with ntfs-3g in the appliance, and others).
  - Takes the VM's shared reader's lock in the repository while it reads (as a restore does), so
    retention cannot remove the backup meanwhile; it is given back before the module returns.
  - Extracted files keep their modes, owners and times (the files of an extracted tree their extended attributes too); a tree is unpacked by
    GNU tar into a staging directory beside the destination and moved into place when complete.
    Nothing already at the destination is overwritten unless O(force) - an identical copy is left as
    it is (a second run reports no change), a different one fails with nothing extracted.
  - An RBD disk (stored as a chain of C(rbd export-diff) streams) is read by applying its chain, from its
    last full backup, into a sparse raw file in O(tmpdir) first (0600, removed when the module ends,
    whatever happens); it needs up to the disk's allocated data there.
  - Needs libguestfs and its Python bindings on the backup node (Debian, Ubuntu - C(python3-guestfs)
    and C(libguestfs-tools); Fedora, RHEL - C(python3-libguestfs)). Launching the appliance takes
    a few seconds with KVM, and 15 to 60 seconds where it must be emulated (O(guestfs_settings)).
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - Lists and finds as usual. For V(extract), reads the backup and reports what would be created;
        a path that already exists at the destination is reported as V(compare) (compared only when
        the module really runs).
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Extracting the same paths again into the same destination finds identical copies and changes nothing.
options:
  path:
    description: The repository directory on the backup node.
    type: path
    required: true
  vm:
    description: The VM whose backup to read.
    type: str
    required: true
  backup:
    description: V(latest) or a backup ID (any complete, undamaged backup; an incremental is read with its chain).
    type: str
    default: latest
  before:
    description: Instead of O(backup), the newest usable backup at or before this time (ISO 8601 or a backup ID).
    type: str
  action:
    description:
      - V(list) - the entries of each directory of O(paths) (a file lists itself), with O(recursive) every entry below.
      - V(find) - every entry below each of O(paths) whose name matches O(pattern).
      - V(extract) - each of O(paths) (a file, a link or a whole tree) into O(dest) on the backup node, as C(DEST/NAME).
    type: str
    required: true
    choices: [list, find, extract]
  paths:
    description: Absolute paths inside the guest.
    type: list
    elements: str
    default: ["/"]
  pattern:
    description:
      - For V(find), a shell pattern (C(*), C(?), C([...])). Without C(/) it is matched against each entry's
        name (as C(find -name)), with C(/) against its whole path. Case-sensitive.
    type: str
  recursive:
    description: For V(list), every entry below each directory, not only its own entries.
    type: bool
    default: false
  dest:
    description:
      - For V(extract), an existing directory on the backup node. Each path goes to C(DEST/BASENAME) (the guest's
        C(/) to C(DEST/root)).
    type: path
  force:
    description:
      - For V(extract), replace what exists at the destination and differs from the backup. The old copy is moved
        aside first and removed only once the new one is in place.
    type: bool
    default: false
  disks:
    description:
      - The disk targets (for example V(vda)) to open together, as the guest would see them. Default every disk
        of the backup that can be opened.
    type: list
    elements: str
  filesystem:
    description:
      - The device inside the appliance to mount read-only as C(/) (for example V(/dev/sda1), or
        V(/dev/vg0/root) for LVM inside the guest), when inspection finds no operating system and the disks
        hold several file systems, or to read one file system of several. The error that asks for it lists them.
    type: str
  max_entries:
    description: For V(list) and V(find), the most entries returned (RV(truncated) says when there were more).
    type: int
    default: 10000
  guestfs_backend:
    description: libguestfs's backend (C(LIBGUESTFS_BACKEND)); V(direct) runs the appliance without libvirt.
    type: str
    default: direct
  guestfs_settings:
    description:
      - libguestfs's backend settings (C(LIBGUESTFS_BACKEND_SETTINGS)), for example V([force_tcg]) where the
        appliance cannot use KVM (a backup node that is itself a VM without nested virtualisation).
    type: list
    elements: str
    default: []
  lock_wait:
    description: Seconds to wait for the VM's lock in the repository (a prune or synthetic full holding it).
    type: int
    default: 0
  tmpdir:
    description:
      - Where an RBD disk's chain is applied into a temporary raw file on the backup node. Default the repository
        directory (private, root only).
    type: path
notes:
  - A backup read file by file is read as stored. Run M(vmbackup.libvirt.backup_verify) (or the verify
    playbook) to check its checksums first when in doubt; backups marked damaged are refused.
seealso:
  - module: vmbackup.libvirt.backup_repo
  - module: vmbackup.libvirt.backup_verify
"""

EXAMPLES = r"""
- name: List /etc in the latest backup of web1
  vmbackup.libvirt.backup_files:
    path: /srv/vmbackup
    vm: web1
    action: list
    paths: [/etc]

- name: Find the nginx configuration files in a given backup
  vmbackup.libvirt.backup_files:
    path: /srv/vmbackup
    vm: web1
    backup: 20261201T020000Z
    action: find
    paths: [/etc]
    pattern: "*.conf"

- name: Extract a file and a directory as they were on 1 December
  vmbackup.libvirt.backup_files:
    path: /srv/vmbackup
    vm: web1
    before: "2026-12-01T23:59:59Z"
    action: extract
    paths: [/etc/fstab, /var/www]
    dest: /srv/restore/web1
"""

RETURN = r"""
backup_id:
  description: The backup that was read.
  returned: always
  type: str
  sample: 20261201T020000Z
disks:
  description: The disk targets opened.
  returned: always
  type: list
  elements: str
left_out:
  description: Disks of the backup that were not opened, each with C(target) and C(reason).
  returned: always
  type: list
  elements: dict
mounted:
  description: The guest's mount points and the devices mounted there (read-only).
  returned: always
  type: dict
  sample: {"/": "/dev/sda1"}
found_by:
  description: How the file systems were found (inspection of the guest's OS, its only file system, O(filesystem)).
  returned: always
  type: str
entries:
  description:
    - For V(list) and V(find), one per entry - C(path), C(type) (file, directory, symlink, other), C(mode) (octal),
      C(size), C(uid), C(gid), C(mtime) (ISO 8601, UTC) and, for a link, C(target).
  returned: action in (list, find)
  type: list
  elements: dict
truncated:
  description: Whether more entries than O(max_entries) matched.
  returned: action in (list, find)
  type: bool
extracted:
  description:
    - For V(extract), one per path - its entry (as in RV(entries)), C(dest) and C(action) (V(created), V(unchanged),
      V(replaced); in check mode V(create) or V(compare)).
  returned: action=extract
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_files import (
    ARGUMENT_SPEC,
    REQUIRED_IF,
    respawn_for_guestfs,
    run,
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF,
                           mutually_exclusive=[("backup", "before")], supports_check_mode=True)
    respawn_for_guestfs()
    run_module(module, run)


if __name__ == "__main__":
    main()
