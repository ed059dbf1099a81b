# Every target does its own set-up: a virtual environment in .venv with the CPU wheel of torch installed first
# (a bare `torch` requirement would pull several GB of CUDA packages), then lambdanet and its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-all lint bench bench-suite bench-gpu clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)  ## the main job on the embedded default dataset
	$(BIN)/lambdanet train

test: $(STAMP)  ## the default test suite (about 10 minutes on 2 cores)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" --timeout 900

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --timeout 3600

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)  ## layer speed against lambda-networks and a 3x3 convolution (docs/benchmarks.md)
	$(BIN)/python benchmarks/layer_speed.py

bench-suite: $(STAMP)  ## lambdanet bench layer / model / memory (docs/benchmarks.md)
	$(BIN)/lambdanet bench layer --config configs/bench/layer_cpu.yaml
	$(BIN)/lambdanet bench model --config configs/bench/model_cpu.yaml
	$(BIN)/lambdanet bench memory --peak

bench-gpu:  ## the GPU suite on a CUDA machine, with its own python3 and torch (docs/gpu.md); results in $(OUT)
	PYTHONPATH=src $(PYTHON) benchmarks/gpu_suite.py --out $(or $(OUT),bench-results/gpu)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
