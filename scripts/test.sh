#!/usr/bin/env bash
# The README's test command: install dependencies, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
# Each test process gets one intra-op thread so that parallel tests do not oversubscribe.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${TEST_JOBS:-$(nproc)}"
