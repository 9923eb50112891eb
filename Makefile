# Quick start: `make demo` (merge generated checkpoints, verify, report) and
# `make test` (the test suite). Both create/refresh .venv and install ladle.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test

.PHONY: install demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q ".[$(EXTRAS)]"

demo: EXTRAS := test,harness
demo: install
	$(BIN)/ladle demo --workdir demo-work
	$(BIN)/ladle clip demo --out demo-work/clip

test: install
	$(BIN)/python -m ruff check python tests benchmarks
	$(BIN)/python -m pytest tests --durations=15 -q
	$(BIN)/python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-only
	$(BIN)/python benchmarks/compare.py --size 2GB

clean:
	rm -rf build $(VENV) demo-work bench-work
