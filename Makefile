# LLM inference, opened up. Two commands (see README.md):
#   make lab    set up .venv and the default model, then start JupyterLab on notebooks/
#   make test   set up, then run the unit tests and nbval on every notebook
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# One source of truth for the torch pin: pyproject.toml.
TORCH_VERSION := $(shell sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)
# The CPU index gives torch without CUDA (PyPI's Linux build pulls several GB of CUDA libraries).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
WHEELHOUSE ?=
PORT ?= 8888
LAB_ARGS ?=
# Containers (Docker, some JupyterHubs, CI) often run as root, which JupyterLab refuses by default.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
NOTEBOOKS ?= notebooks/*.ipynb

ifneq ($(WHEELHOUSE),)
PIP_FROM := --no-index --find-links $(abspath $(WHEELHOUSE))
TORCH_FROM := $(PIP_FROM)
PREPARE_FROM := --wheelhouse $(abspath $(WHEELHOUSE))
else
PIP_FROM :=
TORCH_FROM := --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple --retries 1
PREPARE_FROM :=
endif

# The environment tests run in and stored outputs are made in: Hub offline, quiet libraries.
TEST_ENV := PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0 \
	PYDEVD_DISABLE_FILE_VALIDATION=1 JUPYTER_PLATFORM_DIRS=1
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: setup lab test unit nbval notebooks student bench clean

setup: $(VENV)/.installed
	$(PY) -m workshop_utils prepare $(PREPARE_FROM)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (3.11 recommended): install it, or run make PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_FROM) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet $(PIP_FROM) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet $(PIP_FROM) -e ".[dev]"
	touch $@

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(ALLOW_ROOT) $(LAB_ARGS)

test: setup $(VENV)/.installed-dev
	$(MAKE) unit nbval

unit:
	$(TEST_ENV) $(PY) -m pytest tests

nbval:
	$(TEST_ENV) $(PY) -m pytest $(NBVAL) $(NOTEBOOKS)

# Re-execute notebooks in place (refreshes the stored outputs), in the test environment.
notebooks: setup
	$(TEST_ENV) $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=600 --ExecutePreprocessor.record_timing=False $(NOTEBOOKS)

student: setup
	$(PY) -m workshop_utils student student

bench: setup
	$(PY) -m workshop_utils bench --json artifacts/bench.json

clean:
	rm -rf $(VENV) student artifacts
