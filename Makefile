# The two commands a user needs: `make demo` and `make test` (`make test-all` adds the slow tier).
# Both create (or reuse) .venv/ and install the pinned dependencies first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-all test-avx2 venv clean reliability

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: pip takes them from the local wheel cache when the machine has one.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps esdft-segmetric==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/discorep demo

# Two tiers (docs/testing.md): `test` is the fast one (about 10 min on 2 cores; what CI runs first),
# `test-slow` the end-to-end tier marked `slow` (demo, study, compile, long DDP runs; CI runs it second),
# `test-all` both in one run.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q

# The fast tier again with AVX2 kernels only (PyTorch's, oneDNN's, MKL's), as an AVX2-only CPU runs it: a
# test that compares floats bit-exactly across kernels fails here (docs/testing.md, "Floats and exactness").
test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q -m "not slow"

# The reliability suite alone; rewrites its results table in docs/reliability_results.md.
reliability: $(STAMP)
	DISCOREP_RELIABILITY_TABLE=docs/reliability_results.md $(PY) -m pytest -q tests/reliability

clean:
	rm -rf $(VENV) runs data .pytest_cache
