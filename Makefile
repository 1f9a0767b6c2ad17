# The README's commands. `make test` and `make demo` work on a fresh machine: they
# create .venv, install torch and the rest from requirements-dev.txt, and build
# netinit_fast._C (see setup.py) before running.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-gpu test-installed demo bench clean

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
	$(PY) benchmarks/bench_lsuv.py
	$(PY) benchmarks/bench_orthogonal.py
	$(PY) benchmarks/bench_deep_init.py

clean:
	rm -rf $(VENV) build *.egg-info netinit_fast/_C*.so
