# The two commands of the README do all the set-up on a machine that has only python3:
#   make demo   seeds the embedded dev server, syncs a lake, renders the balance-timeline report
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Headless Chromium checks rendered reports; it comes from Debian's packages.
system-deps:
	@bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/esworkbench demo

lint: $(STAMP)
	$(BIN)/ruff check esworkbench tests bench
	$(BIN)/ruff format --check esworkbench tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy esworkbench

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) data/lake reports .pytest_cache .mypy_cache .ruff_cache .hypothesis
