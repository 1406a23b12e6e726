# Feature Catalog Console. `make run` serves the console with a worker; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
export DATA_DIR ?= $(CURDIR)/var

.PHONY: run test install migrate bootstrap lint typecheck pytest pytest-services pytest-embedded emulator bench soak docs clean

$(BIN)/activate: pyproject.toml
	./scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

install: $(BIN)/activate

migrate: install
	$(BIN)/python manage.py migrate --noinput

bootstrap: migrate
	$(BIN)/python manage.py load_catalog
	$(BIN)/python manage.py load_demo_data --env dev
	$(BIN)/python manage.py create_demo_users

run: bootstrap
	PORT=$(PORT) BIN=$(BIN) ./scripts/run-console.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

# The suite on PostgreSQL and Redis (started when down), with coverage; then again on the embedded defaults
# (SQLite, filesystem broker) so both configurations stay working.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/fcc
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

# The BigQuery emulator lives in its own Python 3.13 venv (.venv-bqemu); CI must not skip its tests.
emulator:
	./scripts/bigquery-emulator-setup.sh

pytest-services: install emulator
	./scripts/services-up.sh
	mkdir -p var/test-services
	FCC_REQUIRE_EMULATOR=1 DATA_DIR=$(CURDIR)/var/test-services DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	$(BIN)/pytest --cov --cov-report=term --cov-report=xml:var/coverage.xml $(PYTEST_ARGS)

pytest-embedded: install emulator
	mkdir -p var/test-embedded
	env -u DATABASE_URL -u CELERY_BROKER_URL FCC_REQUIRE_EMULATOR=1 DATA_DIR=$(CURDIR)/var/test-embedded $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

pytest: pytest-services pytest-embedded

test: lint typecheck pytest

docs: install
	$(BIN)/python manage.py generate_spec_doc

BENCH_DAYS ?= 5
bench: install
	./scripts/services-up.sh
	$(BIN)/python bench/plan_bench.py
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/fcc_bench} $(BIN)/python bench/feature_list_bench.py
	$(BIN)/python bench/pit_bench.py --days $(BENCH_DAYS)
	$(BIN)/python bench/training_bench.py --days $(BENCH_DAYS)
	$(BIN)/python bench/backfill_bench.py --days 2
	$(BIN)/python bench/online_bench.py

# The fault tests repeated (broker and PostgreSQL restarts, a flaky BigQuery), with their figures in a table.
soak: install emulator
	./scripts/services-up.sh
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .venv-bqemu var
