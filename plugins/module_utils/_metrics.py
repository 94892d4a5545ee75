# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository's state as a Prometheus textfile (node_exporter's textfile collector).

Made from the repository itself, not from one run: for every VM, its newest usable backup
(the last success: when it finished, how long it took, what it sent and stored, full or
incremental, how many usable backups there are) and, from each hypervisor's latest report, the
result of the VM's last run. A VM whose run failed keeps its last success, so the alert
"no successful backup in 26 h" fires on the age of that, whatever happened since; a VM that
never had a backup shows only its failed run.

Pure: ``samples`` and ``render`` take plain dicts (manifests, reports); the module writes.
"""

from __future__ import annotations

import datetime

METRICS = [
    ("vmbackup_last_success_timestamp_seconds", "When the VM's newest complete, usable backup finished (Unix time)."),
    ("vmbackup_last_success_duration_seconds", "How long the VM's newest usable backup took, from begin to commit."),
    ("vmbackup_last_success_bytes_sent", "Bytes the VM's newest usable backup carried from the hypervisor."),
    ("vmbackup_last_success_bytes_stored", "Bytes the VM's newest usable backup stored in the repository."),
    ("vmbackup_last_success_full", "1 when the VM's newest usable backup is a full backup, 0 for an incremental."),
    ("vmbackup_usable_backups", "Complete, undamaged backups of the VM that can be restored."),
    ("vmbackup_last_run_success", "1 when the VM's last backup run succeeded, 0 when it failed (latest report)."),
    ("vmbackup_last_run_timestamp_seconds", "When the VM's last backup run ended, or began if it never ended."),
    ("vmbackup_metrics_timestamp_seconds", "When this file was written."),
]


def _epoch(value):
    """Unix time of an ISO 8601 string (a naive one is UTC), or None."""
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def duration(started, finished):
    """Seconds between two ISO 8601 times, or None when either is missing."""
    a, b = _epoch(started), _epoch(finished)
    return round(b - a, 3) if a is not None and b is not None else None


def samples(repository, usable, reports, now):
    """{metric: [(labels, value)]}.

    ``usable``: {vm: [manifest, ...]} (usable backups, oldest first); ``reports``: the
    hypervisors' latest reports ({hypervisor, results: [{vm, result, started, finished}]}).
    """
    out = {name: [] for name, _help in METRICS}
    for vm in sorted(usable):
        backups = usable[vm]
        labels = {"vm": vm, "repository": repository}
        out["vmbackup_usable_backups"].append((labels, len(backups)))
        if not backups:
            continue
        last = backups[-1]
        finished = _epoch(last.get("finished"))
        if finished is not None:
            out["vmbackup_last_success_timestamp_seconds"].append((labels, finished))
        took = duration(last.get("started"), last.get("finished"))
        if took is not None:
            out["vmbackup_last_success_duration_seconds"].append((labels, took))
        for key in ("bytes_sent", "bytes_stored"):
            if last.get(key) is not None:
                out["vmbackup_last_success_" + key].append((labels, int(last[key])))
        out["vmbackup_last_success_full"].append((labels, 1 if last.get("type") == "full" else 0))
    for report in sorted(reports, key=lambda r: str(r.get("hypervisor"))):
        for result in report.get("results") or []:
            labels = {"vm": result.get("vm"), "hypervisor": report.get("hypervisor"), "repository": repository}
            out["vmbackup_last_run_success"].append((labels, 1 if result.get("result") == "ok" else 0))
            when = _epoch(result.get("finished")) or _epoch(result.get("started"))
            if when is not None:
                out["vmbackup_last_run_timestamp_seconds"].append((labels, when))
    out["vmbackup_metrics_timestamp_seconds"].append(({"repository": repository}, now))
    return out


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(metrics):
    """The text exposition format, every metric a gauge, its HELP and TYPE first."""
    lines = []
    for name, help_text in METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        for labels, value in metrics.get(name, []):
            lines.append("%s{%s} %s" % (name, ",".join('%s="%s"' % (k, _label_value(v)) for k, v in sorted(labels.items())),
                                        _number(value)))
    return "\n".join(lines) + "\n"
