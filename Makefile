# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv and install what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before the package so pip never pulls an unpinned build:
# on a CPU-only machine with a local CPU wheel this is seconds; on a GPU machine
# PyPI's Linux wheel of the same version is the CUDA build. Override with
# `make install TORCH="torch==X.Y"` for another version.
TORCH ?= torch==2.13.0

# A second venv with TransformerLens 3.x, whose HookedTransformer 4.x removed: the CI's second leg
# runs the tests that build HookedTransformers and self-booted bridges there.
TL3_VENV ?= .venv-tl3
TL3_PY := $(TL3_VENV)/bin/python
TL3_TESTS ?= tests/test_user_models.py tests/test_processed.py tests/test_families.py tests/test_gains.py::test_equals_seed_method tests/test_readings.py::test_hooked_transformer_reads_the_same_readings

.PHONY: install demo test lint test-tl3 notebooks docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/funnel-tl run --out runs/demo

test: install
	$(PY) -m pytest -q

# ruff (lint and format, settings in pyproject.toml) on the code, and mypy on funnel_tl/.
lint: install
	$(PY) -m ruff check funnel_tl tests benchmarks scripts
	$(PY) -m ruff format --check funnel_tl tests benchmarks scripts
	$(PY) -m mypy

$(TL3_VENV)/.installed: pyproject.toml
	test -x $(TL3_PY) || $(PYTHON) -m venv $(TL3_VENV)
	$(TL3_PY) -c "import torch" 2>/dev/null || $(TL3_PY) -m pip install -q "$(TORCH)"
	$(TL3_PY) -m pip install -q -e ".[dev]" "transformer-lens>=3.9,<4"
	touch $@

test-tl3: $(TL3_VENV)/.installed
	$(TL3_PY) -c "from importlib.metadata import version as v; assert v('transformer-lens').startswith('3.'), v('transformer-lens')"
	$(TL3_PY) -m pytest -q $(TL3_TESTS)

# Executes every notebooks/*.ipynb with nbclient (offline; outputs are not saved back).
notebooks: install
	$(PY) -m pytest -q tests/test_notebooks.py

# The documentation site (mkdocs.yml, pages in docs/) into site/; --strict turns every warning
# (a broken link, a name mkdocstrings cannot resolve) into a failure.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Both regimes: compute-bound (Pythia-160m shape, batch 8) and launch-bound (4-layer d_model-64, batch 32).
bench: install
	$(PY) benchmarks/bench_gains.py --case compute
	$(PY) benchmarks/bench_gains.py --case launch

clean:
	rm -rf $(VENV) $(TL3_VENV) runs site .pytest_cache
