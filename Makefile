# segnode: `make run` (demo end to end) and `make test` on a fresh machine.
# The virtual environment lives in .venv; torch and torchvision are pinned to
# the pair that works here (a CUDA build that also runs on the CPU), so pip
# never resolves another torch through nnunetv2's dependencies.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
TORCH_PINS  := torch==2.14.1 torchvision==0.29.1
STAMP       := $(VENV)/.segnode-installed
DEMO_OUT    ?= out/demo

.PHONY: all setup run test test-fast lint peers clean demo-model fuzz harden bench bench-receive bench-inference bench-e2e bench-overhead bench-stitch bench-seg bench-scale

all: test

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e '.[dev]'
	touch $@

# The Debian peers the tests run against (dciodvfy, DCMTK, Orthanc with its
# DICOMweb plugin, Chromium for the browser tests, PostgreSQL and Redis for the
# several-process node). Installed
# only when running as root; the tests that need them skip with a reason otherwise.
peers:
	@missing=""; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium fonts-dejavu-core"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian peers:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
			|| echo "warning: could not install$$missing; tests that need them will skip"; \
	elif [ -n "$$missing" ]; then \
		echo "note: missing$$missing (not root); tests that need them will skip"; \
	fi

run: $(STAMP)
	$(BIN)/segnode demo --out $(DEMO_OUT)

test: $(STAMP) peers
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check node dicom_io model segnode_errors tests scripts bench harden
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

# Long fuzz campaigns: FUZZ_SECONDS per target with segnode's mutators (sandboxed), then
# as long again per target with atheris (coverage-guided libFuzzer); about 80 minutes.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(BIN)/python -m harden.fuzz --seconds $(FUZZ_SECONDS) --out .harden/fuzz
	for target in receive series config; do \
		$(BIN)/python -m harden.fuzz_atheris $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	done

# The whole hardening suite with long budgets, one table (check, tried, failures, figure),
# also in .harden/summary.json (root, for the network namespaces; about 80 minutes).
harden: $(STAMP) peers
	$(BIN)/python -m harden.run_all --budget long

# Every speed and memory target in one table next to its peer, also written to
# .bench/summary.json (about 30 minutes on 2 cores; the receive part needs root).
bench: $(STAMP) peers
	$(BIN)/python bench/run_all.py

# Receive throughput of `segnode serve` next to DCMTK storescp (root; about 2 minutes).
bench-receive: $(STAMP) peers
	$(BIN)/python bench/receive.py --json .bench/receive.json

# Whole-body CPU inference next to nnU-Net's stock predictor (about 15 minutes).
bench-inference: $(STAMP)
	$(BIN)/python bench/inference.py --json .bench/inference.json

# Last instance in to SEG and SR acknowledged by Orthanc, minus the forward passes (root).
bench-overhead: $(STAMP) peers
	$(BIN)/python bench/node_overhead.py --json .bench/node_overhead.json

# `segnode segment` next to MRSegmentator 2.0's DICOM path (installs it into .bench/).
bench-e2e: $(STAMP)
	$(BIN)/python bench/end_to_end.py --json .bench/end_to_end.json

# Series per hour with 1 and 2 Celery workers and queue latency under a burst of 50 series
# (PostgreSQL, Redis and the workers on this machine; about 5 minutes).
bench-scale: $(STAMP) peers
	$(BIN)/python bench/scale_out.py --json .bench/scale_out.json

# Stitching time and peak memory of a NAKO-sized 4-station case next to plain SimpleITK.
bench-stitch: $(STAMP)
	$(BIN)/python bench/stitch.py

# DICOM-SEG writing (40 segments, 300 slices) next to dcmqi's itkimage2segimage (installs dcmqi
# into .bench/; a few minutes).
bench-seg: $(STAMP)
	$(BIN)/python bench/seg_write.py --json .bench/seg_write.json

# Re-train the embedded demo model from the phantom generator (CPU, minutes).
demo-model: $(STAMP)
	$(BIN)/python scripts/train_demo_model.py --out model/demo_model

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
