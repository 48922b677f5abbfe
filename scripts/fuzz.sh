#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang-14, ASan + UBSan) into ${FUZZ_BUILD_DIR:-build-fuzz}
# and runs each for the given number of seconds over a scratch copy of its seed corpus
# (fuzz/corpus/<target>/ is never modified), one target at a time on one core. Prints
# target | seconds | execs | crashes | corpus, keeps crash inputs under <build>/fuzz-artifacts/,
# and exits non-zero if any target crashed, leaked, timed out or ran out of memory.
#
#   scripts/fuzz.sh            # 20 s per target
#   scripts/fuzz.sh 15         # CI
#   scripts/fuzz.sh 1200       # the long run recorded in docs/RELIABILITY.md
#   FUZZ_TARGETS="config tokenizer" scripts/fuzz.sh 60
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-20}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2
  exit 2
fi
BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
TARGETS=(${FUZZ_TARGETS:-request_validation config safetensors tokenizer session_decoder})

if ! command -v clang++-14 > /dev/null ||
   [ ! -f /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ]; then
  scripts/install-deps.sh
fi
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DANCHORSERVE_FUZZ=ON
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target \
  $(printf '%s_fuzzer ' "${TARGETS[@]}")

ARTIFACTS="$BUILD_DIR/fuzz-artifacts"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
# Leaks are checked (LeakSanitizer is on by default); a failed UBSan check aborts.
export ANCHORSERVE_FUZZ_DATA_DIR="$PWD/fuzz/data"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

rows=()
failed=0
for name in "${TARGETS[@]}"; do
  target="${name}_fuzzer"
  corpus="$SCRATCH/$target"
  mkdir -p "$corpus" "$ARTIFACTS/$target"
  cp fuzz/corpus/"$target"/* "$corpus"/
  log="$SCRATCH/$target.log"
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: the default, spelled out.
  status=0
  "$BUILD_DIR/bin/$target" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$target/" \
    > "$log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  found="$(find "$ARTIFACTS/$target" -type f \
             \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) \
             -newer "$log" | wc -l)"
  if [ "$status" -ne 0 ] || [ "$found" -ne 0 ]; then
    failed=1
    if [ "$found" -eq 0 ]; then
      # 72: libFuzzer stopped from outside (SIGINT/SIGTERM): an incomplete run, not a crash.
      [ "$status" -eq 72 ] && found="interrupted" || found="exit $status"
    fi
    echo "fuzz: $target FAILED ($found); its log:" >&2
    grep -v -e '^#' -e 'NEW_FUNC' "$log" | tail -60 >&2
  fi
  rows+=("$(printf '%-26s | %7s | %12s | %7s | %6s' "$target" "$SECONDS_PER_TARGET" \
            "${execs:-?}" "$found" "$(find "$corpus" -type f | wc -l)")")
done

printf '\n%-26s | %7s | %12s | %7s | %6s\n' target seconds execs crashes corpus
for row in "${rows[@]}"; do echo "$row"; done
total=0
for row in "${rows[@]}"; do
  n="$(echo "$row" | awk -F'|' '{gsub(/ /, "", $3); print $3}')"
  [[ "$n" =~ ^[0-9]+$ ]] && total=$((total + n))
done
echo "total executions: $total"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED; crash inputs are under $ARTIFACTS (reproduce: $BUILD_DIR/bin/<target> <input>)" >&2
  exit 1
fi
