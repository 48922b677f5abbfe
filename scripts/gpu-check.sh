#!/usr/bin/env bash
# One device command: build against the GPU machine's CUDA libtorch, run the whole test
# suite there (the GPU-only tests run instead of skipping), run the benchmarks, print a table.
#
#   ../shared/tools/device-deps.sh            # once, here: stages gRPC & co. into .device-deps
#   device run: carry=[".device-deps"], command="bash scripts/gpu-check.sh"
#
# Full logs go to $OUT (the device tool brings them back).
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
ninja -C build-gpu -j 16 >"$OUT/build.log" 2>&1 || { grep -B2 -A12 "error" "$OUT/build.log" | head -80; exit 1; }

step tests
ctest --test-dir build-gpu -j 4 --output-on-failure >"$OUT/ctest.log" 2>&1
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

step "HF transformers loads the embedded default model"
python3 scripts/device/hf_check_default.py models/anllm-ac-20m build-gpu/bin/anchor-eval 2>&1 | tail -1

step benchmarks
{
  build-gpu/bin/model_bench --shape tiny --device cuda --dtype bfloat16 --prompt 128 --decode 64
  build-gpu/bin/model_bench --shape 7b --device cuda --dtype bfloat16 --prompt 512 --decode 32
  echo
  echo "Training step, 20M shape, bf16: anchor-train (fused / eager mask) vs HF transformers"
  build-gpu/bin/train_bench --device cuda --batch 32 --seq 512 --steps 10
  python3 scripts/device/hf_train_bench.py --batch 32 --seq 512 --steps 10
  echo
  echo "Decode, Llama-2-7B shape, bf16: HF transformers generate() (compare model_bench full above)"
  python3 scripts/device/hf_generate_bench.py --prompt 512 --new 32 --batches 1,64
} 2>"$OUT/bench.err" | tee "$OUT/bench.md"

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
