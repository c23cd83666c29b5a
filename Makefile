# qsgw: the README's commands. Every target depends on `setup`, which is
# idempotent: it installs only what is missing.
SHELL := /bin/bash
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMPS  := .stamps
# Derived from what the code runs (`qsgw doctor` checks each): wireguard-go and
# wg; charon, swanctl and its vici plugin; charon's plugins (libstrongswan: aes,
# sha2, kdf, x509...; -standard-plugins: openssl, gcm; -extra-plugins:
# kernel-libipsec; strongswan-libcharon: socket-default); mosquitto, its
# passwd and clients (tests, demo); ip, ping, sysctl, unshare, modprobe; nft (tests
# drop IKE in a namespace); postgresql (the PostgreSQL journal backend: the HA
# tests and bench/ha.py start a server of their own) and keepalived (the HA
# pair's VRRP virtual address, in the HA tests and bench/ha.py).
DEB_PACKAGES := wireguard-go wireguard-tools strongswan-charon strongswan-swanctl \
                strongswan-libcharon libstrongswan libstrongswan-standard-plugins \
                libcharon-extra-plugins mosquitto mosquitto-clients iproute2 iputils-ping \
                nftables openssl procps util-linux kmod python3-venv postgresql keepalived \
                cmake ninja-build gcc libc6-dev libssl-dev git ca-certificates make bzip2 pkg-config
# make, bzip2, pkg-config: the patched libipsec's build (scripts/build-libipsec.sh).
# liboqs: built from the pinned source into the venv (scripts/build-liboqs.sh);
# LIBOQS_TARBALL names a local copy of it (checked against its SHA-256).
LIBOQS_PREFIX := .venv/opt/liboqs
# The offline copy beside the checkout, where there is one (this project's machines).
LIBOQS_TARBALL ?= $(abspath $(wildcard ../shared/vendor/liboqs-0.16.0.tar.gz))
export LIBOQS_TARBALL
# libipsec with qsgw's patch (scripts/build-libipsec.sh), for the lab's charons;
# STRONGSWAN_TARBALL names a local copy of the 5.9.8 release tarball.
LIBIPSEC_PREFIX := .venv/opt/libipsec
STRONGSWAN_TARBALL ?= $(abspath $(wildcard ../shared/vendor/strongswan_5.9.8.orig.tar.bz2))
export STRONGSWAN_TARBALL
DEMO_SECONDS ?=
PYTEST_ARGS ?=

.PHONY: setup deps venv liboqs libipsec demo test test-vm test-slow lint bench clean image image-deps

# Ends with the doctor: it fails setup only for what setup installs (a kernel
# module is reported, not fatal).
setup: deps venv liboqs libipsec
	@.venv/bin/qsgw doctor

# Debian packages: apt-get only when one is missing, so a set-up machine
# (and a machine without network) goes straight on.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,oqs]'
	@touch $@

# The appliance image (image/build.sh): mmdebstrap builds the Debian root into a
# tar (no loop device, no mount), mksquashfs packs it; qemu boots it in the VM
# tests; mke2fs makes their state disks and config drives. Cached by input hash.
IMAGE_DEB_PACKAGES := mmdebstrap squashfs-tools qemu-system-x86 e2fsprogs
IMAGE_DIR ?= build/image

image-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(IMAGE_DEB_PACKAGES)"

image: setup image-deps
	@image/build.sh $(IMAGE_DIR)

# OQS_INSTALL_PATH points liboqs-python at our build, so it never fetches one.
liboqs: $(STAMPS)/venv
	@scripts/build-liboqs.sh $(CURDIR)/$(LIBOQS_PREFIX)
	@OQS_INSTALL_PATH=$(CURDIR)/$(LIBOQS_PREFIX) $(PY) -c \
	  'import gateway.crypto.oqs_provider as p; p.load_oqs()' \
	  || { echo "liboqs-python cannot load $(LIBOQS_PREFIX)" >&2; exit 1; }

libipsec: $(STAMPS)/venv
	@scripts/build-libipsec.sh $(CURDIR)/$(LIBIPSEC_PREFIX)

# `make demo SCENARIO=<name>` runs one seed deployment (benelux-mdi, beqci,
# int-uqkd, madqci) on its own timeline; DEMO_SECONDS applies when given.
SCENARIO ?=
demo: setup
ifeq ($(SCENARIO),)
	DEMO_SECONDS=$(or $(DEMO_SECONDS),60) $(PY) -m qsgw_lab.demo
else
	DEMO_SECONDS=$(DEMO_SECONDS) $(PY) -m qsgw_lab.scenarios $(SCENARIO)
endif

# The appliance VM tests (tests/vm, ~10 min under TCG) run in `make test-vm`, which
# .ci/run runs after `make test` (KVM where a guest really runs, else TCG: qsgw_lab.vm).
test: setup
	$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)

test-vm: image
	$(PY) -m pytest -m vm tests/vm $(PYTEST_ARGS)

# The slow mode: hypothesis with its long profile (>= 100,000 fuzz examples).
test-slow: setup
	QSGW_HYPOTHESIS_PROFILE=slow $(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check gateway kms_client qsgw_lab tests bench
	.venv/bin/mypy

bench: setup
	@mkdir -p bench/results
	$(PY) bench/kms.py --save bench/results/kms.json
	$(PY) bench/handshake.py --save bench/results/handshake.json
	$(PY) bench/rekey.py --save bench/results/rekey.json
	@if [ -f bench/ipsec.py ]; then $(PY) bench/ipsec.py --save bench/results/ipsec.json; fi
	$(PY) bench/ha.py --save bench/results/ha.json
	$(PY) bench/status.py --save bench/results/status.json

clean:
	rm -rf .venv $(STAMPS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
