#!/usr/bin/env python3
"""The evaluation report of issue 5 (docs/EVAL_REPORT.md), regenerable with one command.

Runs `anchor-eval ppl` and `anchor-eval mc` for each model (full attention, and anchor mode
for models with anchors), collects their JSON and writes a Markdown report plus the raw JSON.

  scripts/eval-report.py --models base=DIR,ac=DIR,ep=DIR --data ../shared/data \\
      [--bin build/bin] [--device cuda] [--ppl-windows 64] [--mc-limit 200] [--shots 5] \\
      [--tasks copa,piqa,arc_easy,...] [--out docs/EVAL_REPORT.md] [--json docs/eval_report.json]
  scripts/eval-report.py --render docs/eval_report.json --out docs/EVAL_REPORT.md

Progress goes to stderr, one line per evaluation.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

TASK_FILES = {
    "arc_easy": "qa/arc_easy_test.jsonl", "arc_challenge": "qa/arc_challenge_test.jsonl",
    "piqa": "qa/piqa_validation.jsonl", "openbookqa": "qa/openbookqa_test.jsonl",
    "winogrande": "qa/winogrande_xl_dev.jsonl", "boolq": "qa/boolq_dev.jsonl",
    "lambada": "qa/lambada_openai_test.jsonl", "copa": "qa/copa_dev.jsonl",
    "siqa": "qa/siqa_dev.jsonl", "commonsense_qa": "qa/commonsense_qa_dev.jsonl",
    "hellaswag": "qa/hellaswag_val_llamacpp.txt",
}
CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "openbookqa": 0.25,
          "winogrande": 0.5, "boolq": 0.5, "copa": 0.5, "siqa": 1 / 3,
          "commonsense_qa": 0.2, "hellaswag": 0.25, "lambada": 0.0}
PPL_SETS = {"gutenberg_test": "heldout/gutenberg_test.txt",
            "wikitext2_test": "heldout/wikitext-2-raw-v1_test.raw"}


def anchor_kind(model_dir):
    try:
        with open(os.path.join(model_dir, "anchor_config.json")) as f:
            return json.load(f).get("anchor_type", "none")
    except OSError:
        return "none"


def run(cmd):
    t = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), time.time() - t


def evaluate(a, save):
    models = dict(kv.split("=", 1) for kv in a.models.split(","))
    results = {"date": datetime.date.today().isoformat(), "device": a.device,
               "settings": {"ppl_windows": a.ppl_windows, "window": a.window,
                            "mc_limit": a.mc_limit, "shots": a.shots, "chunk": a.chunk},
               "models": {}, "ppl": [], "mc": []}
    for name, d in models.items():
        kind = anchor_kind(d)
        results["models"][name] = {"dir": d, "anchors": kind}
        modes = ["full"] + (["anchor"] if kind in ("ac", "ep") else [])
        for set_name, rel in PPL_SETS.items():
            for mode in modes:
                cmd = [f"{a.bin}/anchor-eval", "ppl", "--model", d, "--data",
                       os.path.join(a.data, rel), "--mode", mode, "--window", str(a.window),
                       "--stride", str(a.window), "--limit", str(a.ppl_windows),
                       "--chunk", str(a.chunk), "--device", a.device, "--json"]
                if kind == "ac":
                    cmd += ["--anchor-insertion", "auto"]
                r, s = run(cmd)
                r.update(model=name, set=set_name)
                if r.get("non_anchor_token_ppl") is None:
                    r["non_anchor_token_ppl"] = r["token_average_ppl"]
                if r.get("kv") is None:  # full attention keeps every entry
                    full = (r["window"] + 1) / 2
                    r["kv"] = {"mean_kept": full, "mean_full_equivalent": full, "c_down": 0.0}
                results["ppl"].append(r)
                save(results)
                print(f"ppl {name:5s} {set_name:15s} {mode:6s} "
                      f"ppl {r['non_anchor_token_ppl']:.2f} C-down {r['kv']['c_down']:.3f} ({s:.0f} s)",
                      file=sys.stderr, flush=True)
        for task in [t for t in a.tasks.split(",") if t]:
            for mode in modes:
                if a.mc_modes and mode not in a.mc_modes.split(","):
                    continue
                cmd = [f"{a.bin}/anchor-eval", "mc", "--model", d, "--data",
                       os.path.join(a.data, TASK_FILES[task]), "--task", task, "--shots",
                       str(a.shots), "--limit", str(a.mc_limit), "--mode", mode,
                       "--device", a.device, "--json"]
                r, s = run(cmd)
                r.update(model=name)
                results["mc"].append(r)
                save(results)
                print(f"mc  {name:5s} {task:15s} {mode:6s} acc {r['acc']:.3f} "
                      f"T-up {r.get('t_up') or 0:.2f} ({s:.0f} s)", file=sys.stderr, flush=True)
    return results


def render(res, heading="# Evaluation report"):
    out = [f"{heading}\n",
           f"Generated {res['date']} on `{res['device']}` by `scripts/eval-report.py` "
           f"(settings: {json.dumps(res['settings'])}). Models:\n"]
    for name, m in res["models"].items():
        out.append(f"- **{name}**: `{m['dir']}` (anchors: {m['anchors']})")
    sub = "#" * (heading.count("#") + 1)
    out.append(f"\n{sub} Perplexity on held-out text\n")
    out.append("Perplexity over the non-anchor tokens of full windows (AC models are scored on "
               "the text with `<AC>` inserted at sentence ends; the `<AC>` targets are left out so "
               "that every model is scored on the same words). Anchor mode is the incremental "
               "anchor-cached path (REDUCTION after every chunk); kept KV is the mean number of "
               "cache entries after each token, C↓ = 1 − kept / full-equivalent.\n")
    out.append("| model | set | mode | ppl | ratio to base full | mean kept KV | C↓ |")
    out.append("|---|---|---|---:|---:|---:|---:|")
    base = {r["set"]: r["non_anchor_token_ppl"] for r in res["ppl"]
            if r["model"] == "base" and r["mode"] == "full"}
    for r in res["ppl"]:
        ratio = r["non_anchor_token_ppl"] / base[r["set"]] if r["set"] in base else float("nan")
        out.append(f"| {r['model']} | {r['set']} | {r['mode']} | {r['non_anchor_token_ppl']:.2f} | "
                   f"{ratio:.3f} | {r['kv']['mean_kept']:.1f} / {r['kv']['mean_full_equivalent']:.1f} | "
                   f"{100 * r['kv']['c_down']:.1f}% |")
    out.append(f"\n{sub} Multiple choice, k-shot\n")
    out.append("Accuracy (`acc`: summed log-likelihood; `acc_norm`: per character, as lm-eval). "
               "L_d: demonstration tokens, L_kv: what anchor caching keeps of them, "
               "C↓ = 1 − L_kv/L_d; T↑ = time recomputing the demonstrations per choice ÷ time "
               "reusing their anchor-compressed cache; vs full = time reusing their full cache ÷ "
               "the same (the paper's Table 3). Chance is the last column: at 20M parameters most "
               "tasks are at chance, and this table says so rather than hiding it.\n")
    out.append("| model | task | mode | items | acc | acc_norm | L_d | L_kv | C↓ | T↑ | vs full | chance |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["mc"]:
        def f(x, p=3):
            return "–" if x is None else f"{x:.{p}f}"
        # C-down applies to what anchor mode keeps; full-mode rows keep everything.
        cd = r.get("c_down") if r["mode"] == "anchor" else None
        out.append(f"| {r['model']} | {r['task']} | {r['mode']} | {r['items']} | {f(r['acc'])} | "
                   f"{f(r.get('acc_norm'))} | {r['L_d']} | {r['L_kv']} | "
                   f"{'–' if cd is None else f'{100 * cd:.1f}%'} | {f(r.get('t_up'), 2)} | "
                   f"{f(r.get('t_up_vs_full_cache'), 2)} | {CHANCE.get(r['task'], 0):.2f} |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--device", default="cpu")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--ppl-windows", type=int, default=64)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--mc-limit", type=int, default=200)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--tasks", default="copa,piqa,arc_easy,winogrande,hellaswag,lambada")
    p.add_argument("--out", default="docs/EVAL_REPORT.md")
    p.add_argument("--json", default="docs/eval_report.json")
    p.add_argument("--mc-modes", default="", help="only these modes for mc (default: all)")
    p.add_argument("--render", help="JSON file(s) of earlier runs, comma-separated")
    p.add_argument("--preamble", help="Markdown placed before the rendered runs")
    a = p.parse_args()
    if a.render:  # one or more saved runs, each under its own heading
        text = ""
        if a.preamble:
            with open(a.preamble) as f:
                text = f.read() + "\n"
        for path in a.render.split(","):
            with open(path) as f:
                res = json.load(f)
            s = res["settings"]
            text += render(res, f"## Window {s['window']} tokens, chunk {s['chunk']}") + "\n"
        with open(a.out, "w") as f:
            f.write(text)
        print(f"wrote {a.out}", file=sys.stderr)
        return
    else:
        if not a.models:
            p.error("--models is required unless --render")
        def save(r):  # after every evaluation, so a run cut short keeps what it measured
            with open(a.json, "w") as f:
                json.dump(r, f, indent=1)
        res = evaluate(a, save)
    with open(a.out, "w") as f:
        f.write(render(res))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
