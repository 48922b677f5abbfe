#!/usr/bin/env python3
"""Overload of the real anchorserve binary on 127.0.0.1 (docs/RELIABILITY.md, "Overload").

The server runs with a small bounded queue (--scheduler.max_running=1, max_waiting=4). With one
request shape (a two-sentence prompt, OVERLOAD_TOKENS greedy tokens, ignore_eos) the test
measures the capacity (max_running streams back to back), then runs rounds of

  unloaded: one stream at a time on the idle server, for 3 s;
  overload: a niced flood process offers OVERLOAD_FACTOR (10) x the capacity, open-loop Poisson
            arrivals, for OVERLOAD_SECONDS, while this process probes as one more client with
            nothing else to do (a call every 5 ms);

and checks, on the median of the rounds: rejects are fast (RESOURCE_EXHAUSTED, p99 under 10 ms
from the call to its status, client side) and the admitted streams' p99 inter-token latency
(ITL: the gap between consecutive token messages; the first token's wait is TTFT) is within 2x
of the unloaded p99 of the same round; and in every round: the flood reached its rate, most of it
was refused, every call was refused at once or ran to its end, the server's
queue_rejections_total equals the rejects the clients saw, and the server is empty afterwards.

A round counts only if the rest of the machine used at most OTHER_CPU_LIMIT of a core meanwhile;
when too few do, the test skips, saying how busy the machine was: another job's load is not the
server's latency. Why max_running=1 on a CPU: the CPU engine decodes the running sequences one
after another, so every admitted stream's ITL is about max_running x the unloaded one
(docs/RELIABILITY.md has the figures: 1.1x at 1, 2.2x at 2, 3.2x at 4).

Environment: E2E_ANCHORSERVE_BIN, E2E_MODEL, E2E_PY_STUBS (as grpc_e2e_test.py), and
  OVERLOAD_RUNNING (1)   --scheduler.max_running
  OVERLOAD_WAITING (4)   --scheduler.max_waiting
  OVERLOAD_TOKENS (64)   max_tokens of every request
  OVERLOAD_FACTOR (10)   offered load / capacity
  OVERLOAD_SECONDS (6)   length of each overload phase
  OVERLOAD_ROUNDS (3)    rounds that count
  OVERLOAD_FLAGS         more server flags (investigations)
  OVERLOAD_REPORT        write the figures as JSON to this file
The same file run as `overload_test.py --flood ...` is the flood process."""
import concurrent.futures
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_e2e_test import Server, grpc, pb, rpc  # noqa: E402

RUNNING = int(os.environ.get("OVERLOAD_RUNNING", "1"))
WAITING = int(os.environ.get("OVERLOAD_WAITING", "4"))
TOKENS = int(os.environ.get("OVERLOAD_TOKENS", "64"))
FACTOR = float(os.environ.get("OVERLOAD_FACTOR", "10"))
SECONDS = float(os.environ.get("OVERLOAD_SECONDS", "6"))
ROUNDS = int(os.environ.get("OVERLOAD_ROUNDS", "3"))
UNLOADED_SECONDS = 3
REPORT = os.environ.get("OVERLOAD_REPORT")
EXTRA_FLAGS = os.environ.get("OVERLOAD_FLAGS", "").split()

# A round counts only if the rest of the machine used at most this much CPU meanwhile (in
# cores); up to MAX_EXTRA_ROUNDS more rounds replace those that did not count, then the test
# skips, saying why.
OTHER_CPU_LIMIT = 0.3
MAX_EXTRA_ROUNDS = 4
REJECT_P99_LIMIT_S = 0.010
ITL_RATIO_LIMIT = 2.0
PROMPTS = ["The old captain opened the letter. He read it twice.",
           "The storm came at night. The ship was ready.",
           "Anna watched the river. The bridge was long.",
           "Tom found the book. He wrote a letter to his brother."]


def percentile(values, q):
    """Nearest-rank percentile: always an observed value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3)


class Stream:
    """One Generate call: the status, when it ended, the gaps between its token messages."""

    def __init__(self, stub, prompt):
        self.code, self.gaps, self.tokens = None, [], 0
        self.start = time.perf_counter()
        last = None
        try:
            for msg in stub.Generate(pb.GenerateRequest(
                    prompt=prompt, max_tokens=TOKENS, ignore_eos=True, temperature=0.0),
                    timeout=120):
                now = time.perf_counter()
                if msg.token_ids:
                    if last is not None:
                        self.gaps.append(now - last)
                    last = now
                    self.tokens += len(msg.token_ids)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
            self.details = e.details()
        self.end = time.perf_counter()


def server_histogram(text, name):
    """Cumulative bucket counts of a histogram: [(le, count)]."""
    out = []
    for m in re.finditer(re.escape(name) + r'_bucket\{le="([^"]+)"\} ([0-9.e+-]+)', text):
        out.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)),
                    float(m.group(2))))
    return out


def histogram_p99_bound(before, after):
    """The upper bound of the bucket holding the p99 of the observations between two scrapes."""
    delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = delta[-1][1]
    if total <= 0:
        return None, 0
    for le, count in delta:
        if count >= 0.99 * total:
            return le, int(total)
    return float("inf"), int(total)


class OtherCpu:
    """CPU time the rest of the machine (not the server, this test or its flood process) used
    over an interval, in cores: on a shared box another job's load shows up in every latency
    this test measures, so a round that ran beside one does not count."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.start = self._snapshot()

    def _snapshot(self):
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # less idle and iowait
        ours = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                ours += int(stat[11]) + int(stat[12])  # utime + stime, all threads
            except (OSError, IndexError):
                pass  # a process that already exited: its time is lost, so is the rest's
        return time.perf_counter(), busy, ours

    def cores(self):
        t0, busy0, ours0 = self.start
        t1, busy1, ours1 = self._snapshot()
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / ticks / max(t1 - t0, 1e-3))


class Overload(unittest.TestCase):
    def test_overload(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        server = Server("--threads=1", f"--scheduler.max_running={RUNNING}",
                        f"--scheduler.max_waiting={WAITING}", *EXTRA_FLAGS)
        figures = dict(max_running=RUNNING, max_waiting=WAITING, max_tokens=TOKENS,
                       factor=FACTOR, seconds=SECONDS)
        try:
            self.run_phases(server, figures)
        finally:
            code = server.stop()
            figures["exit_code"] = code
            if REPORT:
                with open(REPORT, "w") as f:
                    json.dump(figures, f, indent=2)
            print(json.dumps(figures, indent=1), file=sys.stderr)
        self.assertEqual(code, 0)
        self.check(figures)

    def run_phases(self, server, figures):
        stub = server.stub
        rng = random.Random(7)
        for i in range(10):  # warm-up: allocator, caches, the client's channel
            Stream(stub, PROMPTS[i % len(PROMPTS)])

        itl_hist = "anchorserve_inter_token_latency_seconds"

        # Capacity: RUNNING streams back to back for a few seconds.
        done, stop = [], threading.Event()
        lock = threading.Lock()

        def closed_loop():  # RUNNING clients, each sending its next call when one ends
            while not stop.is_set():
                s = Stream(stub, rng.choice(PROMPTS))
                if s.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # more clients than queue
                    time.sleep(0.001)
                    continue
                with lock:
                    done.append(s)

        workers = [threading.Thread(target=closed_loop) for _ in range(RUNNING)]
        before = server_histogram(server.metrics(), itl_hist)
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        time.sleep(6)
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        after = server_histogram(server.metrics(), itl_hist)
        self.assertTrue(all(s.code == grpc.StatusCode.OK for s in done),
                        [s.code for s in done if s.code != grpc.StatusCode.OK])
        capacity = len(done) / elapsed
        gaps = [g for s in done for g in s.gaps]
        figures["capacity"] = dict(streams=len(done), requests_per_s=round(capacity, 2),
                                   tokens_per_s=round(sum(s.tokens for s in done) / elapsed),
                                   itl_p50_ms=ms(percentile(gaps, 0.5)),
                                   itl_p99_ms=ms(percentile(gaps, 0.99)),
                                   server_itl_p99_bucket_ms=ms(
                                       histogram_p99_bound(before, after)[0]))

        # Rounds of (unloaded, overload), so that both sides of each comparison see the same
        # background load of a shared machine. Unloaded: one stream at a time on the idle
        # server. Overload: a flood process offers FACTOR x capacity (open-loop Poisson
        # arrivals, niced: it stands in for clients on other machines; on a 2-core box its own
        # CPU would otherwise be taken from the server). Meanwhile this process probes as one
        # more client with nothing else to do: a call at a time, 5 ms apart; a rejected call
        # gives a reject latency, an admitted one its inter-token gaps.
        rate = FACTOR * capacity
        figures["rounds"] = []
        for round_index in range(ROUNDS + MAX_EXTRA_ROUNDS):
            counted = sum(r["counted"] for r in figures["rounds"])
            if counted >= ROUNDS or (round_index >= ROUNDS and counted == 0):
                break  # enough rounds, or a machine that stays busy
            others = OtherCpu([server.proc.pid, os.getpid()])
            t0 = time.perf_counter()
            unloaded = []
            while time.perf_counter() - t0 < UNLOADED_SECONDS:
                unloaded.append(Stream(stub, rng.choice(PROMPTS)))
            self.assertTrue(all(s.code == grpc.StatusCode.OK for s in unloaded))
            unloaded_gaps = [g for s in unloaded for g in s.gaps]

            text = server.metrics()
            rejections_before = _sample(text, "anchorserve_queue_rejections_total")
            before = server_histogram(text, itl_hist)
            flood_out = os.path.join(self.tmp, f"flood-{round_index}.json")
            flood = subprocess.Popen(
                ["nice", "-n", "10", sys.executable, os.path.abspath(__file__), "--flood",
                 str(server.port), str(rate), str(SECONDS), flood_out, str(round_index)])
            others.pids.append(flood.pid)
            probes = []
            t0 = time.perf_counter()
            time.sleep(1.0)  # let the flood fill the queue
            while time.perf_counter() - t0 < SECONDS:
                probes.append(Stream(stub, rng.choice(PROMPTS)))
                time.sleep(0.005)
            other_cores = others.cores()  # before the flood exits and takes its CPU time along
            self.assertEqual(flood.wait(timeout=SECONDS + 120), 0)
            with open(flood_out) as f:
                flooded = json.load(f)
            text = server.metrics()
            after = server_histogram(text, itl_hist)
            rejections = _sample(text, "anchorserve_queue_rejections_total") - rejections_before
            rejected = [s for s in probes if s.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
            admitted = [s for s in probes if s.code != grpc.StatusCode.RESOURCE_EXHAUSTED]
            gaps = [g for s in admitted for g in s.gaps]
            reject_s = [s.end - s.start for s in rejected]
            unloaded_p99 = percentile(unloaded_gaps, 0.99)
            loaded_p99 = percentile(gaps, 0.99)
            figures["rounds"].append(dict(
                other_cpu_cores=round(other_cores, 2),
                counted=other_cores <= OTHER_CPU_LIMIT,
                unloaded_gaps=len(unloaded_gaps),
                unloaded_itl_p50_ms=ms(percentile(unloaded_gaps, 0.5)),
                unloaded_itl_p99_ms=ms(unloaded_p99),
                flood=flooded,
                probe_calls=len(probes), probe_rejected=len(rejected),
                probe_admitted=len(admitted),
                probe_admitted_not_ok=sorted({s.code.name for s in admitted
                                              if s.code != grpc.StatusCode.OK}),
                server_queue_rejections=int(rejections),
                reject_p50_ms=ms(percentile(reject_s, 0.5)),
                reject_p99_ms=ms(percentile(reject_s, 0.99)),
                reject_max_ms=ms(max(reject_s) if reject_s else None),
                loaded_gaps=len(gaps),
                loaded_itl_p50_ms=ms(percentile(gaps, 0.5)), loaded_itl_p99_ms=ms(loaded_p99),
                itl_p99_ratio=round(loaded_p99 / unloaded_p99, 2) if gaps else None,
                server_itl_p99_bucket_ms=ms(histogram_p99_bound(before, after)[0])))
            deadline = time.time() + 5  # the gauges are refreshed once a second
            while time.time() < deadline and (server.metric("anchorserve_requests_running")
                                              or server.metric("anchorserve_requests_waiting")):
                time.sleep(0.2)
            self.assertEqual(server.metric("anchorserve_requests_running"), 0)
            self.assertEqual(server.metric("anchorserve_requests_waiting"), 0)
        rounds = [r for r in figures["rounds"] if r["counted"]]
        if len(rounds) < ROUNDS:
            figures["summary"] = None
            self.skipTest(
                f"the machine is busy with other work: {len(rounds)} of "
                f"{len(figures['rounds'])} rounds "
                f"ran with at most {OTHER_CPU_LIMIT} core used by other processes "
                f"(per round: {[r['other_cpu_cores'] for r in figures['rounds']]}); "
                "latencies measured beside another job are not the server's")
        figures["summary"] = dict(
            unloaded_itl_p99_ms=statistics.median(r["unloaded_itl_p99_ms"] for r in rounds),
            loaded_itl_p99_ms=statistics.median(r["loaded_itl_p99_ms"] or 0 for r in rounds),
            itl_p99_ratio=statistics.median(r["itl_p99_ratio"] or float("inf") for r in rounds),
            reject_p99_ms=statistics.median(r["reject_p99_ms"] or float("inf") for r in rounds),
            offered_per_s=round(statistics.mean(r["flood"]["offered_per_s"] for r in rounds), 1),
            admitted_per_s=round(statistics.mean(r["flood"]["admitted_per_s"] for r in rounds), 2),
            rejected_share=round(sum(r["flood"]["rejected"] for r in rounds)
                                 / sum(r["flood"]["calls"] for r in rounds), 3))

    def check(self, figures):
        summary = figures["summary"]
        for i, r in enumerate(r for r in figures["rounds"] if r["counted"]):
            f = r["flood"]
            with self.subTest(round=i):
                self.assertGreaterEqual(f["offered_per_s"], 0.8 * f["target_per_s"],
                                        "the flood did not reach its rate")
                self.assertGreater(f["rejected"], 0.5 * f["calls"],
                                   "10x the capacity is mostly refused")
                self.assertGreater(f["admitted"], 0)
                self.assertEqual(f["codes"].keys() - {"OK", "RESOURCE_EXHAUSTED"}, set(),
                                 "every call is refused at once or runs to its end")
                self.assertEqual(r["probe_admitted_not_ok"], [])
                self.assertEqual(r["server_queue_rejections"], f["rejected"] + r["probe_rejected"])
                self.assertGreater(r["probe_rejected"], 20)
                self.assertGreater(r["loaded_gaps"], 100)
        # The median of the rounds: one round disturbed by another job on the machine does not
        # decide; a real regression shows in every round.
        self.assertLess(summary["reject_p99_ms"], REJECT_P99_LIMIT_S * 1e3)
        self.assertLessEqual(summary["itl_p99_ratio"], ITL_RATIO_LIMIT,
                             "admitted p99 ITL over 2x the unloaded p99 ITL")


def flood_main(argv):
    """overload_test.py --flood PORT RATE SECONDS OUT: open-loop Poisson arrivals at RATE per
    second for SECONDS, each call on a pool thread; writes what happened to OUT as JSON."""
    port, rate, seconds, out = int(argv[0]), float(argv[1]), float(argv[2]), argv[3]
    seed = int(argv[4]) if len(argv) > 4 else 0
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = rpc.AnchorServeStub(channel)
    rng = random.Random(11 + seed)
    calls, lag = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=RUNNING + WAITING + 32) as pool:
        t0 = time.perf_counter()
        due = t0
        while due - t0 < seconds:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            lag.append(time.perf_counter() - due)
            calls.append(pool.submit(Stream, stub, rng.choice(PROMPTS)))
            due += rng.expovariate(rate)
        offered_s = time.perf_counter() - t0
        results = [c.result() for c in calls]
    codes = {}
    for r in results:
        codes[r.code.name] = codes.get(r.code.name, 0) + 1
    rejected = [r for r in results if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    admitted = [r for r in results if r.code != grpc.StatusCode.RESOURCE_EXHAUSTED]
    gaps = [g for r in admitted for g in r.gaps]
    reject_s = [r.end - r.start for r in rejected]
    with open(out, "w") as f:
        json.dump(dict(
            target_per_s=round(rate, 1), offered_per_s=round(len(results) / offered_s, 1),
            calls=len(results), rejected=len(rejected), admitted=len(admitted), codes=codes,
            admitted_per_s=round(len(admitted) / offered_s, 2),
            reject_p50_ms=ms(percentile(reject_s, 0.5)),
            reject_p99_ms=ms(percentile(reject_s, 0.99)),
            itl_p50_ms=ms(percentile(gaps, 0.5)), itl_p99_ms=ms(percentile(gaps, 0.99)),
            schedule_lag_p99_ms=ms(percentile(lag, 0.99))), f)
    channel.close()


def _sample(text, name):
    m = re.search(re.escape(name) + r" ([0-9.e+-]+)", text)
    return float(m.group(1)) if m else 0.0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        flood_main(sys.argv[2:])
    else:
        unittest.main(verbosity=2)
