#!/usr/bin/env bash
# Installs everything the collection's tests, benchmarks and demo need on a fresh
# Debian 12 machine: Debian packages (libvirt, QEMU, OpenSSH, LVM, Ceph, a kernel
# for test guests, references for the benchmark) and a Python virtualenv with
# ansible-core and the collection's Python requirements. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-guest-agent
  openssh-server openssh-client lvm2 thin-provisioning-tools
  ceph ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd qemu-block-extra
  linux-image-amd64 busybox-static zstd xz-utils
  python3-lxml python3-paramiko python3-jmespath
  virtnbdbackup libnbd-bin python3-libnbd
  iproute2 procps psmisc time
  swtpm swtpm-tools
  libguestfs-tools python3-guestfs
)

stamp=/var/tmp/vmbackup-deps.stamp
want=$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/var/tmp/vmbackup-apt.log 2>&1 \
      || { tail -30 /var/tmp/vmbackup-apt.log; exit 1; }
  fi
  echo "$want" > "$stamp"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
reqs=$(cat requirements.txt tests/requirements.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.reqs 2>/dev/null)" != "$reqs" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
  echo "$reqs" > .venv/.reqs
fi

# Ansible finds the collection through build/collections/ansible_collections/vmbackup/libvirt.
mkdir -p build/collections/ansible_collections/vmbackup
ln -sfn "$(pwd)" build/collections/ansible_collections/vmbackup/libvirt
echo "install-deps: ready"
