#!/usr/bin/env bash
# Regenerates the figures of docs/RELIABILITY.md ("Soak", "Overload", "ThreadSanitizer") on this
# machine and prints them as a markdown table, with the date, the CPU count and the load average
# (the latencies depend on them: take figures on an otherwise idle machine).
#
#   scripts/reliability.sh                 # soak of 20,000 requests (~5 min on 2 cores), overload
#   scripts/reliability.sh --with-tsan     # and scripts/tsan-test.sh (its own build, ~2 min of tests)
#   scripts/reliability.sh --no-soak       # overload again; the table reuses the last soak's JSON
#   SOAK_REQUESTS=5000 OVERLOAD_ROUNDS=5 scripts/reliability.sh
#
# The JSON of each run is kept under ${RELIABILITY_OUT:-build/reliability}/. Exit status:
# non-zero if a run failed its checks (the table is printed either way).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TSAN=0 SOAK=1 OVERLOAD=1
for arg in "$@"; do
  case "$arg" in
    --with-tsan) WITH_TSAN=1 ;;
    --no-soak) SOAK=0 ;;
    --no-overload) OVERLOAD=0 ;;
    *) echo "usage: scripts/reliability.sh [--with-tsan] [--no-soak] [--no-overload]" >&2; exit 2 ;;
  esac
done
BUILD_DIR="${BUILD_DIR:-build}"
OUT="${RELIABILITY_OUT:-$BUILD_DIR/reliability}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
scripts/install-deps.sh
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target anchorserve anchor-eval \
  anchorserve_py_stubs
MODEL="$BUILD_DIR/models/test-default"
[ -f "$MODEL/config.json" ] || "$BUILD_DIR/bin/anchor-eval" init-model --out "$MODEL" > /dev/null
export E2E_ANCHORSERVE_BIN="$PWD/$BUILD_DIR/bin/anchorserve" E2E_MODEL="$PWD/$MODEL" \
  E2E_PY_STUBS="$PWD/$BUILD_DIR/tests/server/py" PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
status=0
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$SOAK" = 1 ]; then
  echo "== soak: ${SOAK_REQUESTS:-20000} requests" >&2
  (cd tests/server && SOAK_REQUESTS="${SOAK_REQUESTS:-20000}" SOAK_REPORT="$OUT/soak.json" \
    /usr/bin/python3 -m unittest soak_test > "$OUT/soak.log" 2>&1) ||
    { status=1; echo "soak FAILED (log: $OUT/soak.log)" >&2; }
fi
if [ "$OVERLOAD" = 1 ]; then
  echo "== overload" >&2
  (cd tests/server && OVERLOAD_ROUNDS="${OVERLOAD_ROUNDS:-5}" OVERLOAD_REPORT="$OUT/overload.json" \
    /usr/bin/python3 -m unittest overload_test > "$OUT/overload.log" 2>&1) ||
    { status=1; echo "overload FAILED (log: $OUT/overload.log)" >&2; }
  if grep -q "skipped" "$OUT/overload.log"; then
    echo "overload SKIPPED: $(grep -o "skipped .*" "$OUT/overload.log" | head -1)" >&2
  fi
fi

tsan_line="not run here: \`scripts/tsan-test.sh\` (CI runs it)"
if [ "$WITH_TSAN" = 1 ]; then
  echo "== ThreadSanitizer" >&2
  if scripts/tsan-test.sh > "$OUT/tsan.log" 2>&1; then
    tsan_line="$(grep -E '^ThreadSanitizer reports' "$OUT/tsan.log"); $(tail -1 "$OUT/tsan.log")"
  else
    status=1
    tsan_line="FAILED (log: $OUT/tsan.log)"
  fi
fi

/usr/bin/python3 - "$OUT" "$load_before" "$tsan_line" <<'PY'
import datetime, json, os, sys
out, load_before, tsan_line = sys.argv[1:4]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
soak, over = load("soak.json"), load("overload.json")
print(f"Figures of {datetime.date.today()} on {os.cpu_count()} CPUs, load average before "
      f"{load_before}, after {' '.join(open('/proc/loadavg').read().split()[:3])} "
      f"(`scripts/reliability.sh`).\n")
print("| run | figure | value |\n| --- | --- | --- |")
if soak:
    f = soak.get("by_fate", {})
    rows = [
        ("Generate calls (planned)", f"{soak.get('generate_calls')} ({soak['requests_planned']}), "
                                     f"{soak['clients']} client threads, {soak.get('load_s')} s"),
        ("cancelled mid-stream / deadline expired", f"{f.get('cancel')} / {f.get('deadline')}"),
        ("vanished: channel closed / process killed / process frozen",
         f"{f.get('close')} / {f.get('kill')} / {f.get('freeze')}"),
        ("normal (probes included)", f.get("normal")),
        ("server-side final status by code", soak.get("server_generate_by_code")),
        ("violations (streams without a status, wrong counts, ...)", len(soak.get("violations", []))),
        ("crashes; exit code after SIGTERM", f"{soak.get('crashes')}; {soak.get('exit_code')}"),
        ("KV pool free at the end", f"{soak.get('kv_free_ratio_end', 0) * 100:.1f}% "
                                    f"({soak.get('kv_blocks_free_end'):.0f} blocks)"),
        ("RSS after warm-up -> end of the load (growth; limit 5%)",
         f"{soak.get('rss_after_warmup_mib')} -> {soak.get('rss_end_of_load_mib')} MiB "
         f"({soak.get('rss_growth', 0) * 100:+.1f}%); peak {soak.get('rss_peak_mib')} MiB, "
         f"after the load {soak.get('rss_after_load_mib')} MiB (KV pool pages "
         f"{soak.get('kv_pool_rss_after_warmup_mib')} -> {soak.get('kv_pool_rss_after_load_mib')})"),
        ("open descriptors before / after", f"{soak.get('open_fds_start'):.0f} / "
                                            f"{soak.get('open_fds_end'):.0f}"),
    ]
    for name, value in rows:
        print(f"| soak | {name} | {value} |")
else:
    print("| soak | (no result) | see the log |")
if over and not over.get("summary"):
    print("| overload | skipped: too few rounds on an otherwise idle machine | other processes' CPU "
          f"per round: {[r['other_cpu_cores'] for r in over.get('rounds', [])]} cores |")
elif over:
    s, c = over["summary"], over["capacity"]
    rounds = [r for r in over["rounds"] if r["counted"]]
    rows = [
        ("server", f"max_running {over['max_running']}, max_waiting {over['max_waiting']}, "
                   f"{over['max_tokens']} tokens per request"),
        ("capacity (closed loop)", f"{c['requests_per_s']} req/s, {c['tokens_per_s']} tok/s, "
                                   f"ITL p50/p99 {c['itl_p50_ms']}/{c['itl_p99_ms']} ms"),
        ("offered / admitted", f"{s['offered_per_s']} / {s['admitted_per_s']} req/s "
                               f"({s['rejected_share'] * 100:.0f}% rejected), {len(rounds)} rounds"),
        ("reject latency p99 (median of rounds; per round)",
         f"{s['reject_p99_ms']} ms; " + ", ".join(str(r["reject_p99_ms"]) for r in rounds)),
        ("ITL p99 unloaded (median; per round)",
         f"{s['unloaded_itl_p99_ms']} ms; "
         + ", ".join(str(r["unloaded_itl_p99_ms"]) for r in rounds)),
        ("ITL p99 admitted under 10x (median; per round)",
         f"{s['loaded_itl_p99_ms']} ms; " + ", ".join(str(r["loaded_itl_p99_ms"]) for r in rounds)),
        ("ratio loaded / unloaded (median; limit 2)", s["itl_p99_ratio"]),
        ("other processes' CPU per counted round (cores)",
         ", ".join(str(r["other_cpu_cores"]) for r in rounds)),
    ]
    for name, value in rows:
        print(f"| overload | {name} | {value} |")
else:
    print("| overload | (no result) | see the log |")
print(f"| ThreadSanitizer | engine, policy, metrics, config tests; server e2e + soak | {tsan_line} |")
PY
exit $status
