# The two commands of the README: `make serve` and `make test`.
# Each sets up what it needs (a virtual environment, node packages) on a fresh
# Debian machine with Python 3.11, then runs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve serve-setup test lint types unit setup node-deps system-deps bench js-test

# The virtual environment, with a current pip. Order-only for the targets below: .venv's
# python is a link whose date is the system's, not when the venv was made.
$(BIN)/python:
	@echo "== make: creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "== make: upgrading pip in $(VENV)"
	$(BIN)/python -m pip install --quiet --upgrade pip

# What the server needs, and only that: backchannel and its two dependencies (httptools,
# PyJWT with cryptography). The accelerator is built if a C compiler is there; the server
# runs without it.
$(BIN)/.installed-serve: pyproject.toml setup.py src/backchannel/protocol/_speedups.c | $(BIN)/python
	@echo "== make: installing backchannel and what the server needs (pip install -e .)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

serve-setup: $(BIN)/.installed-serve

# Everything the tests need (the 'test' extra holds the server's needs too, so this also
# stands for serve-setup). gcc builds the accelerator (the install goes on without it,
# but CI tests it).
$(BIN)/.installed: pyproject.toml setup.py src/backchannel/protocol/_speedups.c | $(BIN)/python
	@command -v gcc >/dev/null || (echo "== make: installing gcc" && apt-get update && apt-get install -y gcc)
	@echo "== make: installing backchannel with the test toolchain (pip install -e '.[test]'): a few minutes the first time"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(BIN)/.installed-serve

setup: $(BIN)/.installed

# node and npm run the interop peers (node's `ws`); Debian's Chromium runs the browser
# tests (driven by Playwright, which downloads no browser of its own); the Redis broker's
# tests start Debian's redis-server themselves, on a free loopback port; the Redis Cluster
# tests make their cluster with redis-cli (Debian's redis-tools).
system-deps:
	@missing=""; \
	for pair in node:nodejs npm:npm chromium:chromium redis-server:redis-server redis-cli:redis-tools; do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

node-deps: system-deps tests/interop/node_modules/.installed

tests/interop/node_modules/.installed: tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --no-audit --no-fund --silent
	touch $@

# The demo chat is on only because it is asked for here (--demo): never in production.
serve: serve-setup
	@echo "== make: starting backchannel serve --demo on http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	$(BIN)/backchannel serve --demo --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

types: setup
	$(BIN)/mypy --strict src

# The browser client's unit tests: node's own test runner, no dependencies.
js-test: system-deps
	cd js && node --test test/

# The whole suite runs twice: on the compiled accelerator, then on the pure-Python path
# that runs where it could not be built (docs/design.md, "The accelerator").
test: setup node-deps lint types js-test
	$(BIN)/pytest $(PYTEST_ARGS)
	BACKCHANNEL_NO_EXTENSIONS=1 $(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks: backchannel against websockets, aiohttp and picows, then the hub against
# python-socketio and node's socket.io (benchmarks/README.md).
# `make bench BENCH_ARGS=--quick` for a shorter run.
$(BIN)/.bench-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# The hub benchmark's node parts: node's socket.io and the load generator (benchmarks/README.md).
benchmarks/node_modules/.installed: benchmarks/package.json benchmarks/package-lock.json | system-deps
	cd benchmarks && npm ci --no-audit --no-fund --silent
	touch $@

# Then the hub against python-socketio and node's socket.io; `--quick` in BENCH_ARGS
# reaches it too, its other options go in HUB_BENCH_ARGS.
HUB_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench: setup $(BIN)/.bench-installed benchmarks/node_modules/.installed
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.hub $(HUB_BENCH_ARGS)
