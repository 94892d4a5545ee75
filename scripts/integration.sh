#!/usr/bin/env bash
# make integration: the integration tests on the real test bed, two at a time, in two phases, so
# that no test runs beside one that disturbs what it uses:
#   1. the fault suite (it restarts libvirtd and kills hv1's sshd children) in one pytest, beside
#      a second pytest with the files that use neither: the LVM host (a TCG guest with its own
#      libvirtd and sshd) and the EE build;
#   2. every other file, two files at a time (pytest-xdist --dist loadfile: a file stays on one
#      worker, so the guests a file shares between its tests stay its own).
# With file arguments (make integration TESTS=...) those files run in one pytest, one at a time.
# Each part runs even if another failed; the last line sums them all.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rs --durations=15)
ALL=tests/integration
WORKERS=${VMBACKUP_TEST_WORKERS:-2}

if [ $# -gt 0 ] && [ "$*" != "$ALL" ] && [ "$*" != "$ALL/" ]; then
    exec "${PYTEST[@]}" "$@"
fi

faults=(test_faults.py)
beside=(test_lvm.py test_lvm_vm.py test_ee.py)
rest=()
for f in "$ALL"/test_*.py; do
    name=$(basename "$f")
    [[ " ${faults[*]} ${beside[*]} " == *" $name "* ]] || rest+=("$f")
done
mkdir -p build
rm -f build/integration-*.xml
start=$(date +%s)
# Phase 1: both pytests' lines interleave live, each with its prefix.
( "${PYTEST[@]}" --junitxml=build/integration-1a.xml "${faults[@]/#/$ALL/}" 2>&1 | sed -u 's/^/[faults] /'
  exit "${PIPESTATUS[0]}" ) &
pid_a=$!
( "${PYTEST[@]}" --junitxml=build/integration-1b.xml "${beside[@]/#/$ALL/}" 2>&1 | sed -u 's/^/[lvm-host] /'
  exit "${PIPESTATUS[0]}" ) &
pid_b=$!
rc=0
wait "$pid_a" || rc=1
wait "$pid_b" || rc=1
mid=$(date +%s)
"${PYTEST[@]}" -n "$WORKERS" --dist loadfile --junitxml=build/integration-2.xml "${rest[@]}" || rc=1
end=$(date +%s)

"$PY" - "$((mid - start))" "$((end - mid))" build/integration-1a.xml build/integration-1b.xml build/integration-2.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET

totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
for path in sys.argv[3:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print("integration: no results in %s (%s)" % (path, exc))
        totals["errors"] += 1
        continue
    for suite in root.iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
print("integration: %d passed, %d failed, %d errors, %d skipped in %d s (phase 1: %s s, phase 2: %s s)"
      % (passed, totals["failures"], totals["errors"], totals["skipped"],
         int(sys.argv[1]) + int(sys.argv[2]), sys.argv[1], sys.argv[2]))
EOF
exit $rc
