#!/usr/bin/env bash
# The whole test suite again, built with AddressSanitizer + UndefinedBehaviorSanitizer on our
# code (libtorch, gRPC and Abseil come uninstrumented from Debian). Leak detection is off:
# libtorch and gRPC keep process-lifetime allocations that LeakSanitizer reports as leaks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR="${SANITIZE_BUILD_DIR:-build-asan}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DANCHORSERVE_SANITIZE=address,undefined -DANCHORSERVE_BUILD_BENCH=OFF
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
export ASAN_OPTIONS="detect_leaks=0:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1
# `timing` tests (overload) assert latencies only a full-speed build can meet.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${TEST_JOBS:-$(nproc)}" -LE timing
