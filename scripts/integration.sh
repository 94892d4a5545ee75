#!/usr/bin/env bash
# make integration: the integration tests on the real test bed, two at a time (pytest-xdist), in
# two phases, so that no test runs beside one that disturbs what it uses:
#   1. the fault suite (it restarts libvirtd and kills hv1's sshd children) beside the files that
#      use neither: the LVM host (a TCG guest with its own libvirtd and sshd) and the EE build;
#      tests/integration/conftest.py (XDIST_GROUPS) keeps each group on one worker;
#   2. every other file, a file per worker at a time.
# With file arguments (make integration TESTS=...) those files run in one pytest, one at a time.
# Each phase runs even if the other failed; the last line sums both.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rs --durations=15)
ALL=tests/integration
WORKERS=${VMBACKUP_TEST_WORKERS:-2}

if [ $# -gt 0 ] && [ "$*" != "$ALL" ] && [ "$*" != "$ALL/" ]; then
    exec "${PYTEST[@]}" "$@"
fi

phase1=(test_faults.py test_lvm.py test_lvm_vm.py test_ee.py)
phase2=()
for f in "$ALL"/test_*.py; do
    name=$(basename "$f")
    [[ " ${phase1[*]} " == *" $name "* ]] || phase2+=("$f")
done
mkdir -p build
rc=0
start=$(date +%s)
"${PYTEST[@]}" -n "$WORKERS" --dist loadgroup --junitxml=build/integration-1.xml "${phase1[@]/#/$ALL/}" || rc=1
mid=$(date +%s)
"${PYTEST[@]}" -n "$WORKERS" --dist loadfile --junitxml=build/integration-2.xml "${phase2[@]}" || rc=1
end=$(date +%s)

"$PY" - build/integration-1.xml build/integration-2.xml "$((mid - start))" "$((end - mid))" <<'EOF'
import sys
import xml.etree.ElementTree as ET

totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
for path in sys.argv[1:3]:
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
print("integration: %d passed, %d failed, %d errors, %d skipped in %s s (phase 1: %s s, phase 2: %s s)"
      % (passed, totals["failures"], totals["errors"], totals["skipped"],
         int(sys.argv[3]) + int(sys.argv[4]), sys.argv[3], sys.argv[4]))
EOF
exit $rc
