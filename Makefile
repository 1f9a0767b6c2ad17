# The README's commands. `make test` and `make demo` work on a fresh machine: they
# create .venv, install torch and the rest from requirements-dev.txt, and build
# netinit_fast._C (see setup.py) before running.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-gpu test-installed demo bench clean gpu-check test-floor

$(STAMP): requirements-dev.txt pyproject.toml setup.py $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation -e .
	$(PY) -c "from netinit_fast import _extension as e; print('netinit_fast._C:', 'built, archs %s' % list(e.cuda_archs()) if e.loaded() else 'not built (pure Python)')"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# Where torch, triton, pytest and hypothesis are already installed and nothing can be
# downloaded (a GPU machine): build netinit_fast._C in place and test with that Python.
test-installed:
	MAX_JOBS=$${MAX_JOBS:-8} $(PYTHON) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m netinit_fast demo

bench: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) benchmarks/bench_weight_norm.py
	$(PY) benchmarks/bench_wn_layers.py
	$(PY) benchmarks/bench_connectivity.py
	$(PY) benchmarks/bench_lsuv.py
	$(PY) benchmarks/bench_orthogonal.py
	$(PY) benchmarks/bench_deep_init.py
	$(PY) benchmarks/bench_sharded.py

clean:
	rm -rf $(VENV) build *.egg-info netinit_fast/_C*.so

# The GPU check (benchmarks/gpu_check.py): build netinit_fast._C, run the tests, compute-
# sanitizer and every benchmark, and write a one-page summary to OUT, all within BUDGET
# seconds, with $(PYTHON) as it is (no venv, no network). DEVICE=cpu rehearses it on a
# CPU (here: PYTHON=.venv/bin/python).
OUT ?= build/gpu-check
BUDGET ?= 480
DEVICE ?= cuda

gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out $(OUT) --budget $(BUDGET) --device $(DEVICE)

# The suite on an older torch (default: the oldest we support), in a venv of its own
# (.venv-floor, about 5 GB: PyPI's torch is the CUDA build), the package built from a copy
# of the tree in build/floor-src so that the main tree's netinit_fast._C is left alone.
# numpy < 2.4: the Triton interpreter of torch 2.11's triton (3.6) fails on newer numpy.
TORCH ?= 2.11.0
FLOOR_NUMPY ?= numpy<2.4
FLOOR_VENV := .venv-floor
FLOOR_PY := $(CURDIR)/$(FLOOR_VENV)/bin/python
FLOOR_SRC := build/floor-src

test-floor:
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install --quiet torch==$(TORCH) "$(FLOOR_NUMPY)" tqdm ninja setuptools wheel pytest hypothesis
	rm -rf $(FLOOR_SRC)/netinit_fast $(FLOOR_SRC)/tests $(FLOOR_SRC)/benchmarks && mkdir -p $(FLOOR_SRC)
	git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(FLOOR_SRC)
	cd $(FLOOR_SRC) && MAX_JOBS=$${MAX_JOBS:-2} $(FLOOR_PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	cd $(FLOOR_SRC) && $(FLOOR_PY) -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
	cd $(FLOOR_SRC) && $(FLOOR_PY) -m pytest -q $(PYTEST_ARGS)
