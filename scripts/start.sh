#!/usr/bin/env bash
# The README's main command: install dependencies, build, and serve the embedded default model
# (models/anllm-ac-20m, an AnLLM-AC trained by this repository's own trainer) with anchorserve
# on 127.0.0.1:50051 (metrics on 127.0.0.1:9464).
# Stop with Ctrl-C: the server drains and persists its sessions under build/sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
MODEL_DIR="${MODEL_DIR:-models/anllm-ac-20m}"
LISTEN="${LISTEN:-127.0.0.1:50051}"
cat <<MSG

AnchorServe is starting on $LISTEN with $MODEL_DIR: a 20M-parameter AnLLM-AC trained on
Project Gutenberg (models/anllm-ac-20m/README.md). It writes Gutenberg-style English; do not
expect it to follow instructions. From another terminal:
  $BUILD_DIR/bin/anchorctl --server $LISTEN chat          # multi-turn chat, one line per turn
  $BUILD_DIR/bin/anchorctl --server $LISTEN generate --prompt "The old captain opened the letter."
  $BUILD_DIR/bin/anchorctl --server $LISTEN session list
  curl -s http://127.0.0.1:9464/metrics | grep anchorserve_turn_cache_reduction
MSG
exec "$BUILD_DIR/bin/anchorserve" --model "$MODEL_DIR" --listen "$LISTEN" \
  --metrics_listen 127.0.0.1:9464 --sessions.disk_dir "$BUILD_DIR/sessions" "$@"
