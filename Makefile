# The README's commands. Every target sets up .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Where the torch wheel comes from. Default: PyTorch's CPU index (PyPI's Linux
# wheel is the CUDA build, several GB). `make setup TORCH_INDEX=` leaves pip's
# own configuration alone (PyPI: CUDA on Linux; or a mirror / local wheel store
# set in pip.conf); `TORCH_INDEX=https://download.pytorch.org/whl/cu126` picks a
# CUDA version. Pip's configured find-links and extra indexes still apply.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FROM = $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))

.PHONY: setup demo test lint bench clean-venv

setup: $(STAMP)

# torch first and alone (--no-deps): only its wheel decides CPU or CUDA, and a
# torch index need not serve torch's plain-Python dependencies (filelock,
# sympy...), which the project install below brings from the usual index. The
# installed torch satisfies every later requirement, so nothing swaps it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps torch==$(TORCH_VERSION) $(TORCH_FROM)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m slurm.demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow or faults" --durations=15

bench: $(STAMP)
	$(PY) -m analysis.bench --out runs/bench

clean-venv:
	rm -rf $(VENV)
