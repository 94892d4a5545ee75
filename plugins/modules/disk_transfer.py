#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: disk_transfer
short_description: Move a disk image between a hypervisor and the backup repository
version_added: 0.1.0
description:
  - Runs on the backup node and reaches the hypervisor over SSH with strict host
    key checking against O(known_hosts) (or locally with O(transport=local)).
  - O(direction=backup), O(mode=full) serves the frozen image with C(qemu-nbd)
    (read-only) on the hypervisor, forwards its unix socket with OpenSSH and
    reads it with C(qemu-img convert) into a qcow2 in the repository. Holes and
    zero regions are neither sent nor stored; memory use is constant. With
    O(transport=local) (the backup node is the hypervisor), C(qemu-img convert) reads the
    frozen image directly, without C(qemu-nbd).
  - O(direction=backup), O(mode=delta) streams the frozen overlay of the
    previous backup (the clusters written since) and links it to the parent
    backup's image with C(qemu-img rebase -u), then checks it with C(qemu-img check).
  - O(direction=restore) checks the chain's sha256 sums (O(verify)), creates the
    target on the hypervisor (a file, mode 0600 from its creation; refusing an existing
    target unless O(force)), serves it writable with C(qemu-nbd) and writes the chain into
    it with C(qemu-img convert -n -t writeback), so that the data is flushed to stable
    storage before the module returns (the file and its directory are fsynced too); zero
    regions of a new target are skipped. Then (O(compare)) it reads the target back
    read-only and compares it with the chain (C(qemu-img compare)).
  - The stored image appears under its final name only when it is whole.
  - A transfer succeeds only when C(qemu-nbd) on the hypervisor exited cleanly after it (on
    restores, that exit is the final flush of the target).
  - A lost SSH connection during a transfer fails it with one message that names the
    hypervisor, its port, the image and the data channel.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.connection
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - A backup whose image is already in place is not transferred again.
      - A restore refuses an existing target unless O(force=true), which writes it again.
options:
  direction:
    description: V(backup) (hypervisor to repository) or V(restore) (repository to hypervisor).
    type: str
    required: true
    choices: [backup, restore]
  disks:
    description:
      - Several disks in one run, one after the other, over one set of connection options (one module
        start instead of one per disk). Each entry takes the per-disk options below; O(compare),
        O(progress_file) and the connection options apply to all. Mutually exclusive with O(image)
        and O(repo_image).
      - A failure stops at that disk; its error's RV(disks) lists the disks done before it.
    type: list
    elements: dict
    suboptions:
      image:
        description: As O(image).
        type: str
        required: true
      repo_image:
        description: As O(repo_image).
        type: path
        required: true
      format:
        description: As O(format).
        type: str
        choices: [raw, qcow2]
        default: raw
      mode:
        description: As O(mode).
        type: str
        choices: [full, delta]
        default: full
      parent_image:
        description: As O(parent_image).
        type: path
      create:
        description: As O(create).
        type: bool
        default: true
      size:
        description: As O(size).
        type: int
      force:
        description: As O(force).
        type: bool
        default: false
      verify:
        description: As O(verify).
        type: list
        elements: dict
        default: []
  image:
    description:
      - On the hypervisor, the frozen image to read (backup), or the target to write (restore),
        a file or a block device such as C(/dev/vg0/lv1). Required unless O(disks) is given.
    type: str
  format:
    description: Format of O(image) (C(qemu-nbd -f)).
    type: str
    choices: [raw, qcow2]
    default: raw
  mode:
    description: For backups, V(full) (the whole image) or V(delta) (the overlay's own clusters).
    type: str
    choices: [full, delta]
    default: full
  repo_image:
    description:
      - On the backup node, the qcow2 to write (backup) or the chain's top to read (restore).
        Required with O(image).
    type: path
  parent_image:
    description: For O(mode=delta), the parent backup's image in the repository.
    type: path
  create:
    description: For restores, create O(image) (a file) of O(size) bytes first.
    type: bool
    default: true
  size:
    description: Virtual size in bytes of a target to create.
    type: int
  force:
    description: For restores, overwrite an existing target.
    type: bool
    default: false
  compression:
    description:
      - For backups, how the qcow2 images written into the repository are compressed. V(zstd) - qcow2's own
        compression (C(compression_type=zstd), every QEMU since 5.1 reads it; a restore needs nothing more). A
        delta is streamed as it is and then rewritten compressed on the node (a local read and write of the
        delta). Costs CPU on the backup node; saves space where the data compresses. V(none) stores as read.
      - It applies to all disks of the run, file disks and LVM volumes alike.
    type: str
    default: none
    choices: [none, zstd]
  compare:
    description:
      - For restores, read the written target back and compare it with the chain
        (C(qemu-img compare)); a difference fails the module, so that the restore does not use it.
    type: bool
    default: true
  verify:
    description:
      - For restores, files to check first, each a dict with C(path) and C(sha256).
    type: list
    elements: dict
    default: []
  data_channel:
    description:
      - V(ssh) carries the data inside the SSH connection (encrypted, authenticated by SSH).
      - V(tls) carries it over NBD with TLS to O(data_address):O(data_port) of the hypervisor,
        authenticated and encrypted with a pre-shared key made for this transfer (qemu's
        C(tls-creds-psk) on both ends). The key travels to the hypervisor over the SSH session's
        stdin, lives in a 0600 file in a 0700 directory on each end while the transfer runs and is
        removed afterwards; it never appears on a command line, in a log or in the result. The
        server (C(qemu-nbd)) accepts one client, binds only O(data_address), and exits when that
        client is done; a client without the key, or without TLS, is refused. Faster than V(ssh)
        on fast networks.
      - V(insecure-tcp) is the same without TLS, so without authentication or encryption (anyone who
        connects first reads the disk). Kept as a reference for benchmarks; refused for
        O(direction=restore).
      - The former V(tcp) channel is gone; V(tls) replaces it.
    type: str
    choices: [ssh, tls, insecure-tcp]
    default: ssh
  data_address:
    description:
      - The hypervisor's address that the V(tls) and V(insecure-tcp) data channels bind to and the
        node connects to. Default O(ssh_host).
    type: str
  data_port:
    description: The TCP port of those data channels; V(0) picks one between 20000 and 39999.
    type: int
    default: 0
  progress_file:
    description:
      - A file on the backup node where the transfer writes its progress (bytes done, percent,
        rate, estimate) about once a second while it runs, and removes it at the end. The
        C(vmbackup.libvirt.progress) callback shows these files in the playbook output. With
        O(disks), it shows the disk being moved.
    type: path
  ready_timeout:
    description: Seconds to wait for qemu-nbd and the SSH forward to be ready.
    type: int
    default: 60
requirements:
  - OpenSSH client and qemu-img on the backup node; qemu-nbd and python3 on the hypervisor.
"""

EXAMPLES = r"""
- name: Pull the frozen base of vda into the repository
  vmbackup.libvirt.disk_transfer:
    direction: backup
    image: /var/lib/libvirt/images/web1.qcow2
    format: qcow2
    repo_image: /srv/vmbackup/web1/.partial-20261122T013000Z/vda.qcow2
    ssh_host: hv1.example.com
    known_hosts: /home/backup/.ssh/known_hosts
  delegate_to: localhost

- name: Restore both disks of a backup under a new name, in one run
  vmbackup.libvirt.disk_transfer:
    direction: restore
    disks:
      - repo_image: /srv/vmbackup/web1/20261122T013000Z/vda.qcow2
        image: /var/lib/libvirt/images/web1-test-vda.qcow2
        format: qcow2
        size: 10737418240
      - repo_image: /srv/vmbackup/web1/20261122T013000Z/vdb.qcow2
        image: /var/lib/libvirt/images/web1-test-vdb.raw
        size: 1073741824
    compare: false
    ssh_host: hv1.example.com
  delegate_to: localhost

- name: Restore vda of a backup under a new name
  vmbackup.libvirt.disk_transfer:
    direction: restore
    repo_image: /srv/vmbackup/web1/20261122T013000Z/vda.qcow2
    image: /var/lib/libvirt/images/web1-test-vda.qcow2
    format: qcow2
    size: 10737418240
    ssh_host: hv1.example.com
  delegate_to: localhost
"""

RETURN = r"""
disks:
  description:
    - With O(disks), one result per disk, in order, each with the keys below (RV(mode), RV(file),
      RV(sha256), RV(target), RV(created), ...); RV(duration) is then their sum.
  returned: O(disks) given
  type: list
  elements: dict
mode:
  description: V(full) or V(delta).
  returned: direction=backup
  type: str
compression:
  description: The compression of the stored image (O(compression)).
  returned: direction=backup and not check mode
  type: str
file:
  description: The image written in the repository.
  returned: direction=backup
  type: str
sha256:
  description: sha256 of the stored file.
  returned: direction=backup and not check mode
  type: str
bytes_sent:
  description: Bytes that crossed the wire (for full images, the data stored; holes and zeroes are not sent).
  returned: direction=backup and not check mode
  type: int
stored_bytes:
  description: Bytes the stored file occupies.
  returned: direction=backup and not check mode
  type: int
duration:
  description: Seconds the transfer took (without reading the stored image back for its checksum).
  returned: changed and not check mode
  type: float
checksum_duration:
  description: Seconds spent reading the stored image back for its sha256.
  returned: direction=backup, changed and not check mode
  type: float
target:
  description: The restored target.
  returned: direction=restore
  type: str
created:
  description: Whether the target was created.
  returned: direction=restore
  type: bool
compared:
  description: Whether the written target was read back and compared with the chain.
  returned: direction=restore and not check mode
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._disk_transfer import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_IF,
    REQUIRED_ONE_OF,
    REQUIRED_TOGETHER,
    run,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, required_one_of=REQUIRED_ONE_OF,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE, required_together=REQUIRED_TOGETHER,
                           supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
