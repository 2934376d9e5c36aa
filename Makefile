# Conveyor: `make serve` to run the server, `make test` to run the test suite.
# Everything goes into .venv; `make install` is idempotent and is what the others call.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install serve test unit integration lint bench perf-analyzer prometheus proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,proto,bench,train,publish]"
	touch $(STAMP)

perf-analyzer: install
	PYTHON=$(BIN)/python bash benchmarks/install_perf_analyzer.sh

# Debian's prometheus package (prometheus, promtool) for the tests; its service is not started.
prometheus:
	bash tests/tools/install_prometheus.sh

# The first run also trains the digits MLP into the default (example) repository, a few
# seconds, so that a newcomer sees training, export and serving in one command.
serve: install
	$(BIN)/conveyor train digits --if-missing
	$(BIN)/conveyor serve $(ARGS)

test: install perf-analyzer prometheus lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install perf-analyzer prometheus
	$(BIN)/python -m pytest -q tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install perf-analyzer
	$(BIN)/python benchmarks/http_grpc.py $(ARGS)

proto: install
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
