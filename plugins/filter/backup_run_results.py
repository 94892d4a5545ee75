# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: backup_run_results
short_description: Gather the results of a parallel backup run
version_added: 0.2.0
description:
  - The backup playbook's last play collects each per-VM host's result (C(_backup_results),
    set by the backup role). A host that stopped before it recorded one (an unreachable
    hypervisor, a failure outside the role's rescue) counts as a failed backup, so the run's
    result names every VM that was not backed up.
  - Requested VMs that no hypervisor has (O(missing)) count as failed backups too, under
    hypervisor C(none), with a message naming the hypervisors that were searched.
positional: hostvars, missing, searched
options:
  _input:
    description: The per-VM hosts (C(groups._vmbackup_jobs)).
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars).
    type: raw
    required: true
  missing:
    description: Requested VM names that no hypervisor has.
    type: list
    elements: str
    default: []
  searched:
    description: The hypervisors that were searched for them.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Collect the results of every VM
  ansible.builtin.set_fact:
    results: "{{ groups._vmbackup_jobs | default([]) | vmbackup.libvirt.backup_run_results(hostvars) }}"
"""

RETURN = r"""
_value:
  description: One result per VM - C(vm), C(hypervisor), C(result) (V(ok) or V(failed)), and the rest the role records.
  type: list
  elements: dict
"""


def backup_run_results(jobs, hostvars, missing=None, searched=None):
    results = []
    for host in jobs:
        found = hostvars[host]
        recorded = found["_backup_results"] if "_backup_results" in found else []
        if recorded:
            results.extend(recorded)
            continue
        job = found["_vmbackup_job"]
        results.append({"vm": job["vm"], "hypervisor": job["hypervisor"], "result": "failed",
                        "error": "the backup of VM %s on %s stopped before it recorded a result; see the task that "
                                 "failed for host %s above" % (job["vm"], job["hypervisor"], host)})
    for vm in missing or []:
        results.append({"vm": vm, "hypervisor": "none", "result": "failed",
                        "error": "VM %s was not found on any hypervisor (searched: %s); nothing was backed up for it. "
                                 "Check the name with 'virsh list --all', and that its hypervisor is in the inventory "
                                 "and answered." % (vm, ", ".join(searched or []) or "none")})
    return results


class FilterModule:
    def filters(self):
        return {"backup_run_results": backup_run_results}
