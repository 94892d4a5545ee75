# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_run import jobs_in_order as backup_jobs

DOCUMENTATION = r"""
name: backup_jobs
short_description: Order the VMs of a backup run for parallel hosts
version_added: 0.2.0
description:
  - From the VMs found on each hypervisor, one job per VM - each hypervisor's first VM, then
    each one's second, and so on. The backup playbook makes one inventory host per job in
    this order, so Ansible's forks go to hypervisors with free backup slots before a busy
    hypervisor's next VM.
options:
  _input:
    description: Per hypervisor (inventory name), the names of its VMs to back up.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Order the jobs
  ansible.builtin.debug:
    msg: "{{ {'hv1': ['a', 'b'], 'hv2': ['c']} | vmbackup.libvirt.backup_jobs }}"
  # [{hypervisor: hv1, vm: a}, {hypervisor: hv2, vm: c}, {hypervisor: hv1, vm: b}]
"""

RETURN = r"""
_value:
  description: One entry per VM, with C(hypervisor) and C(vm).
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_jobs": backup_jobs}
