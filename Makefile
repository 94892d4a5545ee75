# vmbackup.libvirt: every set-up step, test and benchmark, from a fresh Debian 12 machine.
#   make demo   the main job on the local default: a demo VM backed up, changed, backed up
#               incrementally, restored under a new name, booted and checked
#   make test   everything CI runs: sanity, lint, unit and integration tests on a real test bed
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
TESTBED := tests/testbed
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
# Select integration tests: make integration TESTS=tests/integration/test_file_backup.py
TESTS ?= tests/integration
# SLOW=1 also runs the tests marked slow (minutes each: the node's power loss, a forced LV restore)
SLOW ?= 0

.PHONY: deps testbed testbed-down sanity lint unit integration test bench demo clean

deps:
	bash scripts/install-deps.sh

testbed: deps
	bash $(TESTBED)/libvirt.sh up
	bash $(TESTBED)/guest-image.sh build
	bash $(TESTBED)/sshd.sh up
	bash $(TESTBED)/ceph.sh up
	bash $(TESTBED)/lvmhost.sh up

testbed-down:
	-bash $(TESTBED)/lvmhost.sh down
	-bash $(TESTBED)/ceph.sh down
	-bash $(TESTBED)/sshd.sh down
	-bash $(TESTBED)/libvirt.sh down

sanity: deps
	bash scripts/ansible-test-sanity.sh

lint: deps
	bash scripts/lint.sh

unit: deps
	$(PYTEST) -q -p no:cacheprovider tests/unit

integration: deps
	bash $(TESTBED)/libvirt.sh up
	bash $(TESTBED)/guest-image.sh build
	VMBACKUP_SLOW_TESTS=$(SLOW) bash scripts/integration.sh $(TESTS)

# The README's test command: each gate runs even if an earlier one failed; the exit code
# is non-zero if any failed. The integration gate's last line sums its two phases (scripts/integration.sh).
test: deps
	@rc=0; \
	$(MAKE) --no-print-directory sanity || rc=1; \
	$(MAKE) --no-print-directory lint || rc=1; \
	$(MAKE) --no-print-directory unit || rc=1; \
	$(MAKE) --no-print-directory integration || rc=1; \
	if [ $$rc -ne 0 ]; then echo "make test: a gate failed (see above)"; fi; \
	exit $$rc

bench: deps
	bash $(TESTBED)/libvirt.sh up
	bash $(TESTBED)/guest-image.sh build
	$(PY) tests/bench/run.py

demo: deps
	bash $(TESTBED)/libvirt.sh up
	bash $(TESTBED)/guest-image.sh build
	$(PY) scripts/demo.py

clean:
	rm -rf build tests/output .pytest_cache
