#!/usr/bin/env bash
# GPU check of the merge methods on the CUDA backend (issue 16), for a machine with a
# CUDA GPU, nvcc, and a Python with this project's test dependencies, torch (CUDA
# build) and pybind11. Run from the repository root:
#     bash benchmarks/gpu_methods_check.sh          # PYTHON=..., CUDA_ARCH=90 to override
# 1. builds _core + _cuda (LADLE_CUDA=ON) into build/gpu-check and stages the package;
# 2. runs tests/test_cuda.py and tests/test_cuda_kinds.py on the device: every test
#    must pass, none may skip for want of a GPU (the emulator cases run too);
# 3. benchmarks each method pass's kernel against device-to-device copy bandwidth
#    and checks every method's GPU output byte for byte against the CPU engine.
# Every step has a timeout; the whole check stays under 8 minutes.
set -euo pipefail
PY=${PYTHON:-python3}
BUILD=${BUILD:-build/gpu-check}
ARCH=${CUDA_ARCH:-90}
start=$(date +%s)

timeout 120 cmake -S . -B "$BUILD" -DLADLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DLADLE_PYTHON=ON -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" > "$BUILD.configure.log"
timeout 180 cmake --build "$BUILD" -j"$(nproc)" > "$BUILD.build.log"
PKG="$BUILD/pkg"
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r python/ladle "$PKG/"
rm -f "$PKG"/ladle/*.so && cp "$BUILD"/_core*.so "$BUILD"/_cuda*.so "$PKG/ladle/"
export PYTHONPATH="$PWD/$PKG"
"$PY" -c "import ladle; assert ladle.cuda_available(), ladle.cuda_info(); print(ladle.cuda_info())"
echo "== built in $(( $(date +%s) - start )) s"

timeout 150 "$PY" -m pytest tests/test_cuda.py tests/test_cuda_kinds.py -q -ra -p no:cacheprovider \
  | tee "$BUILD.tests.log"
if grep -q "no usable CUDA GPU" "$BUILD.tests.log"; then
  echo "FAIL: GPU tests were skipped"; exit 1
fi
echo "== tests done at $(( $(date +%s) - start )) s"

timeout 150 "$PY" benchmarks/bench_cuda_methods.py --repeat 5
echo "== all done in $(( $(date +%s) - start )) s"
