# Two entry points for a fresh machine (Debian, Python 3.11, root, no GPU):
#   make demo   set everything up, then lip-sync the embedded default (writes results/demo/)
#   make test   set everything up, then run the whole test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := espeak-ng libespeak-ng1 chromium libgl1 libglib2.0-0 nginx-light libnginx-mod-rtmp libb64-0d
DEFAULT_ONNX := model_repository/wav2lip_onnx/1/model.onnx
LIVE_ONNX := model_repository/wav2lip_live/1/model.onnx

.PHONY: setup apt venv export demo test test-fast lint bench perf clean

setup: apt $(STAMP) $(DEFAULT_ONNX) $(LIVE_ONNX)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# torch is pinned and installed first: the pinned CPU wheel is local; an unpinned one would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[all]"
	touch $(STAMP)

# The ONNX model is an artifact: exported from the shipped checkpoint, never committed.
$(DEFAULT_ONNX): $(STAMP) $(wildcard training/weights/*.pt)
	$(BIN)/lipsync-export --quiet

# The gateway's live model (the low-look-ahead weights), served beside the default one.
$(LIVE_ONNX): $(STAMP) $(wildcard training/weights/*.pt)
	$(BIN)/lipsync-export --live --quiet

export: $(STAMP)
	$(BIN)/lipsync-export

demo: setup
	$(BIN)/python -m lipsync.client.demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "unit and not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m lipsync.benchmarks.face_tracker
	$(BIN)/python -m lipsync.benchmarks.offline
	$(BIN)/python -m lipsync.benchmarks.serving --quick
	$(BIN)/python -m lipsync.benchmarks.pipeline --quick

# Triton's own load generator against the embedded server: concurrency sweep of both served models.
perf: setup
	$(BIN)/python -m lipsync.benchmarks.perf_analyzer --models wav2lip_python wav2lip_live

clean:
	rm -rf $(VENV) results $(DEFAULT_ONNX) model_repository/wav2lip_live
