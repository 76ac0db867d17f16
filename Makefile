# Set-up and the two entry points of the README: `make demo` and `make test`.
# TORCH picks the torch build pip installs first (a CPU build on a CPU machine keeps the install small).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup system-deps bench-setup demo test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-deps

system-deps:
	bash scripts/system_deps.sh

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

bench-setup: $(STAMP) system-deps
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	command -v wrk >/dev/null || (apt-get install -y wrk || sudo apt-get install -y wrk)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

test-all: $(STAMP) system-deps
	$(BIN)/python -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check retrieval index serve tests bench

clean:
	rm -rf work
