# trainproof — the two commands: `make demo` and `make test`.
# Both set up .venv and node_modules idempotently: a stamp file records each install, and
# is only older than its inputs (pyproject.toml/setup.py, package.json/package-lock.json)
# when something really must be (re)installed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.trainproof-installed
NODE_STAMP := node_modules/.trainproof-installed
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: demo test lint bench setup clean

demo: setup
	$(BIN)/trainproof demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/commitments.py

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml setup.py protocol/_treehash.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund
	@touch $@

clean:
	rm -rf $(VENV) node_modules .build build *.egg-info
