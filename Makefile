# Feature Catalog Console. `make run` serves the console with a worker; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
export DATA_DIR ?= $(CURDIR)/var

.PHONY: run test install migrate bootstrap lint typecheck pytest bench docs clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

install: $(BIN)/activate

migrate: install
	$(BIN)/python manage.py migrate --noinput

bootstrap: migrate
	$(BIN)/python manage.py load_catalog
	$(BIN)/python manage.py create_demo_users

run: bootstrap
	PORT=$(PORT) BIN=$(BIN) ./scripts/run-console.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

pytest: install
	$(BIN)/pytest --cov --cov-report=term --cov-report=xml:var/coverage.xml $(PYTEST_ARGS)

test: lint typecheck pytest

docs: install
	$(BIN)/python manage.py generate_spec_doc

bench: install
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/feature_list_bench.py

clean:
	rm -rf $(VENV) var
