# M365 Responder: `make drill` runs the default containment drill, `make test` the checks.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install drill test lint typecheck unit bench mutation clean browser

$(STAMP): requirements.lock.txt requirements.txt requirements-dev.txt pyproject.toml package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP)

drill: $(STAMP)
	$(BIN)/responder drill --scenario compromised-account

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

# Debian's Chromium for the end-to-end tests (Playwright drives it; it never downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

test: browser lint typecheck
	$(BIN)/pytest -q

# Schemathesis against the app's OpenAPI document and hypothesis against its webhooks, the
# functions served over loopback (about 5 minutes at 300 examples per operation).
FUZZ_EXAMPLES ?= 300
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q fuzz
	FUZZ_BODY_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/integration/test_fuzz_http.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Mutation testing of the safety and evidence core, module by module against the tests that
# cover it; prints the score per module (docs/testing.md). Takes minutes: not part of `make test`.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	$(BIN)/python bench/mutation.py --max-children 2

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache mutants
