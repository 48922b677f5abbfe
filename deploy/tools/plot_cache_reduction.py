#!/usr/bin/python3
"""Plots C↓ (cache reduction) per turn from `anchorctl bench --json` runs against a live server.

anchorctl bench reports, per simulated session, the KV bytes the server keeps and the bytes a
full-attention cache of the same history would hold. This script runs the benchmark with
sessions of 1..N turns (greedy decoding and a fixed text seed, so the session of T turns is the
session of T-1 turns plus one turn) and derives:
  - session C↓ after T turns: 1 - kept_T / full_T (what anchorserve_session_cache_reduction_ratio
    observes), and
  - C↓ of turn T alone: 1 - (kept_T - kept_{T-1}) / (full_T - full_{T-1}) (what
    anchorserve_turn_cache_reduction_ratio observes).

Usage (the server must be running; see docs/DEPLOY.md):
  deploy/tools/plot_cache_reduction.py --server 127.0.0.1:50051 \
      --anchorctl build/bin/anchorctl --turns 8 --out docs/cache_reduction_per_turn.png
Needs python3-matplotlib (scripts/install-deps.sh installs it).
"""
import argparse
import json
import subprocess


def bench(anchorctl, server, turns, sessions, max_tokens):
    cmd = [anchorctl, "--server", server, "bench", "--json", "--no-progress",
           "--turns", str(turns), "--concurrency", str(sessions),
           "--requests", str(turns * sessions), "--max-tokens", str(max_tokens),
           "--temperature", "0", "--seed", "1", "--text-seed", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--anchorctl", default="build/bin/anchorctl")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", default="docs/cache_reduction_per_turn.png")
    p.add_argument("--label", default="", help="what was served, for the title")
    p.add_argument("--json-out", default="", help="also write the raw bench results here")
    a = p.parse_args()

    runs = [bench(a.anchorctl, a.server, t, a.sessions, a.max_tokens)
            for t in range(1, a.turns + 1)]
    kept = [r["kv_per_session"]["kept_bytes"]["mean"] for r in runs]
    full = [r["kv_per_session"]["full_bytes"]["mean"] for r in runs]
    session_cr = [1 - k / f for k, f in zip(kept, full)]
    turn_cr = []
    pk, pf = 0.0, 0.0
    for k, f in zip(kept, full):
        turn_cr.append(max(0.0, min(1.0, 1 - (k - pk) / (f - pf))) if f > pf else float("nan"))
        pk, pf = k, f
    if a.json_out:
        with open(a.json_out, "w") as fh:
            json.dump({"runs": runs, "session_cr": session_cr, "turn_cr": turn_cr}, fh, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = list(range(1, a.turns + 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, turn_cr, "o-", label="C↓ of turn T alone")
    ax1.plot(x, session_cr, "s--", label="session C↓ after T turns")
    ax1.set_xlabel("turn")
    ax1.set_ylabel("cache reduction C↓ = 1 - kept / full")
    ax1.set_ylim(min(0.8, min(session_cr + [c for c in turn_cr if c == c]) - 0.02), 1.0)
    ax1.set_xticks(x)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="lower right")
    ax2.plot(x, [f / 1024 for f in full], "o-", label="full-equivalent KV")
    ax2.plot(x, [k / 1024 for k in kept], "s-", label="kept KV (anchorserve)")
    ax2.set_xlabel("turns in session")
    ax2.set_ylabel("KiB per session (mean)")
    ax2.set_xticks(x)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left")
    label = a.label or runs[-1]["config"].get("server", "")
    fig.suptitle(f"anchorctl bench against anchorserve: {label}\n"
                 f"{a.sessions} sessions per point, {a.max_tokens} tokens per reply, greedy",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}: turn C↓ {['%.3f' % c for c in turn_cr]}")


if __name__ == "__main__":
    main()
