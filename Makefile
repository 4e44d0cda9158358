# `make run` installs and starts everything; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3

# `make lint`: ruff and mypy strict, as STYLE.md asks.
.PHONY: install run test lint bench ab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,test,lint,bench]'
	touch $@

install: $(VENV)/.installed

run: install
	VENV=$(VENV) bash scripts/run-local.sh

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff format --check common web workers tests bench
	$(VENV)/bin/ruff check common web workers tests bench
	$(VENV)/bin/mypy

# `make bench`: every API.md section 12 scenario, direct and through llmq (~3 min).
bench: install
	$(VENV)/bin/python -m bench.run

# `make ab AB_ARGS='--base main --scenario capacity'`: the working tree against a
# revision on one scenario, alternating builds (bench/ab.py).
ab: install
	$(VENV)/bin/python -m bench.ab $(AB_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
