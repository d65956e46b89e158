# spb-energy: `make demo` runs a community on this machine, `make test` runs every test,
# `make check` runs the linters and the type checker (CI runs it before the tests),
# `make bench` prints the benchmarks, `make sim` runs the consensus simulation. Each sets up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast check format bench sim chaos venv mosquitto browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "spb-energy needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version)"; exit 1; }
	@# Debian ships venv's ensurepip separately (python3-venv); install it when we may.
	@$(PYTHON) -m venv $(VENV) 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	       && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } \
	  || { echo "cannot create a venv: run 'sudo apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

mosquitto:
	@if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing mosquitto with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else echo "make test needs Mosquitto: run 'sudo apt-get install mosquitto'"; exit 1; fi

# The dashboard's browser tests drive Debian's chromium through playwright (tests/support/browser.py):
# playwright's own browser download is never used.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make test needs Chromium: run 'sudo apt-get install chromium'"; exit 1; fi

demo: venv
	$(BIN)/spb-deploy demo --day

test: venv mosquitto browser
	$(BIN)/python -m pytest -q

# The fast lane: no broker, no processes (everything under tests/system is `integration`).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not integration"

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Rewrites the tree in the project's style: the fixes ruff can make safely, then the formatter.
format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv mosquitto
	$(BIN)/python bench/protocol.py
	$(BIN)/python bench/clearing.py
	$(BIN)/python bench/market.py
	$(BIN)/python bench/spb_paper.py
	$(BIN)/python bench/saturation.py
	$(BIN)/python bench/meter.py
	$(BIN)/python bench/consensus.py
	$(BIN)/python -m bench.flood
	$(BIN)/python -m bench.queues
	$(BIN)/python bench/ledger_memory.py
	$(BIN)/python bench/ledger_memory.py --market 1000,100000
	$(BIN)/python -m bench.monitor
	$(BIN)/python bench/statement.py

# The consensus simulation: `make sim SEED=n` replays one seed exactly, `make sim` runs SEEDS from FIRST;
# MARKET=1 runs them on a market chain with market traffic (ledger.sim_market).
SEEDS ?= 500
FIRST ?= 0
sim: venv
	$(BIN)/python -m ledger.sim $(if $(SEED),--seed $(SEED),--seeds $(SEEDS) --first $(FIRST))$(if $(MARKET), --market)

# The community on this machine under a seeded schedule of faults (deploy/chaos.py): one table,
# exit 0 only if money, trades, readings, heads and audits held. `make chaos SEED=n` replays a seed.
MINUTES ?= 5
chaos: venv mosquitto
	$(BIN)/python -m deploy.chaos --seed $(or $(SEED),1) --minutes $(MINUTES)

clean:
	rm -rf $(VENV) demo-community .pytest_cache .hypothesis tests/artifacts
