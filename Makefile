# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test test-all bench ui serve prefect-server team-stack lint setup

setup: $(STAMP)

# pip (not uv/poetry) so torch==2.13.0 comes from the CPU wheel on this disk;
# constraints.txt pins the whole resolved set, so every fresh install is the same.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/sweepflow run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

ui: $(STAMP)
	$(BIN)/sweepflow ui $(ARGS)

# Scheduled runs: needs schedule.cron or schedule.interval, e.g. ARGS='schedule.cron="0 3 * * *"'.
serve: $(STAMP)
	$(BIN)/sweepflow serve $(ARGS)

# A local Prefect server and UI on http://127.0.0.1:4200 (state in ~/.prefect or PREFECT_HOME),
# without telemetry. In other shells: export PREFECT_API_URL=http://127.0.0.1:4200/api
prefect-server: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/prefect server start --host 127.0.0.1 --port 4200

# Team mode on this machine: PostgreSQL databases (SWEEPFLOW_PG_URL, default
# postgresql://postgres@127.0.0.1:5432), an MLflow server and a Prefect server on them;
# prints the exports and the `sweepflow run` overrides to use (docs/team-mode.md).
team-stack: $(STAMP)
	$(BIN)/sweepflow stack $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
