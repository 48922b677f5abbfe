#!/usr/bin/env bash
# The README's main command: install dependencies, build, write the embedded default model
# (once), and serve it with anchorserve on 127.0.0.1:50051 (metrics on 127.0.0.1:9464).
# Stop with Ctrl-C: the server drains and persists its sessions under build/sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
MODEL_DIR="${MODEL_DIR:-$BUILD_DIR/models/default}"
LISTEN="${LISTEN:-127.0.0.1:50051}"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  "$BUILD_DIR/bin/anchor-eval" init-model --out "$MODEL_DIR"
fi
cat <<MSG

AnchorServe is starting on $LISTEN with the default model ($MODEL_DIR).
The default model has random weights until a trained one is committed, so replies are noise;
what the server keeps of a conversation (kept KV vs full, C-down) is real. From another
terminal:
  $BUILD_DIR/bin/anchorctl --server $LISTEN chat          # multi-turn chat, one line per turn
  $BUILD_DIR/bin/anchorctl --server $LISTEN generate --prompt "The old captain opened the letter."
  $BUILD_DIR/bin/anchorctl --server $LISTEN session list
  curl -s http://127.0.0.1:9464/metrics | grep anchorserve_turn_cache_reduction
MSG
exec "$BUILD_DIR/bin/anchorserve" --model "$MODEL_DIR" --listen "$LISTEN" \
  --metrics_listen 127.0.0.1:9464 --sessions.disk_dir "$BUILD_DIR/sessions" "$@"
