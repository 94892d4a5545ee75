# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI on the hypervisor.
      - Use V(qemu:///system) for KVM/QEMU and V(xen:///system) for Xen (libxl).
      - Can be set once for all modules of the collection with
        C(module_defaults) and the action group C(group/vmbackup.libvirt.libvirt).
    type: str
    default: qemu:///system
requirements:
  - virsh (libvirt-clients) on the hypervisor.
"""
