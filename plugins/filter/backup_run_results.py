# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_run import run_results as backup_run_results

DOCUMENTATION = r"""
name: backup_run_results
short_description: Gather the results of a parallel backup run
version_added: 0.2.0
description:
  - The backup playbook's last play collects each per-VM host's result (C(_backup_results),
    set by the backup role, or by the backup playbook when a step outside the role's own rescue
    failed). A host that stopped before it recorded one (an unreachable hypervisor) counts as a
    failed backup, so the run's result names every VM that was not backed up.
  - Requested VMs (O(requested)) that no searched hypervisor has count as failed backups too, under
    hypervisor C(none). The message says "not found on any hypervisor" only when every hypervisor
    of the run (O(hypervisors)) was searched; otherwise it names the hypervisors that could not be
    searched (O(unsearched), from P(vmbackup.libvirt.backup_hypervisor_errors#filter)) as where
    the VM may be.
positional: hostvars, requested, hypervisors, unsearched
options:
  _input:
    description: The per-VM hosts (C(groups._vmbackup_jobs)).
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars). A searched hypervisor's C(_vmbackup_here) lists the requested VMs it has.
    type: raw
    required: true
  requested:
    description: The VM names the run was asked for; empty for all VMs.
    type: list
    elements: str
    default: []
  hypervisors:
    description: Every hypervisor of the run, searched or not.
    type: list
    elements: str
    default: []
  unsearched:
    description: The hypervisors that could not be searched, each with its message.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Collect the results of every VM
  ansible.builtin.set_fact:
    results: >-
      {{ groups._vmbackup_jobs | default([]) | vmbackup.libvirt.backup_run_results(hostvars, ['web1'],
         ['hv1', 'hv2'], ['hv1', 'hv2'] | vmbackup.libvirt.backup_hypervisor_errors(hostvars)) }}
"""

RETURN = r"""
_value:
  description: One result per VM - C(vm), C(hypervisor), C(result) (V(ok) or V(failed)), and the rest the role records.
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_run_results": backup_run_results}
