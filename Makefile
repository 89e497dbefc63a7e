# The two commands: `make demo` and `make test`. `make airflow` shows the demo's data in Airflow's
# UI; `make stack` runs docker-compose.yaml's distributed stack without Docker. The rest are blocks.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins

.PHONY: demo test stack airflow venv airflow-db bench lint compose-config psql clean

demo: venv airflow-db
	$(PY) -m devstack.demo $(DEMO_ARGS)

test: venv airflow-db
	$(PY) -m pytest $(PYTEST_ARGS)

# docker-compose.yaml's services as processes on 127.0.0.1 (CeleryExecutor, 2 workers); Ctrl-C stops them.
stack: venv
	$(PY) -m devstack.run stack $(STACK_ARGS)

# api-server, scheduler, dag-processor, triggerer (LocalExecutor) on make demo's data; Ctrl-C stops them.
airflow: venv
	$(PY) -m devstack.run airflow $(AIRFLOW_ARGS)

bench: venv airflow-db
	$(PY) -m bench $(BENCH_ARGS)

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@echo "Installing the pinned requirements into $(VENV) (the first time takes a few minutes)..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Airflow's own metadata DB (SQLite under .airflow/, its dev default); idempotent.
airflow-db: venv
	@mkdir -p $(AIRFLOW_HOME)
	@$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	@$(PY) -m mls_sync_airflow.setup >> $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }

psql: venv
	$(PY) -m devstack.psql

lint: venv
	$(VENV)/bin/ruff check .

compose-config:
	docker-compose -f docker-compose.yaml config --quiet

clean:
	rm -rf .airflow .data bench/results test-artifacts
