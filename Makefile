# The README's commands. Every target sets up .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean-venv

setup: $(STAMP)

# torch first, from the CPU wheel, so nothing below pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m slurm.demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow or faults"

bench: $(STAMP)
	$(PY) -m analysis.bench --out runs/bench

clean-venv:
	rm -rf $(VENV)
