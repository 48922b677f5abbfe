#!/usr/bin/env bash
# One device command: build against the GPU machine's CUDA libtorch, run the whole test
# suite there (the GPU-only tests run instead of skipping), run the benchmarks, print a table.
#
#   ../shared/tools/device-deps.sh            # once, here: stages gRPC & co. into .device-deps
#   device run: carry=[".device-deps"], command="bash scripts/gpu-check.sh"
#
# Full logs go to $OUT (the device tool brings them back). Narrower runs, to save device time:
#   GPU_TARGETS="batch_decode_test decode_bench"  build only these (default: everything)
#   GPU_TESTS='DecodeBatch|Engine'                  ctest -R pattern (default: all; "none": skip)
#   GPU_BENCH="decode serving"                      of: model train hf decode serving serving7b
#                                                   (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
# .device-deps may travel packed (.device-train/deps.tgz) to leave room for training text.
[ -d .device-deps ] || tar xzf .device-train/deps.tgz
source .device-deps/env.sh
export PYTHONUNBUFFERED=1
t0=$(date +%s)
step() { echo "== $* ($(($(date +%s) - t0)) s)"; }

step configure
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
grep -E "AnchorServe:" "$OUT/configure.log"
step build
ninja -C build-gpu -j 16 ${GPU_TARGETS:-} >"$OUT/build.log" 2>&1 \
  || { grep -B2 -A12 "error" "$OUT/build.log" | head -80; exit 1; }
bench_on() { [ -z "${GPU_BENCH:-}" ] || [[ " $GPU_BENCH " == *" $1 "* ]]; }

tests_rc=0
if [ "${GPU_TESTS:-}" != none ]; then
step tests
ctest --test-dir build-gpu -j 4 --output-on-failure ${GPU_TESTS:+-R "$GPU_TESTS"} >"$OUT/ctest.log" 2>&1
tests_rc=$?
grep -E "tests passed|tests failed|Failed|\*\*\*" "$OUT/ctest.log" | head -30
build-gpu/tests/llama_test --gtest_filter='*Gpu*:*Bf16*' 2>&1 | grep -E "OK|FAILED|SKIPPED|max \|diff\|" | head
if grep -q "SEGFAULT" "$OUT/ctest.log"; then  # a backtrace of the first crashing test
  crashed=$(grep -m1 -oE "[0-9]+ - [A-Za-z0-9_./]+ \(SEGFAULT\)" "$OUT/ctest.log" | awk '{print $3}')
  file=$(grep -l -- "$crashed" build-gpu/tests/*/*_tests.cmake | head -1)
  bin=$(grep -m1 -oE "[^ ]*/build-gpu/tests/[a-z_]+" "$file" | head -1)
  echo "backtrace of $crashed ($bin); spm tools: $(command -v spm_train spm_encode | tr '\n' ' ')"
  cuda-gdb -batch -ex run -ex bt --args "$bin" --gtest_filter="$crashed" 2>&1 | grep -E "^#|signal" | head -15
fi
[ -x build-gpu/tests/batch_decode_test ] && build-gpu/tests/batch_decode_test \
  --gtest_filter='*Cuda*' 2>&1 | grep -E "OK \]|FAILED|SKIPPED|head_dim|Failure|Expected|actual" | head -20
fi

if [ "${GPU_TESTS:-}" != none ]; then
step "HF transformers loads the embedded default model"
python3 scripts/device/hf_check_default.py models/anllm-ac-20m build-gpu/bin/anchor-eval 2>&1 | tail -1
fi

step benchmarks
{
  if bench_on model; then
    build-gpu/bin/model_bench --shape tiny --device cuda --dtype bfloat16 --prompt 128 --decode 64
    build-gpu/bin/model_bench --shape 7b --device cuda --dtype bfloat16 --prompt 512 --decode 32
  fi
  if bench_on train; then
    echo
    echo "Training step, 20M shape, bf16: anchor-train (fused / eager mask) vs HF transformers"
    build-gpu/bin/train_bench --device cuda --batch 32 --seq 512 --steps 10
    python3 scripts/device/hf_train_bench.py --batch 32 --seq 512 --steps 10
  fi
  if bench_on decode; then
    echo
    echo "Engine benchmarks 1-3: batched decode on the paged layout, Llama-2-7B shape, bf16"
    build-gpu/bin/decode_bench --shape 7b --device cuda --dtype bfloat16 --prompt 512 \
      --steps 32 --batches 1,64 --history 8192 --long-batch 8 --json "$OUT/decode_bench.json"
  fi
  if bench_on hf; then
    echo
    echo "Benchmark 2: HF transformers generate(), same shape (compare decode_bench full mode)"
    python3 scripts/device/hf_generate_bench.py --prompt 512 --new 32 --batches 1,64
  fi
} 2>"$OUT/bench.err" | tee "$OUT/bench.md"

# ---- Engine benchmarks 4 and 5 (issue 8): multi-turn serving, engine CPU overhead per step ----
if bench_on serving; then
step "serving benchmarks (issue 8, benchmarks 4 and 5)"
{
  echo
  echo "Serving through scheduler::Engine, default model, bf16: 64 sessions x 20 turns (anchor vs full), overhead at batch 64"
  # Bounded so that a slow engine cannot eat the rest of the device command.
  timeout "${SERVING_BENCH_TIMEOUT:-300}" build-gpu/bin/serving_bench --device cuda \
    --dtype bfloat16 --sessions 64 --batch 64 --json "$OUT/serving_bench.json" \
    || echo "serving_bench failed or timed out (rc $?); see serving_bench.err"
} 2>"$OUT/serving_bench.err" | tee -a "$OUT/bench.md"
fi
if bench_on serving7b; then
step "serving benchmarks on the 7B shape (random bf16 weights, the default model's vocabulary)"
{
  python3 scripts/device/make_7b_model.py models/anllm-ac-20m /tmp/anllm-7b-shape
  echo
  echo "Serving through scheduler::Engine, Llama-2-7B shape (vocabulary 8192), bf16: 16 sessions x 20 turns, overhead at batch 64"
  timeout "${SERVING_BENCH_TIMEOUT:-300}" build-gpu/bin/serving_bench --model /tmp/anllm-7b-shape \
    --device cuda --dtype bfloat16 --sessions 16 --batch 64 --json "$OUT/serving_bench_7b.json" \
    || echo "serving_bench (7B) failed or timed out (rc $?); see serving_bench_7b.err"
} 2>"$OUT/serving_bench_7b.err" | tee -a "$OUT/bench.md"
fi
# ---- end of engine benchmarks 4 and 5 ----

if [ -f .device-train/text.tar.xz ] && [ -n "${TRAIN_SMOKE-1}" ]; then
  step "training pipeline smoke (one book file, a few steps per stage)"
  mkdir -p /tmp/text && tar xJf .device-train/text.tar.xz -C /tmp/text
  mkdir -p /tmp/smoke-text/train /tmp/smoke-text/heldout
  cp /tmp/text/train/gutenberg-children-05.txt /tmp/smoke-text/train/
  cp /tmp/text/heldout/gutenberg_valid.txt /tmp/smoke-text/heldout/
  BASE_STEPS=30 AC_STEPS=10 EP_STEPS=10 BATCH=16 bash scripts/train-models.sh /tmp/smoke-text \
    .device-train/tokenizer /tmp/smoke-models >"$OUT/train-smoke.log" 2>&1 \
    && grep -E "^==|^\{|step .*eval" "$OUT/train-smoke.log" | tail -12 \
    || { echo "training smoke FAILED"; tail -30 "$OUT/train-smoke.log"; }
  python3 scripts/device/hf_check_default.py /tmp/smoke-models/ac build-gpu/bin/anchor-eval 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/bench.md"
step done
exit $tests_rc
