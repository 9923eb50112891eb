# Quick start: `make demo` (merge generated checkpoints, verify, report) and
# `make test` (the test suite). Both create/refresh .venv and install ladle.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test

.PHONY: install demo test test-cpu-only bench lint clean sanitize fuzz fuzz-ci

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q ".[$(EXTRAS)]"

demo: EXTRAS := test,harness
demo: install
	$(BIN)/ladle demo --workdir demo-work
	$(BIN)/ladle clip demo --out demo-work/clip

test: install sanitize
	$(BIN)/python -m ruff check python tests benchmarks tools
	LADLE_TEST_DRIVER=$(abspath build/sanitize/ladle_test_driver) \
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

# ASan+UBSan build of the core and the C++ test driver (tests/cpp), run over the
# attack corpus; tests/test_attacks.py runs it again when it exists.
sanitize:
	cmake -S . -B build/sanitize -DLADLE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/sanitize --target ladle_test_driver -j2
	build/sanitize/ladle_test_driver --attacks tests/data/attacks --valid tests/data/fuzz/seeds

# libFuzzer on the header parser (needs clang: apt-get install -y clang). FUZZ_SECONDS
# bounds the run; crashes land in build/fuzz/artifacts: copy them to
# tests/data/fuzz/regressions. `make fuzz-ci` is the seconds-long CI variant.
FUZZ_SECONDS ?= 600
fuzz:
	cmake -S . -B build/fuzz -DLADLE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ >/dev/null
	cmake --build build/fuzz --target fuzz_header -j2
	mkdir -p build/fuzz/corpus build/fuzz/artifacts
	cp tests/data/fuzz/seeds/* tests/data/fuzz/regressions/* tests/data/attacks/*.safetensors \
	  build/fuzz/corpus/
	build/fuzz/fuzz_header build/fuzz/corpus -dict=csrc/fuzz/header.dict -max_len=4096 \
	  -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=build/fuzz/artifacts/

fuzz-ci:
	@if command -v clang++ >/dev/null; then $(MAKE) fuzz FUZZ_SECONDS=20; \
	else echo "clang++ not found: libFuzzer run skipped (tests/test_fuzz.py fuzzes via hypothesis)"; fi
