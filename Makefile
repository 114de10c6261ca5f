# Two entry points that each do the whole set-up on a fresh machine:
#   make demo   -- fetch the example data and run the main job on it
#   make test   -- run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.xraysyn-installed

.PHONY: demo test test-slow bench weights install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first, so no dependency resolution can pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xraysyn demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

weights: $(STAMP)
	scripts/make_weights.sh

bench: $(STAMP)
	$(PY) benchmarks/projector.py --device cpu

clean:
	rm -rf $(VENV) out .pytest_cache
