#!/usr/bin/env bash
# The collection's lint gates, offline (nothing is fetched, not even a version check):
#   1. ansible-lint --profile production (config: .ansible-lint at the repo root)
#   2. ansible-galaxy collection build into build/dist (and build/, .venv kept out of it)
#   3. ansible-doc renders the modules' documentation
#   4. antsibull-docs (the docsite builder) validates every plugin's and role's docs and markup
# Every step runs; the exit code is 1 if any failed. Extra arguments go to ansible-lint.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
VENV=${VENV:-$REPO/.venv}
[ -x "$VENV/bin/ansible-lint" ] || { echo "lint: $VENV/bin/ansible-lint missing; run scripts/install-deps.sh" >&2; exit 2; }
case ":$PATH:" in *":$VENV/bin:"*) ;; *) export PATH="$VENV/bin:$PATH" ;; esac

# Ansible finds the collection (its modules, roles, doc fragments) through this symlink.
link=build/collections/ansible_collections/vmbackup/libvirt
if [ ! -e "$link/galaxy.yml" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn ../../../.. "$link"
fi
export ANSIBLE_COLLECTIONS_PATH=$REPO/build/collections
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1   # no schema download (offline: true in .ansible-lint too)
export ANSIBLE_LOCAL_TEMP=${ANSIBLE_LOCAL_TEMP:-$REPO/build/tmp}
mkdir -p "$ANSIBLE_LOCAL_TEMP"

failed=()
step() {  # step NAME COMMAND...
  local name=$1 start rc
  shift
  echo "=== lint: $name"
  start=$(date +%s)
  "$@"
  rc=$?
  echo "=== lint: $name: rc=$rc in $(( $(date +%s) - start ))s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

step ansible-lint ansible-lint --profile production "$@"

build_and_check() {
  rm -rf build/dist
  ansible-galaxy collection build --output-path build/dist --force || return 1
  local tarball
  tarball=$(ls build/dist/vmbackup-libvirt-*.tar.gz) || return 1
  # What must never go into the tarball.
  if tar tzf "$tarball" | grep -E '^(\.venv|build|tests/output|\.git)(/|$)|__pycache__|\.pyc$'; then
    echo "lint: the entries above should not be in $tarball (see build_ignore in galaxy.yml)" >&2
    return 1
  fi
  echo "lint: $tarball: $(tar tzf "$tarball" | wc -l) entries"
}
step galaxy-build build_and_check

docs() {
  local rc=0 m
  # Any output fails the check, but not this one: ansible-core's own ssh-agent code imports DSA, which
  # cryptography 51 (what pip resolves on a fresh machine today) warns about on every start; upstream's to fix.
  local -x PYTHONWARNINGS="ignore:DSA is deprecated"
  for m in $(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$//' | grep -v '^__init__$'); do
    if ! out=$(PAGER=cat ansible-doc -t module "vmbackup.libvirt.$m" 2>&1 >/dev/null) || [ -n "$out" ]; then
      echo "lint: ansible-doc vmbackup.libvirt.$m: ${out:-failed}" >&2
      rc=1
    fi
  done
  # The one a person reads first, shown in full.
  if PAGER=cat ansible-doc vmbackup.libvirt.vm_info > build/tmp/vm_info.doc.txt; then
    head -20 build/tmp/vm_info.doc.txt
  else
    rc=1
  fi
  return $rc
}
step ansible-doc docs

# What a docsite build would reject: schema errors (a role spec's int default that is a template),
# O()/RV()/M()/P() references to options, return values and plugins that do not exist (ours and
# ansible.builtin's), RST that does not render. Local only: it reads ansible-doc's metadata dump.
sitedocs() {
  [ -x "$VENV/bin/antsibull-docs" ] || { echo "lint: $VENV/bin/antsibull-docs missing; run scripts/install-deps.sh" >&2; return 2; }
  antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs dependent "$link"
}
step antsibull-docs sitedocs

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint: FAILED: ${failed[*]}"
  exit 1
fi
echo "lint: all passed"
