# Blindspot: every target sets up what it needs first (idempotent, fast the second time).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin

.PHONY: setup run test test-fresh test-unit lint bench kafka-up kafka-down clean fuzz

setup: $(VENV)/.setup-done
$(VENV)/.setup-done: scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $@

## run: the embedded pipeline (agent -> in-process -> chDB) with a live view. Ctrl-C stops and flushes.
run: setup
	$(BIN)/blindspot run $(ARGS)

## test: the whole suite, as root, against the real kernel, a real Kafka broker and the real engine.
test: setup
	bash scripts/test.sh $(ARGS)

## test-fresh: the suite as a newcomer meets it: a fresh clone of HEAD in a temporary folder, all caches
## empty, then `make test`; fails if any process it started is still running afterwards.
test-fresh:
	bash scripts/test-fresh.sh $(ARGS)

test-unit: setup
	$(BIN)/pytest -q -m "not root and not kafka" tests

lint: setup
	$(BIN)/ruff check agent contract ingest blindspot tests bench grafana
	$(BIN)/lint-imports  # the layers: [tool.importlinter] in pyproject.toml
	$(BIN)/mypy

## fuzz: the fuzz targets (tests/fuzz) in a long randomised pass; `make test` runs a short fixed one.
## FUZZ_EXAMPLES=N examples per target (default 20000).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q --timeout=0 tests/fuzz $(ARGS)

## bench: performance scripts; each prints ratios against a baseline measured in the same run.
bench: setup
	bash scripts/bench.sh

## kafka-up / kafka-down: the local single-node Kafka broker (127.0.0.1:19092) for fleet mode.
kafka-up:
	bash scripts/kafka.sh start
kafka-down:
	bash scripts/kafka.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
