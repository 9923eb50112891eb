# Quick start: `make demo` (merge generated checkpoints, verify, report) and
# `make test` (the test suite). Both create/refresh .venv and install ladle.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test

.PHONY: install demo test test-cpu-only bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q ".[$(EXTRAS)]"

demo: install
	$(BIN)/ladle demo --workdir demo-work

test: install
	$(BIN)/python -m ruff check python tests benchmarks
	$(BIN)/python -m pytest tests --durations=15 -q
	$(BIN)/python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider

# CPU-only build (LADLE_CUDA=OFF) in its own build dir, smoke-tested from a staged
# copy of the package: no ladle._cuda may be built, the CUDA tests must skip and
# the CPU merges must still be bit-exact. Uses the test deps of `make install`.
CPU_BUILD ?= build/cpu-only
test-cpu-only: $(BIN)/python
	$(BIN)/python -m pip install -q pybind11==3.1.0
	cmake -S . -B $(CPU_BUILD) -DLADLE_CUDA=OFF -DLADLE_PYTHON=ON -DCMAKE_BUILD_TYPE=Release \
	  -DPython_EXECUTABLE=$(abspath $(BIN)/python) -Dpybind11_DIR=$$($(BIN)/python -m pybind11 --cmakedir)
	cmake --build $(CPU_BUILD) -j2
	! ls $(CPU_BUILD)/_cuda*.so 2>/dev/null
	rm -rf $(CPU_BUILD)/pkg && mkdir -p $(CPU_BUILD)/pkg && cp -r python/ladle $(CPU_BUILD)/pkg/
	rm -f $(CPU_BUILD)/pkg/ladle/*.so && cp $(CPU_BUILD)/_core*.so $(CPU_BUILD)/pkg/ladle/
	PYTHONPATH=$(CPU_BUILD)/pkg $(BIN)/python -c "import ladle; assert not ladle.build_info()['cuda_compiled']; assert not ladle.cuda_available()"
	PYTHONPATH=$(CPU_BUILD)/pkg $(BIN)/python -m pytest tests/test_cuda.py tests/test_merge_exact.py -q -p no:cacheprovider

bench: install
	$(BIN)/python -m pytest benchmarks --benchmark-only
	$(BIN)/python benchmarks/compare.py --size 2GB

clean:
	rm -rf build $(VENV) demo-work bench-work
