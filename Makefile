# csi-driver-smb-nfs — developer and CI entry points.
# `make run` starts the driver with a demo Samba share; `make test` runs
# everything CI runs (installing what it needs on a fresh Debian machine).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest
RUN_DIR ?= $(CURDIR)/run
PROTO := driver/csi/csi.proto
GENERATED := driver/csi/csi_pb2.py driver/csi/csi_pb2.pyi driver/csi/csi_pb2_grpc.py driver/csi/csi_pb2_grpc.pyi

.PHONY: install deps run test test-unit test-integration test-e2e test-faults lint typecheck \
        proto proto-check chart bench image test-image clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@# the kerberos extra (gssapi, krb5) compiles against libkrb5
	@command -v krb5-config >/dev/null && command -v gcc >/dev/null || bash tests/tools/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,kerberos]'
	touch $(STAMP)

deps:
	@bash tests/tools/system-deps.sh

run: install
	@$(PY) -m tests.tools.demo --run-dir $(RUN_DIR)

test: deps install lint typecheck proto-check test-unit chart test-integration test-e2e test-faults \
      test-image

test-unit: install
	$(PYTEST) -q tests/unit

test-integration: deps install
	$(PYTEST) -q tests/integration

test-e2e: deps install
	bash tests/e2e/uml/setup.sh
	$(PYTEST) -q tests/e2e

# The Linux image from deploy/Dockerfile, without a Docker daemon (podman or
# buildah; a stand-in base from Debian packages when no registry answers).
# Cached: an unchanged tree rebuilds in seconds.
image: deps
	bash deploy/build-image.sh

# The built image run from its own root filesystem: entrypoint and user,
# controller against Samba and NFS, and (UML guest) the node's kernel mounts.
test-image: deps install image
	bash tests/e2e/uml/setup.sh
	$(PYTEST) -q tests/image

test-faults: deps install
	@if [ -d tests/faults ]; then $(PYTEST) -q tests/faults; else echo "no fault suite yet"; fi

lint: install
	$(VENV)/bin/ruff check driver controller node tests
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --platform win32

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	    --mypy_out=. --mypy_grpc_out=. $(PROTO)

# Regenerate into a scratch copy and compare with what is committed.
proto-check: install
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	mkdir -p $$tmp/driver/csi && cp $(PROTO) $$tmp/driver/csi/ && \
	$(PY) -m grpc_tools.protoc -I $$tmp --python_out=$$tmp --grpc_python_out=$$tmp \
	    --mypy_out=$$tmp --mypy_grpc_out=$$tmp $$tmp/$(PROTO) && \
	for f in $(GENERATED); do \
	    diff -q $$f $$tmp/$$f >/dev/null || { echo "$$f is stale: run make proto"; exit 1; }; \
	done; echo "generated code is up to date"

# Chart tests, then the chart archive CI publishes (dist/, version and
# appVersion = the Python package's version).
chart: install
	$(PYTEST) -q tests/chart
	$(PY) -m tests.tools.package_chart --destination dist

bench: deps install
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .cache run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis bench-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
