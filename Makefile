# The README's two commands: `make demo` and `make test`. Both build the venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
DB     := $(DEMO)/kvtrace.duckdb

.PHONY: demo test venv lint typecheck pytest clean

$(BIN)/kvtrace: pyproject.toml setup.py ingest/_otlpfast.c ingest/_kvfast.c ingest/_cbuf.h
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/kvtrace

demo: venv
	bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# three workers (pytest-xdist) on two cores: a test waiting on a server, a browser or a timeout leaves
# a core to the others (this box: 629 s with two, 609 s with three); the spark tests share one worker
# and one SparkSession (tests/conftest.py; two spark groups on two workers took 666 s: one more test
# lake and JVM on a run that is CPU-bound)
PYTEST_WORKERS ?= 3

pytest: venv
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(DEMO)
