#!/usr/bin/env bash
# One device command (10-minute limit): build the training tools against the CUDA libtorch,
# train base / AnLLM-AC / AnLLM-EP (scripts/train-models.sh), evaluate all three
# (scripts/eval-report.py, cut off before the limit) and put the AC model, the training logs
# and the report under $OUT. Carry .device-train (deps.tgz, text.tar.xz, qa.tar.xz, tokenizer/).
#
#   run(carry=[".device-train"], command="bash scripts/device/train-and-eval.sh")
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/train-out}"
BUDGET=${BUDGET:-570}  # seconds this script may take in all
mkdir -p "$OUT"
t0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - t0))); }
[ -d .device-deps ] || tar xzf .device-train/deps.tgz
source .device-deps/env.sh
export PYTHONUNBUFFERED=1
echo "== build ($(($(date +%s) - t0)) s)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >/tmp/configure.log 2>&1 \
  || { tail -30 /tmp/configure.log; exit 1; }
ninja -C build-gpu -j 16 anchor-train anchor-eval >/tmp/build.log 2>&1 \
  || { grep -B2 -A12 error /tmp/build.log | head -60; exit 1; }
mkdir -p /tmp/data && tar xJf .device-train/text.tar.xz -C /tmp/data && tar xJf .device-train/qa.tar.xz -C /tmp/data

BASE_STEPS=${BASE_STEPS:-3800} BASE_MINUTES=${BASE_MINUTES:-3.3} \
AC_STEPS=${AC_STEPS:-1300} AC_MINUTES=${AC_MINUTES:-1.15} \
EP_STEPS=${EP_STEPS:-1300} EP_MINUTES=${EP_MINUTES:-1.15} \
  bash scripts/train-models.sh /tmp/data .device-train/tokenizer /tmp/models 2>&1 \
  | tee "$OUT/train.log" | grep -E "^==|^\{|anchor-train:|eval "

echo "== evaluate ($(($(date +%s) - t0)) s, $(left) s left)"
timeout $(( $(left) - 25 )) python3 scripts/eval-report.py \
  --models base=/tmp/models/base,ac=/tmp/models/ac,ep=/tmp/models/ep --data /tmp/data \
  --bin build-gpu/bin --device cuda --ppl-windows 48 --mc-limit 100 --shots 5 \
  --tasks copa,piqa,arc_easy --out "$OUT/EVAL_REPORT.md" --json "$OUT/eval_report.json"
[ -f "$OUT/EVAL_REPORT.md" ] || python3 scripts/eval-report.py --render "$OUT/eval_report.json" \
  --out "$OUT/EVAL_REPORT.md" 2>/dev/null

echo "== collect ($(($(date +%s) - t0)) s)"
cp /tmp/models/ac/model-*.safetensors "$OUT/" 2>/dev/null
tar cf "$OUT/models-meta.tar" -C /tmp/models \
  $(cd /tmp/models && ls -d {base,ac,ep}/{config.json,anchor_config.json,tokenizer.model,model.safetensors.index.json,train_log.jsonl} prepare-*.json *.json 2>/dev/null | sort -u)
ls -la "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
