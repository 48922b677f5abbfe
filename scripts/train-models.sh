#!/usr/bin/env bash
# Makes the three models of docs/TRAINING.md end to end: a base Llama pre-trained with causal
# attention, then AnLLM-AC and AnLLM-EP continued from it with AnSAN masks. Built for one
# device command (a GPU); every stage prints progress and is resumable (rerun to continue).
#
#   scripts/train-models.sh TEXT_DIR TOKENIZER_DIR OUT_DIR
#
# TEXT_DIR holds train/*.txt and heldout/gutenberg_valid.txt (../shared/data's layout);
# TOKENIZER_DIR a tokenizer.model from `anchor-train tokenizer` (spm_train is not needed
# here). Stage lengths (optimizer steps, wall-time caps) and the batch come from the
# environment so that one script serves a smoke test and the real run:
#   BASE_STEPS=6000 BASE_MINUTES=4 AC_STEPS=1500 AC_MINUTES=1.5 EP_STEPS=1500 EP_MINUTES=1.5
#   BATCH=64 SEQ=512 DEVICE=cuda BIN=build-gpu/bin
set -euo pipefail
TEXT=$1 TOKENIZER=$2 OUT=$3
BIN=${BIN:-build-gpu/bin}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-64} SEQ=${SEQ:-512}
BASE_STEPS=${BASE_STEPS:-6000} BASE_MINUTES=${BASE_MINUTES:-4}
AC_STEPS=${AC_STEPS:-1500} AC_MINUTES=${AC_MINUTES:-1.5}
EP_STEPS=${EP_STEPS:-1500} EP_MINUTES=${EP_MINUTES:-1.5}
mkdir -p "$OUT"
t0=$(date +%s)
stage() { echo "== $* ($(($(date +%s) - t0)) s)"; }

stage "prepare: plain and <AC> token shards of the training and held-out text"
train_files=$(ls "$TEXT"/train/*.txt | paste -sd,)
valid="$TEXT/heldout/gutenberg_valid.txt"
prep() {  # anchors input out
  [ -f "$3/index.json" ] || "$BIN/anchor-train" prepare --anchors "$1" --input "$2" \
    --tokenizer "$TOKENIZER" --out "$3" 2>/dev/null
}
prep none "$train_files" "$OUT/data-none" >"$OUT/prepare-none.json" &
prep ac "$train_files" "$OUT/data-ac" >"$OUT/prepare-ac.json" &
prep none "$valid" "$OUT/valid-none" >/dev/null &
prep ac "$valid" "$OUT/valid-ac" >/dev/null &
wait
cat "$OUT"/prepare-*.json

common=(--device "$DEVICE" --batch-size "$BATCH" --seq-len "$SEQ" --log-every 100
        --eval-every 500 --eval-windows 128)

stage "pretrain: base model, causal attention"
"$BIN/anchor-train" pretrain "${common[@]}" --data "$OUT/data-none" --eval-data "$OUT/valid-none" \
  --tokenizer "$TOKENIZER" --out "$OUT/base" --steps "$BASE_STEPS" --max-minutes "$BASE_MINUTES" \
  --lr 2e-3 --warmup 300 --weight-decay 0.1 | tee "$OUT/base.json"

# Continued pre-training from the base with a short warm-up and a lower peak LR, with the
# base's tokenizer; AC trains on <AC>-inserted text, EP on the plain text.
stage "continue: AnLLM-AC (AnSAN over <AC>)"
"$BIN/anchor-train" continue "${common[@]}" --init "$OUT/base" --anchors ac \
  --data "$OUT/data-ac" --eval-data "$OUT/valid-ac" --out "$OUT/ac" --steps "$AC_STEPS" \
  --max-minutes "$AC_MINUTES" --lr 3e-4 --warmup 50 --weight-decay 0 \
  | tee "$OUT/ac.json"

stage "continue: AnLLM-EP (AnSAN over \".\")"
"$BIN/anchor-train" continue "${common[@]}" --init "$OUT/base" --anchors ep \
  --data "$OUT/data-none" --eval-data "$OUT/valid-none" --out "$OUT/ep" --steps "$EP_STEPS" \
  --max-minutes "$EP_MINUTES" --lr 3e-4 --warmup 50 --weight-decay 0 \
  | tee "$OUT/ep.json"
stage done
