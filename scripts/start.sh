#!/usr/bin/env bash
# The README's main command: install dependencies, build, write the embedded default model
# (once) and run it. Until the gRPC server lands this runs anchor-eval generation on the
# default model and shows how to talk to it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
MODEL_DIR="${MODEL_DIR:-$BUILD_DIR/models/default}"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$BUILD_DIR/bin/anchor-eval" init-model --out "$MODEL_DIR"
fi
PROMPT="${1:-The old captain opened the letter. He read it twice, and then he}"
echo "== anchor-eval generate --model $MODEL_DIR (anchor mode, random-weight default model)"
"$BUILD_DIR/bin/anchor-eval" generate --model "$MODEL_DIR" --text "$PROMPT" --max-tokens 48 --seed 1 --anchor-insertion auto
cat <<MSG

The default model has random weights until a trained one is committed, so its text is noise;
the line above shows what the anchor cache kept. Try:
  $BUILD_DIR/bin/anchor-eval generate --model $MODEL_DIR --text "Your prompt. <AC> More." --mode full
  $BUILD_DIR/bin/anchor-eval logits --model $MODEL_DIR --text "A. <AC> B" --json
MSG
