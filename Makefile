# The README's two commands: `make run` (embedded demo, no services) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODEL_DIR := artifacts/model
DEFAULT_MODEL := $(MODEL_DIR)/turbofan_engine.onnx
SERVICES_DIR ?= $(CURDIR)/.services
export PM_SERVICES_DIR := $(SERVICES_DIR)

.PHONY: help install run train retrain eval-detector test test-unit services-up services-down backup restore health lint format bench bench-micro clean

help:
	@echo "make run            embedded demo: simulator in, console out (no services needed)"
	@echo "make test           start Kafka, PostgreSQL, Redis on 127.0.0.1 and run every test"
	@echo "make train          train, validate, export ONNX and register the model in MLflow"
	@echo "make retrain        challenger from PostgreSQL history vs the production model"
	@echo "make bench          end to end: Kafka -> flow -> PostgreSQL + Kafka (table, bench.json)"
	@echo "make bench-micro    per-stage micro-benchmarks (a table)"
	@echo "make eval-detector  anomaly detector: simulator faults, NAB dev set, joint pump fault (EVAL_ARGS=...)"
	@echo "make services-up    start the local services (data kept; FRESH=1: empty); services-down stops them"
	@echo "make backup         database + recovery store + MLflow into backups/pm-backup-<time>.tar.gz"
	@echo "make restore        ARCHIVE=... restore one (see README: Backup and restore)"
	@echo "make lint           ruff check, ruff format --check, mypy"

$(STAMP): pyproject.toml
	@v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	 case $$v in 3.11|3.12) ;; *) echo "need Python 3.11 or 3.12, found $$v ($(PYTHON))"; exit 1;; esac
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

$(DEFAULT_MODEL): | $(STAMP)
	@echo "no model at $(MODEL_DIR): training the default demo model (about a minute)"
	$(PY) -m models.train --quick --no-mlflow --out $(MODEL_DIR)

run: $(STAMP) $(DEFAULT_MODEL)
	$(PY) -m bytewax.run flows.main

train: $(STAMP)
	$(PY) -m models.train --out $(MODEL_DIR)

retrain: $(STAMP)
	$(PY) -m models.retrain --database-url "$${PM_DATABASE_URL:?set PM_DATABASE_URL to the history database}"

eval-detector: $(STAMP)
	$(PY) -m models.detector_eval $(EVAL_ARGS)

# Keeps the data of the last run; `make services-up FRESH=1` starts empty services.
services-up:
	infra/scripts/services.sh up $(if $(filter 1,$(FRESH)),--fresh)

services-down:
	infra/scripts/services.sh down

# make backup [BACKUP_ARGS="--out DIR ..."]; make restore ARCHIVE=backups/pm-backup-....tar.gz
backup: $(STAMP)
	infra/scripts/backup.sh $(BACKUP_ARGS)

restore: $(STAMP)
	infra/scripts/restore.sh "$${ARCHIVE:?set ARCHIVE=path/to/pm-backup-....tar.gz}" $(RESTORE_ARGS)

health:
	infra/scripts/health-check.sh

test: $(STAMP) services-up
	infra/scripts/chromium.sh ensure
	set -a && . "$(SERVICES_DIR)/env" && set +a && PM_REQUIRE_SERVICES=1 $(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration"

bench: $(STAMP) $(DEFAULT_MODEL) services-up
	set -a && . "$(SERVICES_DIR)/env" && set +a && $(PY) -m tests.bench_e2e $(BENCH_ARGS)

bench-micro: $(STAMP) $(DEFAULT_MODEL)
	if [ -f "$(SERVICES_DIR)/env" ]; then set -a && . "$(SERVICES_DIR)/env" && set +a; fi; \
	$(PY) -m tests.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy models alerting connectors jobs flows

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf artifacts out .pytest_cache
