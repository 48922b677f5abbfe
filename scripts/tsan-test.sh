#!/usr/bin/env bash
# The engine and server tests under ThreadSanitizer (docs/RELIABILITY.md, "ThreadSanitizer").
#
# Our code is instrumented; libtorch, gRPC, protobuf and Abseil come uninstrumented from Debian.
# Two things make that usable (tests/tsan/):
#  - every executable carries TSan-annotated absl::Mutex / CondVar / Notification that interpose
#    Debian's (gRPC's locks are absl::Mutex too), so hand-offs under those locks are seen;
#  - the server's own hand-offs through gRPC (a reactor given to StartWrite / Finish and given
#    back in OnWriteDone / OnDone) are annotated in server/service.cc.
# What remains unseen are the hand-offs inside gRPC (its completion queues and closures). So:
#  1. tsan_selftest: a real race must be reported, the same hand-off under an absl::Mutex or
#     absl::Notification must not (the annotations work, and do not hide races);
#  2. the engine, policy, metrics and config tests: no report at all;
#  3. the real server (grpc_e2e, then a 600-request soak) under TSan: no report with an access
#     in our code (tests/tsan/classify_reports.py); the reports inside gRPC are counted.
# Exit status 0 only if all three hold.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR="${TSAN_BUILD_DIR:-build-tsan}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DANCHORSERVE_SANITIZE=thread -DANCHORSERVE_BUILD_BENCH=OFF
fi
UNIT_TESTS=(engine_test policy_test metrics_test config_test)
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target tsan_selftest "${UNIT_TESTS[@]}" \
  anchorserve anchor-eval anchorserve_py_stubs
export OMP_NUM_THREADS=1
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
started=$SECONDS
failed=0
reports() { grep -c "WARNING: ThreadSanitizer" "$1" || true; }

echo "== 1. self-check"
TSAN_OPTIONS="halt_on_error=0 exitcode=0" "$BUILD_DIR/tests/tsan_selftest" race \
  > "$LOGS/race.log" 2>&1
for mode in mutex notification; do
  TSAN_OPTIONS="halt_on_error=0 exitcode=0" "$BUILD_DIR/tests/tsan_selftest" "$mode" \
    > "$LOGS/$mode.log" 2>&1
done
echo "race: $(reports "$LOGS/race.log") report(s) (want >= 1); absl::Mutex: $(reports "$LOGS/mutex.log"), absl::Notification: $(reports "$LOGS/notification.log") (want 0)"
if [ "$(reports "$LOGS/race.log")" -lt 1 ] || [ "$(reports "$LOGS/mutex.log")" -ne 0 ] ||
   [ "$(reports "$LOGS/notification.log")" -ne 0 ]; then
  cat "$LOGS"/*.log
  failed=1
fi

echo "== 2. engine and server unit tests"
for t in "${UNIT_TESTS[@]}"; do
  if TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1" "$BUILD_DIR/tests/$t" \
      > "$LOGS/$t.log" 2>&1; then
    echo "$t: $(grep -E '^\[  PASSED  \]' "$LOGS/$t.log"), no report"
  else
    echo "$t: FAILED ($(reports "$LOGS/$t.log") ThreadSanitizer report(s)):"
    cat "$LOGS/$t.log"
    failed=1
  fi
done

echo "== 3. the real server under TSan: grpc_e2e, then a 600-request soak"
MODEL="$BUILD_DIR/models/test-default"
[ -f "$MODEL/config.json" ] || "$BUILD_DIR/bin/anchor-eval" init-model --out "$MODEL" > /dev/null
export E2E_ANCHORSERVE_BIN="$PWD/$BUILD_DIR/bin/anchorserve" E2E_MODEL="$PWD/$MODEL" \
  E2E_PY_STUBS="$PWD/$BUILD_DIR/tests/server/py" PYTHONDONTWRITEBYTECODE=1
# exitcode=0: the server's exit status stays the drain's; the reports are judged below.
export TSAN_OPTIONS="halt_on_error=0 exitcode=0 log_path=$LOGS/server"
failures() { grep -E "^(FAIL|ERROR):|Error:|violations|^V:" "$1" | head -40; }
(cd tests/server && /usr/bin/python3 -m unittest grpc_e2e_test > "$LOGS/e2e.log" 2>&1) ||
  { echo "grpc_e2e under TSan failed:"; failures "$LOGS/e2e.log"; failed=1; }
(cd tests/server && SOAK_REQUESTS=600 /usr/bin/python3 -m unittest soak_test \
  > "$LOGS/soak.log" 2>&1) ||
  { echo "soak under TSan failed:"; failures "$LOGS/soak.log"; failed=1; }
unset TSAN_OPTIONS
/usr/bin/python3 tests/tsan/classify_reports.py "$LOGS/server" || failed=1

echo "== tsan-test: $([ $failed -eq 0 ] && echo clean || echo FAILED), $((SECONDS - started)) s of tests"
exit $failed
