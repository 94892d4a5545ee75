#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: Facts about libvirt VMs that a backup needs
version_added: 0.1.0
description:
  - Reports one VM or all VMs of a libvirt hypervisor - state, persistence,
    autostart, guest agent, and every disk with its backend (C(file), C(block),
    C(rbd), or C(other) with the reason it would be skipped), format, source,
    virtual and allocated size, and for file disks the backing chain.
  - With O(lock), first takes the VM's lock on the hypervisor, as M(vmbackup.libvirt.backup_lock)
    would with the same options (so a backup needs one module run less); it waits up to
    O(lock.wait) seconds for another live run, breaks a stale lock, and fails naming the holder.
    If the VM then cannot be described, the lock this task took is given back before it fails
    (C(lock.held) is V(false) in the failed result).
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.libvirt
attributes:
  check_mode:
    support: full
    details:
      - Changes nothing; with O(lock), it only reports whether the lock could be taken.
  diff_mode:
    support: N/A
    details:
      - The only change it can make is taking O(lock).
  idempotent:
    support: full
    details:
      - A second run with the same O(lock) finds the lock its owner holds and changes nothing.
options:
  name:
    description:
      - The VM (libvirt domain name). Omit to report every VM on the hypervisor; a VM that is
        undefined while the module reads the list (by someone else) is left out of it, while any
        other error reading a listed VM still fails the module.
    type: str
  agent_timeout:
    description:
      - Seconds to wait for the guest agent to answer C(guest-ping) in a running VM.
      - V(0) skips the check.
    type: int
    default: 5
  details:
    description:
      - V(false) reports only each VM's name, state and vmbackup metadata, which is cheap
        and works for VMs whose disks are broken.
    type: bool
    default: true
  missing:
    description:
      - What to do when O(name) does not exist. V(fail) fails with a clear message,
        V(ignore) returns an empty RV(vms).
    type: str
    choices: [fail, ignore]
    default: fail
  include_xml:
    description:
      - Also return each VM's persistent definition (C(virsh dumpxml --inactive --security-info)) as RV(vms[].xml).
      - The XML can hold secrets such as VNC passwords. The module's action plugin hides the
        output of a successful run that returns it (as C(no_log) would, the registered variable
        keeps it); a failed run stays visible, with every password it had read masked. So give
        the task no C(no_log) of its own, or its errors are hidden too.
    type: bool
    default: false
  include_files:
    description:
      - Also return the files a backup keeps beside the XML, base64, as RV(vms[].files) - the NVRAM of a UEFI
        guest as C(nvram.fd), each state file of its emulated TPM as C(tpm-NAME) (what
        M(vmbackup.libvirt.backup_repo) O(vmbackup.libvirt.backup_repo#module:action=commit) stores as O(vmbackup.libvirt.backup_repo#module:files)).
      - The TPM's state is what the guest sealed in it; the output is hidden as with O(include_xml).
      - Fails, naming the file, when one cannot be read (a UEFI guest writes its NVRAM on its first start).
    type: bool
    default: false
  lock:
    description:
      - Take this lock (a file on the hypervisor) for O(name) before reading it; the task is changed when it was taken.
        Give it back with M(vmbackup.libvirt.backup_lock) O(vmbackup.libvirt.backup_lock#module:state=absent),
        or O(vmbackup.libvirt.kvm_snapshot#module:unlock).
      - Needs O(name).
    type: dict
    suboptions:
      path:
        description: The lock file, for example C(/var/lock/vmbackup/VM.lock).
        type: path
        required: true
      owner:
        description: Who holds it, usually the run's ID. A lock this owner already holds is used as it is.
        type: str
        required: true
      purpose:
        description: What the lock is for, shown to a run that finds it held.
        type: str
        default: ""
      node:
        description: The backup node's name, recorded in the lock.
        type: str
        default: ""
      repository:
        description: The repository the lock is taken for, recorded in the lock (see O(lock.break_from)).
        type: str
        default: ""
      break_from:
        description:
          - Break a lock taken by an earlier run from this node into the same O(lock.repository) (that run
            is dead, as the caller holds the node's lock for the VM there).
        type: str
        default: ""
      wait:
        description: Seconds to wait while another live run holds the lock.
        type: int
        default: 0
requirements:
  - python lxml on the hypervisor.
  - qemu-img on the hypervisor for the backing chain of file disks.
"""

EXAMPLES = r"""
- name: Facts about one VM
  vmbackup.libvirt.vm_info:
    name: web1
  register: web1_info

- name: Lock web1 on the hypervisor, then describe it
  vmbackup.libvirt.vm_info:
    name: web1
    include_xml: true
    lock:
      path: /var/lock/vmbackup/web1.lock
      owner: "{{ run_id }}"
      purpose: backup of VM web1
      wait: 60
  register: web1_locked

- name: Every VM on a Xen host
  vmbackup.libvirt.vm_info:
    uri: xen:///system
  register: xen_vms

- name: Names of the VMs whose disks are all supported
  ansible.builtin.debug:
    msg: "{{ xen_vms.vms | selectattr('unsupported_disks', 'equalto', []) | map(attribute='name') | list }}"
"""

RETURN = r"""
lock:
  description:
    - With O(lock), the lock - C(held), C(path), C(broke_stale) (the stale lock broken, or V(null)), C(waited),
      C(waited_for). In a failed result, C(held) and C(path) only.
  returned: with O(lock)
  type: dict
  sample: {held: true, path: /var/lock/vmbackup/web1.lock, broke_stale: null, waited: 0, waited_for: null}
secrets_returned:
  description: Whether RV(vms) holds domain XML with its secrets or the TPM's state (O(include_xml), O(include_files)); its output was hidden.
  returned: success
  type: bool
vms:
  description: One entry per VM.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
      sample: web1
    uuid:
      description: Domain UUID.
      type: str
    state:
      description: Domain state as virsh reports it.
      type: str
      sample: running
    running:
      description: Whether the domain is running (or paused).
      type: bool
    persistent:
      description: Whether the domain is defined (not transient).
      type: bool
    autostart:
      description: Whether the domain starts with the host.
      type: bool
    agent:
      description: Whether the guest agent answered C(guest-ping); V(null) when not checked.
      type: bool
    hypervisor:
      description: The domain type (kvm, qemu, xen).
      type: str
    nvram:
      description: The NVRAM file of a UEFI guest, or V(null).
      type: str
    tpm:
      description:
        - The domain's emulated TPM (swtpm), or V(null) when it has none (or a passthrough TPM,
          whose state is in hardware and cannot be backed up).
        - C(model), C(version), C(state_dir) (libvirt's directory of its state, keyed by the
          UUID) and C(files) (the state file names there; empty until the TPM has run once).
          Their contents are in RV(vms[].files) with O(include_files=true).
      type: dict
    disks:
      description: Every disk of the domain.
      type: list
      elements: dict
      contains:
        target:
          description: Target device (vda, sdb...).
          type: str
        backend:
          description: C(file), C(block), C(rbd) or C(other).
          type: str
        format:
          description: Driver format (qcow2, raw).
          type: str
        source:
          description: File path, device path, or pool/image for RBD.
          type: str
        virtual_size:
          description: Capacity in bytes, when libvirt can tell.
          type: int
        allocated_size:
          description: Bytes allocated on the host, when libvirt can tell.
          type: int
        chain:
          description: For file disks, the backing chain, top first (filename, format).
          type: list
          elements: dict
        supported:
          description: Whether the collection backs this disk up.
          type: bool
        skip_reason:
          description: Why the disk would be skipped, or V(null).
          type: str
    unsupported_disks:
      description: Targets of disks that would be skipped.
      type: list
      elements: str
    metadata:
      description: What vmbackup recorded in the domain's metadata (for example C(restored_from)).
      type: dict
    xml:
      description: The persistent definition, when O(include_xml=true).
      type: str
    files:
      description: With O(include_files=true), file name to base64 content - C(nvram.fd), C(tpm-NAME).
      type: dict
  sample:
    - name: web1
      state: running
      running: true
      persistent: true
      autostart: false
      agent: true
      disks:
        - target: vda
          backend: file
          format: qcow2
          source: /var/lib/libvirt/images/web1.qcow2
          virtual_size: 10737418240
          allocated_size: 1288490188
          supported: true
          skip_reason: null
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._vm_info import gather, ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, gather)


if __name__ == "__main__":
    main()
