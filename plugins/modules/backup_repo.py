#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_repo
short_description: Begin, complete, abort, list and select backups in a vmbackup repository
version_added: 0.1.0
description:
  - Manages the backup repository on the backup node. A backup is written into
    C(VM/.partial-ID/) and becomes visible as C(VM/ID/) only when its manifest
    has been written, last and atomically, so a failed or interrupted backup
    never looks complete and is never used as the parent of an incremental.
  - Durable. V(commit) fsyncs every image the manifest names (and each extra file), then the
    partial directory, then writes the manifest, renames the directory into place and fsyncs
    the VM's directory and the repository root. A crash or power loss after it returns loses
    nothing it reported complete.
  - Private. Everything it creates is root's alone (directories 0700, files 0600, under a 077
    umask). A repository root (or VM directory) that already exists with a looser mode is set
    to 0700, with a warning naming the path and both modes (RV(mode_fixes)).
  - Nothing read from the repository is trusted. O(backup_id), O(backup) and every backup ID in a
    directory name or a manifest must be a backup ID; V(select) refuses a backup whose manifest
    names a file outside its directory (an absolute path, C(../), a symlink out) or whose qcow2
    delta has a backing file other than C(../PARENT/FILE) of the same disk in its parent backup
    (read from the image header, before any tool opens it), naming the backup and what is wrong.
    A manifest that cannot be read (not JSON, wrong shape) makes its backup damaged (listed by
    V(list) with its C(problems) in RV(backups)); the VM's other backups are not affected.
  - Retention. With a C(keep_*) rule, V(commit) applies the policy to O(vm) once the manifest is
    durable, as M(vmbackup.libvirt.backup_prune) does (same rules, same checks, same result, in
    RV(prune)), while it still holds the VM's lock in the repository; the lock of O(lock_owner) is
    made exclusive in place for the prune, so no restore starts reading meanwhile. While a restore
    already reads the VM (a shared lock), nothing is removed, RV(prune.locked) names it and a warning
    says the next backup or prune catches up (M(vmbackup.libvirt.backup_prune)'s O(vmbackup.libvirt.backup_prune#module:fail_on_locked=false)).
    Partial backups untouched for a day and leftovers of an interrupted prune go too. The backup is
    complete whatever the prune does; a failed prune is returned in RV(prune) (C(failed), C(msg)) and
    warned about, and the commit succeeds.
  - Runs on the backup node.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
    details:
      - V(commit) writes nothing; its RV(prune) is the plan on the backups already complete (the one being
        committed is not among them).
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - V(list), V(select) and V(abort) are idempotent; V(begin) and V(commit) make a new backup each time.
options:
  path:
    description: The repository directory.
    type: path
    required: true
  vm:
    description: The VM's name. Required except for O(action=list).
    type: str
  action:
    description:
      - V(begin) creates the partial directory of a new backup and returns the latest complete backup as RV(parent).
      - V(commit) writes the domain XML, extra files and the manifest, and makes the backup visible.
      - V(abort) removes a partial backup.
      - V(clean) removes every partial backup of O(vm) (left by dead runs; take the VM's lock first)
        and returns the usable backups' IDs as RV(complete).
      - V(list) lists complete backups (of O(vm), or of every VM) and partial ones.
      - V(select) finds the backup to restore (O(backup), O(before)) and its chain.
      - V(report) writes O(report) as C(report-NAME-latest.json) (NAME is O(report_name)) in the
        repository, replacing the earlier one atomically.
      - V(metrics) writes the repository's state as a Prometheus textfile at O(metrics_file), for
        node_exporter's textfile collector - for every VM its newest usable backup (the last success - when it
        finished, how long it took, bytes sent and stored, full or incremental, how many usable backups there
        are) and, from each hypervisor's latest report, whether the VM's last run succeeded and when it ran.
        Every metric is a gauge named C(vmbackup_*) with labels C(vm), C(repository) (and C(hypervisor) for
        the last run). Made from the repository, not from one run - a failed run leaves the last success as it was.
    type: str
    required: true
    choices: [begin, commit, abort, clean, list, select, report, metrics]
  backup_id:
    description: The backup's ID. V(begin) makes one from the current UTC time when omitted.
    type: str
  backup:
    description: For V(select), V(latest) or a backup ID.
    type: str
    default: latest
  before:
    description: For V(select), the newest backup taken at or before this time (ISO 8601 or a backup ID).
    type: str
  manifest:
    description:
      - For V(commit), the manifest's content (type, parent, disks, hypervisor, versions...).
        Each disk needs C(file), the image's name in the backup directory.
    type: dict
  domain_xml:
    description: For V(commit), the domain's XML.
    type: str
  include_xml:
    description:
      - For V(select), also return the selected backup's domain XML as RV(domain_xml), checked against
        the sha256 its manifest records. A successful result is then hidden from the log (it can hold
        VNC/SPICE passwords); registered variables keep it, and an error stays visible.
    type: bool
    default: false
  include_files:
    description:
      - For V(select), also return the backed-up NVRAM (RV(nvram_content)) and emulated TPM state
        (RV(tpm_state)), base64, each checked against the sha256 its manifest records; hidden from the
        log as with O(include_xml).
    type: bool
    default: false
  files:
    description: For V(commit), extra files (for example the NVRAM) as name to base64 content.
    type: dict
    default: {}
  full_every:
    description: For V(begin), say a full backup is due every N backups (RV(full_due)); V(0) never.
    type: int
    default: 0
  full_every_days:
    description: For V(begin), say a full backup is due when the newest full one is this many days old; V(0) never.
    type: int
    default: 0
  clean:
    description:
      - For V(begin), first remove every partial backup of O(vm), as V(clean) does (take the VM's
        lock first), and return RV(removed) and RV(complete).
    type: bool
    default: false
  report:
    description: For V(report), the report (for example C(hypervisor) and C(results)).
    type: dict
  report_name:
    description: For V(report), the name in the file name, usually the hypervisor's inventory name.
    type: str
  metrics_file:
    description:
      - For V(metrics), the file to write (its name must end in C(.prom)), in an existing directory - usually
        node_exporter's C(--collector.textfile.directory). Written with mode 0644 and replaced atomically; it
        holds VM names, times and sizes, no secret.
    type: path
  lock_owner:
    description:
      - For V(begin), first take the VM's lock in the repository (C(.locks/VM.lock), as
        M(vmbackup.libvirt.backup_lock) would, in its V(append) mode, so restores may read meanwhile and
        prune and synthetic fulls wait) for this owner, usually the run's ID; fail naming the
        holder if another live run holds it after O(lock_wait) seconds.
      - For V(commit) and V(abort), give the lock back afterwards if this owner holds it (RV(unlocked)).
      - For V(select), first take a reader's lock (V(shared) mode, so other restores may read too and no prune
        or synthetic full changes the VM's backups) and keep it for the restore, which gives it back with
        M(vmbackup.libvirt.backup_lock) O(vmbackup.libvirt.backup_lock#module:state=absent) on
        RV(lock_path); given back at once if the selection fails.
    type: str
  lock_purpose:
    description: For V(begin) and V(select) with O(lock_owner), what the lock is for (shown to a run that finds it held).
    type: str
    default: ""
  lock_node:
    description: For V(begin) and V(select) with O(lock_owner), the backup node's name, recorded in the lock.
    type: str
    default: ""
  lock_wait:
    description: For V(begin) and V(select) with O(lock_owner), seconds to wait for a lock held by another run.
    type: int
    default: 0
  lock_progress_file:
    description:
      - For V(begin) and V(select) with O(lock_owner), while waiting for the lock write who holds it and how long this
        run still waits to this file, for the C(vmbackup.libvirt.progress) callback. Omit for none.
    type: path
  keep_last:
    description:
      - For V(commit), retention after the backup is complete; see the description. Keep the newest N backups
        (points in time) of O(vm).
      - With every C(keep_*) rule V(0) (the default), nothing is pruned and RV(prune) is V(null).
    type: int
    default: 0
  keep_daily:
    description: For V(commit), keep the newest backup of each of the newest N days (UTC) that have one.
    type: int
    default: 0
  keep_weekly:
    description: For V(commit), keep the newest backup of each of the newest N ISO weeks that have one.
    type: int
    default: 0
  keep_monthly:
    description: For V(commit), keep the newest backup of each of the newest N months that have one.
    type: int
    default: 0
  keep_yearly:
    description: For V(commit), keep the newest backup of each of the newest N years that have one.
    type: int
    default: 0
  min_age:
    description:
      - For V(commit) with a C(keep_*) rule, never remove a backup younger than this. Seconds, or a number with
        C(s), C(m), C(h), C(d) or C(w) (V(36h), V(7d)). V(0) for no minimum.
    type: str
    default: "0"
seealso:
  - module: vmbackup.libvirt.backup_prune
"""

EXAMPLES = r"""
- name: Begin a backup of web1, holding its lock in the repository
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    vm: web1
    action: begin
    lock_owner: "{{ run_id }}"
    clean: true  # this run holds web1's lock: partial backups of dead runs can go
  register: begun

- name: Give up that backup and the lock
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    vm: web1
    action: abort
    backup_id: "{{ begun.backup_id }}"
    lock_owner: "{{ run_id }}"

- name: Complete it and keep web1's backups of the last 7 days, all in one module run
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    vm: web1
    action: commit
    backup_id: "{{ begun.backup_id }}"
    lock_owner: "{{ run_id }}"
    domain_xml: "{{ web1_xml }}"
    manifest: "{{ web1_manifest }}"
    keep_daily: 7
  register: committed  # committed.prune.removed: what retention removed

- name: The newest backup of web1 taken before noon, with its chain
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    vm: web1
    action: select
    before: "2026-11-22T12:00:00Z"
  register: chosen

- name: Select the latest backup of web1 for a restore, with its XML, NVRAM and TPM state, under a reader's lock
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    vm: web1
    action: select
    include_xml: true
    include_files: true
    lock_owner: "{{ run_id }}"
    lock_purpose: restore of web1
    lock_wait: 600
  register: chosen  # chosen.domain_xml, chosen.nvram_content, chosen.tpm_state

- name: Give the reader's lock back when the restore is done
  vmbackup.libvirt.backup_lock:
    path: "{{ chosen.lock_path }}"
    owner: "{{ run_id }}"
    state: absent

- name: The repository's state for node_exporter's textfile collector
  vmbackup.libvirt.backup_repo:
    path: /srv/vmbackup
    action: metrics
    metrics_file: /var/lib/prometheus/node-exporter/vmbackup.prom
"""

RETURN = r"""
backup_id:
  description: The ID of the begun backup.
  returned: action=begin
  type: str
  sample: 20261122T013000Z
dir:
  description: The backup's directory (partial for V(begin), final for V(commit)).
  returned: action=begin or action=commit
  type: str
full_due:
  description: Whether this backup must be a full one under O(full_every) / O(full_every_days).
  returned: action=begin
  type: bool
full_reason:
  description: Why (or why not).
  returned: action=begin
  type: str
parent:
  description: The latest complete backup (manifest with paths), or V(null).
  returned: action=begin
  type: dict
manifest:
  description: The manifest written.
  returned: action=commit
  type: dict
removed:
  description: Partial backups removed.
  returned: action=clean or action=begin
  type: list
  elements: str
complete:
  description: IDs of the usable complete backups (not damaged, chain whole), oldest first.
  returned: action=clean or action=begin
  type: list
  elements: str
backups:
  description:
    - Summaries of complete backups, oldest first, each with C(usable) and C(damaged).
    - A backup whose manifest cannot be read or trusted has C(status=unreadable) and its C(problems).
  returned: action=list
  type: list
  elements: dict
partial:
  description: Partial (incomplete) backups per VM.
  returned: action=list
  type: dict
backup:
  description: The selected backup's manifest, with C(dir), C(domain_xml_path) and each disk's C(image) path.
  returned: action=select
  type: dict
chain:
  description: The manifests from the full backup to the selected one.
  returned: action=select
  type: list
  elements: dict
lock:
  description: With O(lock_owner), the lock taken (C(held), C(broke_stale), C(path)); V(null) without.
  returned: action=begin or action=select
  type: dict
lock_path:
  description: With O(lock_owner), the VM's lock in the repository, to give the reader's lock back; V(null) without.
  returned: action=select
  type: str
  sample: /srv/vmbackup/.locks/web1.lock
domain_xml:
  description: With O(include_xml), the selected backup's domain XML.
  returned: action=select and include_xml
  type: str
nvram_content:
  description: With O(include_files), the backed-up NVRAM, base64; V(null) when the backup has none.
  returned: action=select and include_files
  type: str
tpm_state:
  description: With O(include_files), the emulated TPM's state files, name to base64; empty when the backup has none.
  returned: action=select and include_files
  type: dict
secrets_returned:
  description: Whether the result carries the domain XML or the VM's files (the result is then hidden from the log).
  returned: action=select
  type: bool
prune:
  description:
    - With a C(keep_*) rule, what retention did to O(vm), with M(vmbackup.libvirt.backup_prune)'s result fields
      (RV(prune.removed), RV(prune.kept), RV(prune.partials_removed), RV(prune.broken_chains), RV(prune.damaged),
      RV(prune.locked)); V(null) without one.
  returned: action=commit
  type: dict
  contains:
    changed:
      description: Whether anything was removed.
      type: bool
    removed:
      description: The backups removed (would be, in check mode), in deletion order, each with C(vm), C(backup_id), C(reasons).
      type: list
      elements: dict
    kept:
      description: The backups kept, newest first, each with every reason it is kept for.
      type: list
      elements: dict
    partials_removed:
      description: Partial and half-deleted backup directories removed, with the reasons.
      type: list
      elements: dict
    broken_chains:
      description: Backups whose chain is already broken (a parent missing); also given as warnings.
      type: list
      elements: str
    damaged:
      description: Backups whose manifest cannot be read or trusted (vm, backup_id, problems); left alone.
      type: list
      elements: dict
    locked:
      description: The VM, when a restore read it and nothing was removed (vm, msg naming the holder).
      type: list
      elements: dict
    failed:
      description: Present and V(true) when the prune failed (the backup is complete all the same).
      type: bool
    msg:
      description: Why the prune failed and what to do.
      type: str
unlocked:
  description: Whether the VM's lock of O(lock_owner) was given back.
  returned: action=commit or action=abort
  type: bool
report_path:
  description: The report file written.
  returned: action=report
  type: str
metrics_file:
  description: The textfile written.
  returned: action=metrics
  type: str
vms:
  description: The VMs of the repository the textfile describes.
  returned: action=metrics
  type: list
  elements: str
mode_fixes:
  description:
    - Directories of the repository whose mode let others than the owner in, set to 0700 by
      this run (each also a warning). Empty in check mode, which changes no mode.
  returned: action=begin or action=report
  type: list
  elements: str
  sample: ["repository directory /srv/backup had mode 0755 (readable by others than root); set it to 0700: ..."]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_repo import ARGUMENT_SPEC, REQUIRED_IF, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
