# trainproof — the two commands: `make demo` and `make test`.
# Both set up .venv and node_modules idempotently: a stamp file records each install, and
# is only older than its inputs (pyproject.toml/setup.py, package.json/package-lock.json)
# when something really must be (re)installed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.trainproof-installed
NODE_STAMP := node_modules/.trainproof-installed
SYS_STAMP  := $(VENV)/.trainproof-system
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: demo test lint bench setup clean api-client

demo: setup
	$(BIN)/trainproof demo

test: setup $(SYS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/commitments.py

# TypeScript types of the API (api/client/schema.d.ts) from its OpenAPI document, for the
# fetch client in api/client/client.ts; `make test` checks that both compile.
api-client: setup
	$(BIN)/python -c "import json; from api.app import create_app; from api.db import make_engine, make_sessions; print(json.dumps(create_app(make_sessions(make_engine('sqlite://'))).openapi()))" > api/client/openapi.json
	node_modules/.bin/openapi-typescript api/client/openapi.json -o api/client/schema.d.ts
	node_modules/.bin/tsc -p api/client/tsconfig.json

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml setup.py protocol/_treehash.c replay/execute/_kernels.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

# PostgreSQL server binaries and headless Chromium for the API tests: installed from Debian
# packages when missing and possible, tried once (the tests that need them skip, saying why).
$(SYS_STAMP): scripts/system-deps.sh | $(PY_STAMP)
	@sh scripts/system-deps.sh
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund
	@touch $@

clean:
	rm -rf $(VENV) node_modules .build build *.egg-info
