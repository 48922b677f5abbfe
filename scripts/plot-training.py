#!/usr/bin/env python3
"""Training curves of the models made by scripts/train-models.sh: training loss and held-out
loss against trained tokens, base then AC and EP continued from it.

usage: plot-training.py OUT.png BASE_LOG AC_LOG EP_LOG   (train_log.jsonl files)
"""
import json
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, logs = sys.argv[1], sys.argv[2:]
names = ["base (causal)", "AnLLM-AC (AnSAN, <AC>)", "AnLLM-EP (AnSAN, \".\")"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
base_tokens = 0
for i, (name, path) in enumerate(zip(names, logs)):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    offset = 0 if i == 0 else base_tokens
    x = [(r["tokens"] + offset) / 1e6 for r in rows]
    if i == 0:
        base_tokens = rows[-1]["tokens"]
    axes[0].plot(x, [r["loss"] for r in rows], label=name)
    ev = [(xx, r["eval_loss"]) for xx, r in zip(x, rows) if "eval_loss" in r]
    axes[1].plot([e[0] for e in ev], [e[1] for e in ev], marker="o", label=name)
for ax, title in zip(axes, ["training loss", "held-out loss (Gutenberg valid)"]):
    ax.set_xlabel("tokens trained (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
axes[0].set_ylim(top=6)
axes[1].set_ylim(top=5)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
