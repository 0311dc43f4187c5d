# Two commands for a fresh clone: `make train` and `make test`.
# CPU set-up pins the CPU wheel of torch; GPU users: install your own torch into .venv first
# (or set TORCH_SPEC="torch" / an empty TORCH_SPEC to keep the one you have).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
RECIPE ?= recipes/ml-100k/sasrec.toml
RECSYS_DATA ?= ../shared/datasets
export RECSYS_DATA

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test lint results clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/recsys train $(RECIPE)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check recsys tests benchmarks
	$(VENV)/bin/ruff format --check recsys tests benchmarks

results: $(STAMP)
	$(PY) benchmarks/render_results.py benchmarks/results --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) runs .cache
