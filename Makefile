# Two commands for users: `make quickstart` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-fast test-floor lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch goes first: without CUDA the CPU build is installed so no CUDA wheels are pulled in later.
$(STAMP): $(PY) pyproject.toml
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install --quiet "torch>=2.6"; \
	else \
		$(PIP) install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/symnoise quickstart --fresh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q

# The inner loop: everything but the tests marked slow (multi-process runs, installs, whole-command pipelines).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q -m "not slow"

# The declared version floors, proven: every dependency at the lowest version pyproject.toml allows (torch
# excepted), in a venv of its own (.venv-floor), running the tests marked `floor`.
test-floor:
	tools/test_floors.sh

# Lint, formatting and structure (no import circle, no module over 500 lines); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples tools
	$(VENV)/bin/ruff format --check src tests benchmarks examples tools
	$(VENV)/bin/python tools/check_structure.py

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples tools

clean:
	rm -rf $(VENV) runs build *.egg-info
