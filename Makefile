# `make run` installs and starts everything; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3

# `make lint`: ruff and mypy strict, as STYLE.md asks.
.PHONY: install lock run test lint fuzz bench ab clean

# Exactly the versions in requirements.lock, then llmq itself.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# `make lock`: resolve the newest versions pyproject.toml admits into the lock files
# (requirements-runtime.lock, what the Dockerfile installs, within requirements.lock).
LOCK = $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 -q
lock: install
	$(LOCK) --all-extras --upgrade -o requirements.lock
	$(LOCK) -c requirements.lock -o requirements-runtime.lock
	rm -f $(VENV)/.installed

run: install
	VENV=$(VENV) bash scripts/run-local.sh

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff format --check common web workers tests bench
	$(VENV)/bin/ruff check common web workers tests bench
	$(VENV)/bin/mypy

# `make fuzz`: the property-based fuzz of every JSON route with many more examples
# (the "fuzz" profile; `make test` runs the "ci" profile's few).
fuzz: install
	$(VENV)/bin/python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz -q $(PYTEST_ARGS)

# `make bench`: every API.md section 12 scenario, direct and through llmq, the
# bulk batch and its memory run, and the retention run (~9 min on 2 cores).
bench: install
	$(VENV)/bin/python -m bench.run

# `make ab AB_ARGS='--base main --scenario capacity'`: the working tree against a
# revision on one scenario, alternating builds (bench/ab.py).
ab: install
	$(VENV)/bin/python -m bench.ab $(AB_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
