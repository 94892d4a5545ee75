#!/usr/bin/env bash
# Runs `ansible-test sanity` on the collection without reaching anything but PyPI.
#
# ansible-test bootstraps pip into each sanity virtualenv with a get-pip script that
# it downloads from a host that cannot be reached here. It first looks for a cached
# copy at ~/.ansible/test/cache/get_pip_<ver>.py; we put a small script there that
# installs pip from a wheel fetched from PyPI (`pip download`) into the same folder.
#
# The collection is copied (tracked and untracked-not-ignored files) into
# build/sanity/ansible_collections/vmbackup/libvirt/, made a git repository there so
# that ansible-test finds its files, and tested. Extra arguments go to ansible-test
# (for example: --test pylint, or a path). Exit code: ansible-test's.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
VENV=${VENV:-$REPO/.venv}
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "ansible-test-sanity: $PY missing; run scripts/install-deps.sh" >&2; exit 2; }
export PATH="$VENV/bin:$PATH"
PYVER=${SANITY_PYTHON:-3.11}

# --- 1. offline pip bootstrap for ansible-test's sanity virtualenvs -------------------
pip_version=$("$PY" - <<'EOF'
import os, re, ansible_test
src = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
m = re.search(r"default_packages\s*=\s*dict\(\s*pip='([^']+)'", src)
print(m.group(1) if m else "")
EOF
)
[ -n "$pip_version" ] || { echo "ansible-test-sanity: cannot find the pip version ansible-test wants" >&2; exit 2; }
cache=${HOME}/.ansible/test/cache
mkdir -p "$cache"
if ! ls "$cache"/pip-"$pip_version"-*.whl >/dev/null 2>&1; then
  echo "ansible-test-sanity: fetching pip $pip_version wheel into $cache"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$cache" "pip==$pip_version"
fi
script="$cache/get_pip_${pip_version//./_}.py"
cat > "$script.new" <<EOF
# Stand-in for pip's get-pip.py, written by vmbackup.libvirt's scripts/ansible-test-sanity.sh.
# Installs pip from the wheel beside this file, offline. Called by ansible-test as
# "get-pip.py pip==X --disable-pip-version-check --no-setuptools --no-wheel".
import glob
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
wheels = sorted(glob.glob(os.path.join(here, "pip-${pip_version}-*.whl")))
if not wheels:
    sys.exit("no pip ${pip_version} wheel in %s: run scripts/ansible-test-sanity.sh" % here)
sys.path.insert(0, wheels[-1])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
from pip._internal.cli.main import main  # noqa: E402

sys.exit(main(["install", "--no-index", "--find-links", here] + args))
EOF
if cmp -s "$script.new" "$script"; then rm -f "$script.new"; else mv "$script.new" "$script"; fi

# --- 2. a fresh copy of the collection where ansible-test wants it ----------------------
dest=$REPO/build/sanity/ansible_collections/vmbackup/libvirt
rm -rf "$REPO/build/sanity"
mkdir -p "$dest"
git -C "$REPO" ls-files -co --exclude-standard -z \
  | while IFS= read -r -d '' f; do { [ -e "$f" ] || [ -L "$f" ]; } && printf '%s\0' "$f"; done \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$dest" -xf -
git -C "$dest" init -q
git -C "$dest" add -A

# --- 3. the sanity tests ---------------------------------------------------------------------
cd "$dest"
start=$(date +%s)
set +e
ansible-test sanity --python "$PYVER" --color no "$@"
rc=$?
set -e
echo "ansible-test-sanity: rc=$rc in $(( $(date +%s) - start ))s (copy in $dest)"
exit $rc
