# `make run` installs and starts everything; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,test]'
	touch $@

install: $(VENV)/.installed

run: install
	VENV=$(VENV) bash scripts/run-local.sh

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
