# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup run's decisions across hypervisors, as pure functions (no Ansible, no I/O).

The backup playbook searches every hypervisor for the requested VMs (play 1), backs up each VM
on a host of its own (play 2), and reports (play 3). What it decides between those plays:

- ``hypervisor_error(result, hypervisor, host, port, uri)``: the message for a hypervisor whose
  first task (vm_info, allowed to fail or be unreachable) failed; the restore test uses it too.
- ``hypervisor_errors(hypervisors, hostvars)``: the hypervisors that could not be searched.
- ``jobs_in_order(vms_by_hypervisor)``: the per-VM hosts, in the order that spreads Ansible's
  forks over the hypervisors.
- ``run_results(jobs, hostvars, requested, hypervisors, unsearched)``: one result per VM, with a
  failed one for each VM that recorded none and each requested VM that no hypervisor had.

``hostvars`` is Ansible's (or a dict shaped like it): only ``in`` and ``[]`` are used on it and
on each host's variables, as Ansible's hostvars offer no more.
"""

from __future__ import annotations

import re


def _clean(text):
    # ansible-core 2.19 puts "Task failed: " before a connection error's own text.
    return re.sub(r"^Task failed:\s*", "", str(text or "").strip()).rstrip(".")


def hypervisor_error(result, hypervisor, host="", port="", uri="qemu:///system"):
    """Why a hypervisor could not be used, from the registered result of its failed first task."""
    where = (host or hypervisor) + (" port %s" % port if str(port) else "")
    named = hypervisor if where == hypervisor else "%s (%s)" % (hypervisor, where)
    cause = _clean(result.get("msg")) or "failed"
    if result.get("unreachable"):
        return ("hypervisor %s could not be reached: %s. Check its ansible_host, ansible_port and "
                "ansible_user, that sshd runs there and that it accepts the controller's key." % (named, cause))
    stderr = _clean(result.get("module_stderr") or result.get("stderr"))
    if stderr and stderr not in cause:
        cause += " (stderr: %s)" % stderr
    # vm_info's own errors say what to do; a module that did not even start (no Python, no
    # libvirt bindings) does not.
    hint = "" if "Check " in cause else (
        " Check that libvirtd runs there, that vmbackup_libvirt_uri is right and that "
        "ansible_python_interpreter is a Python with the libvirt bindings.")
    return "the VMs of hypervisor %s could not be listed at %s: %s.%s" % (named, uri, cause.rstrip("."), hint)


def hypervisor_errors(hypervisors, hostvars):
    """Hypervisor name to message, for each hypervisor of the run that could not be searched."""
    errors = {}
    for hv in hypervisors:
        found = hostvars[hv]
        if "_vmbackup_search_error" in found:
            errors[hv] = found["_vmbackup_search_error"]
        elif "_vmbackup_here" not in found:
            errors[hv] = ("hypervisor %s stopped before its VMs were listed; no VM on it was backed up. "
                          "See the task that failed for %s above." % (hv, hv))
    return errors


def jobs_in_order(vms_by_hypervisor):
    """One job per VM: each hypervisor's first VM, then each one's second, and so on."""
    queues = [(hypervisor, list(vms or [])) for hypervisor, vms in vms_by_hypervisor.items()]
    out = []
    rank = 0
    while any(rank < len(vms) for _h, vms in queues):
        out += [{"hypervisor": h, "vm": vms[rank]} for h, vms in queues if rank < len(vms)]
        rank += 1
    return out


def missing_vms(requested, hostvars, hypervisors, unsearched):
    """A failed result for each requested VM that no searched hypervisor has."""
    searched = [hv for hv in hypervisors if hv not in unsearched]
    found = set()
    for hv in searched:
        found.update(hostvars[hv]["_vmbackup_here"] if "_vmbackup_here" in hostvars[hv] else [])
    for vm in requested:
        if vm in found:
            continue
        if unsearched:
            error = ("VM %s was not found on the hypervisors that were searched (%s); it may be on %s, which could not "
                     "be searched; nothing was backed up for it. Make %s answer (see its error) and run the backup again."
                     % (vm, ", ".join(searched) or "none", ", ".join(unsearched), ", ".join(unsearched)))
        else:
            error = ("VM %s was not found on any hypervisor (searched: %s); nothing was backed up for it. "
                     "Check the name with 'virsh list --all', and that its hypervisor is in the inventory."
                     % (vm, ", ".join(searched) or "none"))
        yield {"vm": vm, "hypervisor": "none", "result": "failed", "error": error}


def run_results(jobs, hostvars, requested=None, hypervisors=None, unsearched=None):
    """The results of every per-VM host (``jobs``), then of the requested VMs no hypervisor had."""
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
    results.extend(missing_vms(requested or [], hostvars, hypervisors or [], unsearched or {}))
    return results
