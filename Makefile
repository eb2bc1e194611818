# Phoenyra BESS — every target bootstraps .venv on a fresh machine (needs only python3 + make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install whenever the project's dependencies change.
STAMP  := $(VENV)/.installed

DEMO_MODBUS_PORT ?= 5020
DEMO_CONTROL_PORT ?= 5021

.PHONY: demo test lint protos bench clean help

help:
	@echo "make demo    run the system on embedded defaults and print its URLs"
	@echo "make test    install what the tests need and run them"
	@echo "make lint    ruff + mypy"
	@echo "make protos  regenerate the EdgeLink stubs from protos/bess/v1/*.proto"
	@echo "make bench   run the benchmarks in bench/ and print their figures"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[edge,hil,plane,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python deploy/demo/demo.py --modbus-port $(DEMO_MODBUS_PORT) \
		--control-port $(DEMO_CONTROL_PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy hil edge_agent control_plane

protos: $(STAMP)
	$(BIN)/python protos/generate.py

bench: $(STAMP)
	$(BIN)/python -m bench.modbus_reads
	$(BIN)/python -m bench.outbox_append
	$(BIN)/python -m bench.agent_footprint
	$(BIN)/python -m bench.exchange_orders
	$(BIN)/python -m bench.telemetry_ingest
	$(BIN)/python -m bench.forecast_backtest
	$(BIN)/python -m bench.price_parse
	$(BIN)/python -m bench.optimiser
	$(BIN)/python -m bench.risk_var
	$(BIN)/python -m bench.billing

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
