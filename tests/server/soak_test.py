#!/usr/bin/env python3
"""Bounded soak of the real anchorserve binary on 127.0.0.1 (docs/RELIABILITY.md, "Soak").

Many client threads, each with its own channel (renewed every few jobs), send a mix of one-shot
requests and multi-turn sessions. Every Generate call has a fate:

  normal    runs to its end: the last message carries finish_reason and usage, the token count
            matches usage, a session turn's cached_tokens equals the session's committed history
  cancel    the client cancels after a few tokens (call.cancel())
  deadline  a deadline far shorter than the generation: it must end DEADLINE_EXCEEDED
  close     the client closes its channel mid-stream without cancelling the call
  kill      streams of a child process that is SIGKILLed mid-stream (the kernel closes the socket);
            a session whose turn died with it must be usable again
  freeze    streams of a child process that is SIGSTOPped mid-stream: the connection stays open,
            nobody reads or answers pings; the server's keepalive must reap it

A few normal one-shots are "probes": a fixed greedy prompt whose tokens must equal the reference
taken before the load (no state leaks between requests under preemption and cancellation).

At the end: the process never died; every stream ended with a status on both sides (the server's
anchorserve_requests_total{rpc="Generate"} accounts for every call); no request is running or
waiting; every session was deleted and the KV pool is 100% free; open descriptors are back to
their baseline; the RSS over the second half of the load is within 5% of the first half after warm-up;
SIGTERM exits 0.

Environment: E2E_ANCHORSERVE_BIN, E2E_MODEL, E2E_PY_STUBS (as grpc_e2e_test.py), and
  SOAK_REQUESTS (2400)  Generate calls in the plan (scripts/reliability.sh runs 20000)
  SOAK_CLIENTS (12)     client threads
  SOAK_SEED (1)         the plan's random seed
  SOAK_REPORT           write the figures as JSON to this file
The same file run as `soak_test.py --child ...` is the child process of the kill/freeze fates."""
import json
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_e2e_test import Server, grpc, pb, rpc  # noqa: E402

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "2400"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "12"))
SEED = int(os.environ.get("SOAK_SEED", "1"))
REPORT = os.environ.get("SOAK_REPORT")

# Share of Generate calls per fate (docs/RELIABILITY.md: 30% cancelled, 10% deadlines,
# clients that vanish).
FATES = {"normal": 0.54, "cancel": 0.30, "deadline": 0.10, "close": 0.02, "kill": 0.02,
         "freeze": 0.02}
SESSION_SHARE = 0.5       # of Generate calls that are session turns
CHILD_STREAMS = 4         # streams per killed or frozen child process
PROBE_SHARE = 0.05        # of normal one-shots
# Calls before the RSS baseline: allocator pools and the KV pool's touched pages reach their
# working size within about 600 calls of this mix.
WARMUP = min(max(0.15 * REQUESTS, 600), 0.5 * REQUESTS)
RSS_GROWTH_LIMIT = 0.05   # not checked against a sanitizer build (its shadow memory grows)
LONG = 2000               # max_tokens of streams that must not finish on their own
HARD_TIMEOUT = 120        # s: a normal or cancelled stream still open after this has hung
KEEPALIVE = ["--grpc.keepalive_time=2s", "--grpc.keepalive_timeout=2s"]
PROBE = dict(prompt="The lighthouse keeper counted the ships. None came back.",
             max_tokens=16, temperature=0.0, ignore_eos=True)

SENTENCES = [
    "The old captain opened the letter.", "He read it twice by the window.",
    "The storm came at night.", "The ship was ready before dawn.",
    "Anna watched the river from the bridge.", "The water was dark and fast.",
    "Tom found the book under the stairs.", "He wrote a letter to his brother.",
    "The village was quiet in winter.", "Snow covered the road to the mill.",
    "A dog barked somewhere far away.", "The baker lit his oven at four.",
    "Nobody knew where the key had gone.", "The train was late again.",
    "She counted the coins on the table.", "The garden smelled of rain.",
    "Two birds argued on the fence.", "The teacher closed the window.",
    "Why did the lamp go out?", "Bring the map and the rope!",
]


def sentences(rng, lo=1, hi=3):
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(lo, hi)))


# ------------------------------------------------------------------------------ the child

def child_main(argv):
    """soak_test.py --child PORT MAX_TOKENS ID...: one channel, one stream per ID ("-" for a
    one-shot, else a session id); prints READY once every stream has a token, then waits to be
    killed or stopped. Prints FAIL and exits 1 if a stream ends early."""
    port, max_tokens, ids = int(argv[0]), int(argv[1]), argv[2:]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = rpc.AnchorServeStub(channel)
    got = threading.Semaphore(0)

    def stream(sid):
        fields = dict(prompt="A child speaks. It will vanish soon.", max_tokens=max_tokens,
                      ignore_eos=True, temperature=0.0)
        if sid != "-":
            fields["session_id"] = sid
        try:
            for i, _ in enumerate(stub.Generate(pb.GenerateRequest(**fields), timeout=600)):
                if i == 0:
                    got.release()
        except grpc.RpcError as e:
            print(f"FAIL {sid} {e.code()} {e.details()}", flush=True)
            os._exit(1)
        print(f"FAIL {sid} finished before the kill", flush=True)
        os._exit(1)

    for sid in ids:
        threading.Thread(target=stream, args=(sid,), daemon=True).start()
    for _ in ids:
        got.acquire()
    print("READY", flush=True)
    while True:
        time.sleep(3600)


# ------------------------------------------------------------------------------ the plan

def make_plan(total, seed):
    """Jobs for the worker threads: ("oneshot", fate), ("session", [fates]), ("vanish", mode,
    [kinds]) where kinds are "oneshot" or "session". Exactly `total` planned Generate calls
    (session set-up and follow-up turns of vanish jobs come on top)."""
    rng = random.Random(seed)
    names, weights = list(FATES), list(FATES.values())
    jobs, pending, planned = [], {"kill": [], "freeze": []}, 0
    while planned < total:
        if rng.random() < SESSION_SHARE:
            turns = min(rng.randint(2, 6), total - planned)
            fates = rng.choices(names, weights, k=turns)
            kept = [f for f in fates if f not in pending]
            for f in fates:
                if f in pending:
                    pending[f].append("session" if f == "kill" else "oneshot")
            if kept:
                jobs.append(("session", kept))
            planned += turns
        else:
            fate = rng.choices(names, weights)[0]
            if fate in pending:
                pending[fate].append("oneshot")
            else:
                jobs.append(("oneshot", fate))
            planned += 1
        for mode, kinds in pending.items():
            if len(kinds) >= CHILD_STREAMS:
                jobs.append(("vanish", mode, kinds[:CHILD_STREAMS]))
                del kinds[:CHILD_STREAMS]
    for mode, kinds in pending.items():
        if kinds:
            jobs.append(("vanish", mode, kinds))
    return jobs


# ------------------------------------------------------------------------------ the tally

class Tally:
    """What the clients saw: Generate calls by fate and outcome, and every violation."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}         # (fate, outcome) -> count
        self.violations = []
        self.done = 0           # Generate calls finished (for progress and warm-up)
        self.frozen_pids = []
        self.busy_deletes = 0
        self.silent_deadlines = 0  # deadline calls that ended before any message

    def call(self, fate, outcome):
        with self.lock:
            self.calls[(fate, outcome)] = self.calls.get((fate, outcome), 0) + 1
            self.done += 1

    def bad(self, message):
        with self.lock:
            self.violations.append(message)

    def count(self, fate=None, outcome=None):
        with self.lock:
            return sum(n for (f, o), n in self.calls.items()
                       if (fate is None or f == fate) and (outcome is None or o == outcome))


def code_name(code):
    return code.name if code is not None else "NONE"


class Client:
    """One worker thread's view: a channel renewed every few jobs."""

    RENEW_EVERY = 25

    def __init__(self, port, tally, probe_tokens, rng):
        self.port, self.tally, self.probe_tokens, self.rng = port, tally, probe_tokens, rng
        self.channel, self.jobs = None, 0
        self.renew()

    def renew(self):
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        # Connected before the first call, so that a short deadline is not spent on the
        # handshake and every call reaches the server (its count is checked against ours).
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = rpc.AnchorServeStub(self.channel)

    def close(self):
        self.channel.close()

    def run(self, job):
        self.jobs += 1
        if self.jobs % self.RENEW_EVERY == 0:
            self.renew()
        if job[0] == "oneshot":
            self.oneshot(job[1])
        elif job[0] == "session":
            self.session(job[1])
        else:
            self.vanish(job[1], job[2])

    # -- one Generate call with a fate; returns the final usage of a normal call, else None

    def request_fields(self, fate, session):
        rng = self.rng
        fields = dict(prompt=sentences(rng))
        if fate == "normal":
            fields["max_tokens"] = rng.randint(1, 24)
            fields["ignore_eos"] = rng.random() < 0.5
            if rng.random() < 0.5:
                fields.update(temperature=0.8, top_p=0.95, seed=rng.randint(1, 10 ** 6))
            else:
                fields["temperature"] = 0.0
            if not session:
                r = rng.random()
                if r < 0.1:
                    del fields["prompt"]
                    fields["messages"] = [sentences(rng, 1, 1), sentences(rng, 1, 2)]
                elif r < 0.2:
                    fields["mode"] = pb.ATTENTION_MODE_FULL
        else:
            fields.update(max_tokens=LONG, ignore_eos=True, temperature=0.0)
        if session:
            fields["session_id"] = session
        return fields

    def generate(self, fate, session=None, history=None, fields=None):
        """Runs one call. `history` (sessions): the committed full_kv_tokens, updated on OK."""
        rng = self.rng
        fields = fields or self.request_fields(fate, session)
        timeout = rng.uniform(0.05, 0.4) if fate == "deadline" else HARD_TIMEOUT
        stop_after = rng.randint(1, 6) if fate in ("cancel", "close") else None
        channel = None
        stub = self.stub
        if fate == "close":
            channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
            stub = rpc.AnchorServeStub(channel)
        call = stub.Generate(pb.GenerateRequest(**fields), timeout=timeout)
        msgs = []
        details = ""
        try:
            for msg in call:
                msgs.append(msg)
                if stop_after is not None and len(msgs) >= stop_after:
                    if fate == "cancel":
                        call.cancel()
                    else:
                        channel.close()  # no cancel: the connection just goes away
                        channel = None
                        self.tally.call(fate, "CLOSED")
                        return None
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            details = e.details()
        finally:
            if channel is not None:  # a close-fate call that ended before its close
                channel.close()
        self.tally.call(fate, code_name(code))
        if fate == "deadline" and code == grpc.StatusCode.DEADLINE_EXCEEDED and not msgs:
            with self.tally.lock:  # it may have expired before the server's handler ran
                self.tally.silent_deadlines += 1
        expected = {"normal": grpc.StatusCode.OK, "cancel": grpc.StatusCode.CANCELLED,
                    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED}.get(fate)  # close: none
        if code == grpc.StatusCode.FAILED_PRECONDITION and session and "busy" in details:
            return "busy"
        if code != expected:
            self.tally.bad(f"{fate} call ended {code_name(code)}"
                           + ("" if code == grpc.StatusCode.OK else f": {details}"))
            return None
        if fate != "normal":
            return None
        last = msgs[-1] if msgs else None
        if last is None or last.finish_reason not in (pb.FINISH_REASON_STOP,
                                                      pb.FINISH_REASON_LENGTH):
            self.tally.bad(f"normal call without a final finish_reason: {last}")
            return None
        tokens = [t for m in msgs for t in m.token_ids]
        usage = last.usage
        # A stop token (EOS) counts in completion_tokens but is not streamed.
        hidden = 1 if last.finish_reason == pb.FINISH_REASON_STOP else 0
        if (len(tokens) not in (usage.completion_tokens, usage.completion_tokens - hidden)
                or usage.completion_tokens > fields["max_tokens"]):
            self.tally.bad(f"{len(tokens)} tokens streamed, usage says {usage.completion_tokens}"
                           f" (max_tokens {fields['max_tokens']})")
        if last.finish_reason == pb.FINISH_REASON_LENGTH and len(tokens) != fields["max_tokens"]:
            self.tally.bad(f"LENGTH after {len(tokens)} of {fields['max_tokens']} tokens")
        if any(m.finish_reason != pb.FINISH_REASON_UNSPECIFIED for m in msgs[:-1]):
            self.tally.bad("a finish_reason before the last message")
        if history is not None:
            if usage.cached_tokens != history[0]:
                self.tally.bad(f"session turn reused {usage.cached_tokens} cached tokens, "
                               f"the session had committed {history[0]}")
            history[0] = usage.full_kv_tokens
        if fields.get("prompt") == PROBE["prompt"] and tokens != self.probe_tokens:
            self.tally.bad(f"probe tokens {tokens} differ from the reference {self.probe_tokens}")
        return usage

    def turn(self, fate, session, history, patience=10.0):
        """A session turn, retried while the session is busy with a turn the server has not
        finished cleaning up yet (the previous turn was cancelled or its client vanished)."""
        deadline = time.time() + patience
        while True:
            result = self.generate(fate, session, history)
            if result != "busy":
                return result
            if time.time() > deadline:
                self.tally.bad(f"session still busy {patience} s after its last turn ended")
                return None
            time.sleep(0.02)

    # -- jobs

    def oneshot(self, fate):
        if fate == "normal" and self.rng.random() < PROBE_SHARE:
            self.generate("normal", fields=dict(PROBE))
        else:
            self.generate(fate)

    def create_session(self):
        return self.stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session.session_id

    def delete_session(self, sid, patience=10.0):
        """Deletes, retrying while the session is busy: right after a cancelled turn the server
        may not have ended that turn yet (FAILED_PRECONDITION "session busy", docs/API.md)."""
        deadline = time.time() + patience
        while True:
            try:
                self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), timeout=30)
                return
            except grpc.RpcError as e:
                busy = e.code() == grpc.StatusCode.FAILED_PRECONDITION and "busy" in e.details()
                if not busy or time.time() > deadline:
                    self.tally.bad(f"DeleteSession: {code_name(e.code())} {e.details()}")
                    return
                with self.tally.lock:
                    self.tally.busy_deletes += 1
            time.sleep(0.02)

    def session(self, fates):
        sid = self.create_session()
        history = [0]
        for fate in fates:
            self.turn(fate, sid, history)
        self.delete_session(sid)

    def vanish(self, mode, kinds):
        """Streams in a child process that dies (kill) or freezes (freeze) mid-stream. Session
        streams get a session with one committed turn; after the kill the session takes a new
        turn on the same history."""
        sessions = []
        for kind in kinds:
            if kind == "session":
                sid = self.create_session()
                history = [0]
                self.turn("normal", sid, history)
                sessions.append((sid, history))
        ids = [sid for sid, _ in sessions] + ["-"] * (len(kinds) - len(sessions))
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", str(self.port), str(LONG), *ids],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = child.stdout.readline().strip()
        if line != "READY":
            self.tally.bad(f"vanishing child did not start its streams: {line!r}")
            child.kill()
        elif mode == "kill":
            child.kill()
        else:
            child.send_signal(signal.SIGSTOP)
            with self.tally.lock:
                self.tally.frozen_pids.append(child)
        for _ in ids:
            self.tally.call(mode, "VANISHED")
        # This channel sat idle while the child ran, and grpcio answers no keepalive ping on an
        # idle channel: the server (keepalive 2 s) may be closing it right now. A fresh one.
        self.renew()
        if mode == "kill":
            child.wait()
            for sid, history in sessions:
                self.turn("normal", sid, history)
                self.delete_session(sid)
        child.stdout.close()


# ------------------------------------------------------------------------------ metrics

def sample(text, name, labels=""):
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def generate_totals(text):
    """Server-side count of finished Generate streams, by status code."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'anchorserve_requests_total\{code="([A-Z_]+)",rpc="Generate"\} ([0-9.e+-]+)', text)}


class Monitor(threading.Thread):
    """Scrapes /metrics about once a second: RSS, descriptors, KV, queue, with the progress."""

    def __init__(self, server, tally):
        super().__init__(daemon=True)
        self.server, self.tally = server, tally
        self.samples = []
        self.stop = threading.Event()

    def pool_rss(self):
        """Resident bytes of the largest anonymous mapping (the KV pool) and of the rest,
        from /proc/PID/smaps (the server runs on this machine)."""
        largest, total, size, rss = 0, 0, 0, 0
        anonymous = False
        with open(f"/proc/{self.server.proc.pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    anonymous = len(parts) < 6
                elif line.startswith("Size:"):
                    size = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                    total += rss
                    if anonymous and size >= 128 << 20:
                        largest = max(largest, rss)
        return largest, total - largest

    def scrape(self):
        text = self.server.metrics()
        pool, other = self.pool_rss()
        return dict(t=time.time(), done=self.tally.done,
                    rss=sample(text, "anchorserve_process_resident_memory_bytes"),
                    fds=sample(text, "anchorserve_process_open_fds"),
                    pool_rss=pool, other_rss=other,
                    kv_used=sample(text, "anchorserve_kv_pool_blocks", 'state="used"'),
                    running=sample(text, "anchorserve_requests_running"),
                    waiting=sample(text, "anchorserve_requests_waiting"))

    def run(self):
        while not self.stop.wait(1.0):
            try:
                self.samples.append(self.scrape())
            except OSError as e:  # the server died: the main thread reports it
                self.tally.bad(f"/metrics scrape failed: {e}")
                return


def wait_for(predicate, timeout, step=0.25):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


# ------------------------------------------------------------------------------ the test

class Soak(unittest.TestCase):
    def test_soak(self):
        started = time.time()
        server = Server("--threads=1", *KEEPALIVE)
        tally = Tally()
        figures = {"requests_planned": REQUESTS, "clients": CLIENTS, "seed": SEED}
        try:
            self.run_soak(server, tally, figures)
        finally:
            for child in tally.frozen_pids:
                child.kill()
                child.wait()
            alive = server.proc.poll() is None
            code = server.stop(timeout=90) if alive else server.proc.returncode
            figures["exit_code"] = code
            figures["crashes"] = 0 if alive and code == 0 else 1
            figures["wall_s"] = round(time.time() - started, 1)
            figures["violations"] = tally.violations[:50]
            if REPORT:
                with open(REPORT, "w") as f:
                    json.dump(figures, f, indent=2)
            print(json.dumps({k: v for k, v in figures.items() if k != "violations"}, indent=1),
                  file=sys.stderr)
        self.assertTrue(alive, "the server died:\n" + "".join(server.log_lines[-40:]))
        self.assertEqual(code, 0, "exit code after SIGTERM:\n" + "".join(server.log_lines[-40:]))
        self.assertEqual(tally.violations, [], f"{len(tally.violations)} violations")

    def run_soak(self, server, tally, figures):
        port = server.port
        probe = list(server.stub.Generate(pb.GenerateRequest(**PROBE), timeout=60))
        probe_tokens = [t for m in probe for t in m.token_ids]
        time.sleep(2.1)  # the process gauges are refreshed once a second, from the start
        baseline = Monitor(server, tally).scrape()
        jobs = queue.Queue()
        for job in make_plan(REQUESTS, SEED):
            jobs.put(job)
        monitor = Monitor(server, tally)
        monitor.start()

        def worker(index):
            client = Client(port, tally, probe_tokens, random.Random(SEED * 1000 + index))
            try:
                while True:
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        client.run(job)
                    except Exception as e:  # a broken worker must fail the soak, not hang it
                        tally.bad(f"worker {index}: {type(e).__name__}: {e}")
            finally:
                client.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
        load_start = time.time()
        for t in threads:
            t.start()
        last_report = time.time()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1)
            if server.proc.poll() is not None:
                tally.bad(f"the server exited with {server.proc.returncode} during the load")
                break
            if time.time() - last_report > 30:
                last_report = time.time()
                print(f"soak: {tally.done} calls, {time.time() - load_start:.0f} s",
                      file=sys.stderr, flush=True)
        load_end = time.time()
        load_s = load_end - load_start

        # Frozen children: the server's keepalive must already have reaped their connections.
        def settled():
            text = server.metrics()
            return (sample(text, "anchorserve_requests_running") == 0
                    and sample(text, "anchorserve_requests_waiting") == 0)
        if not wait_for(settled, 30):
            tally.bad("requests still running or waiting 30 s after the load")
        for child in tally.frozen_pids:
            child.kill()
            child.wait()
        tally.frozen_pids.clear()
        client_calls = tally.count()
        # The last streams end on the server (killed children) once their sockets close.
        wait_for(lambda: sum(generate_totals(server.metrics()).values()) - 1 >= client_calls, 15)
        time.sleep(1.5)  # one more poll of the server's gauges, with every stream ended
        end_of_load = monitor.scrape()
        monitor.stop.set()
        monitor.join()

        # Every session was deleted by its client; nothing may be left of them. (A fresh
        # channel: the first one sat idle through the load, see Client.vanish.)
        # Its own subchannel pool: grpcio otherwise shares the subchannel of an earlier
        # channel to the same address, whose socket the server may have closed under load
        # ("Socket closed"); wait_for_ready rides out the reconnect.
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            left = rpc.AnchorServeStub(channel).ListSessions(
                pb.ListSessionsRequest(page_size=1000), timeout=30, wait_for_ready=True)
        if left.sessions:
            tally.bad(f"{len(left.sessions)} sessions left after every client deleted its own")
        kv_free = wait_for(lambda: server.metric("anchorserve_kv_pool_blocks", 'state="used"') == 0,
                           10)
        text = server.metrics()
        used = sample(text, "anchorserve_kv_pool_blocks", 'state="used"')
        free = sample(text, "anchorserve_kv_pool_blocks", 'state="free"')
        if not kv_free:
            tally.bad(f"KV pool not free after the soak: {used} blocks used")
        fds_back = wait_for(
            lambda: Monitor(server, tally).scrape()["fds"] <= baseline["fds"] + 4, 15)
        final = Monitor(server, tally).scrape()
        if not fds_back:
            fd_dir = f"/proc/{server.proc.pid}/fd"
            links = sorted(os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir))
            tally.bad(f"open descriptors {final['fds']:.0f} vs {baseline['fds']:.0f} before the "
                      f"load: {links}")

        # Server-side accounting of every stream against what the clients did.
        totals = generate_totals(text)
        server_calls = sum(totals.values()) - 1  # the probe reference call
        frozen = tally.count("freeze")
        # NOT_FOUND: a session turn whose deadline passed before the server started it, and
        # whose client had meanwhile deleted the session (the stream still ends with a status).
        stale = totals.get("NOT_FOUND", 0)
        unexpected = {c: n for c, n in totals.items()
                      if n and c not in ("OK", "CANCELLED", "DEADLINE_EXCEEDED",
                                         "FAILED_PRECONDITION", "NOT_FOUND")}
        if unexpected:
            tally.bad(f"server-side Generate statuses that no client caused: {unexpected}")
        # A deadline that passed before the server's handler ran leaves no trace there; every
        # other call must have ended on the server with a status.
        unseen = client_calls - server_calls
        if not 0 <= unseen <= tally.silent_deadlines:
            tally.bad(f"the server ended {server_calls:.0f} Generate streams, the clients made "
                      f"{client_calls} ({tally.silent_deadlines} deadlines with no message)")
        ok_gap = totals.get("OK", 0) - 1 - tally.count(outcome="OK")
        if not 0 <= ok_gap <= frozen:  # a frozen child's stream may finish into TCP buffers
            tally.bad(f"server OK {totals.get('OK', 0) - 1:.0f} vs client OK "
                      f"{tally.count(outcome='OK')} (+ up to {frozen} frozen)")
        if totals.get("FAILED_PRECONDITION", 0) != tally.count(outcome="FAILED_PRECONDITION"):
            tally.bad("server and clients disagree on busy-session refusals")
        # Every stream that ended early is a cancellation on the server: a deadline when the
        # server saw it pass (gRPC's timer, or the client's timer firing a transit time before
        # the server's copy of the deadline), else a client cancellation; never a drain.
        deadlines = tally.count("deadline")
        ended_early = tally.count("cancel") + tally.count("close") + tally.count("kill")
        cancelled = {r: sample(text, "anchorserve_cancellations_total", f'reason="{r}"')
                     for r in ("client", "deadline", "drain")}
        server_early = totals.get("CANCELLED", 0) + totals.get("DEADLINE_EXCEEDED", 0)
        if stale > 0.01 * deadlines:
            tally.bad(f"{stale:.0f} Generate calls NOT_FOUND on the server, more than the "
                      f"deadline turns that can outlive their session")
        if not (ended_early + deadlines - stale - unseen <= server_early
                <= ended_early + deadlines + frozen):
            tally.bad(f"server CANCELLED + DEADLINE_EXCEEDED {server_early:.0f}, client-side "
                      f"{ended_early} early ends + {deadlines} deadlines (+ up to {frozen} frozen)")
        if cancelled["client"] + cancelled["deadline"] != server_early or cancelled["drain"] != 0:
            tally.bad(f"server cancellations {cancelled} vs {server_early:.0f} early ends")
        if not 0.9 * deadlines <= cancelled["deadline"] + stale + unseen <= deadlines:
            tally.bad(f"server deadline cancellations {cancelled['deadline']:.0f}, clients' "
                      f"expired deadlines {deadlines}")

        # Memory after warm-up: the first half of the measured part (the calls after warm-up)
        # against its second half, medians of the once-a-second samples. A leak grows with
        # the calls and moves the second half's median up by half its growth; the working set
        # of batched decode steps moves with the batch (about +-7% of RSS at this size, seen
        # in an 8,000-call run whose RSS stayed flat), which medians of halves absorb and
        # medians of tenths (a few samples each at CI size) did not. The RSS after the load
        # is reported too.
        under_load = [s for s in monitor.samples if s["t"] <= load_end and s["done"] >= WARMUP]
        half = WARMUP + (client_calls - WARMUP) / 2
        first = [s["rss"] for s in under_load if s["done"] <= half] or \
            [under_load[0]["rss"] if under_load else end_of_load["rss"]]
        last = [s["rss"] for s in under_load if s["done"] > half] or \
            [under_load[-1]["rss"] if under_load else end_of_load["rss"]]
        rss_warm, rss_last = statistics.median(first), statistics.median(last)
        rss_peak = max([s["rss"] for s in under_load] + [end_of_load["rss"]])
        growth = (rss_last - rss_warm) / rss_warm
        with open(f"/proc/{server.proc.pid}/maps") as f:
            maps = f.read()
        sanitized = "libasan.so" in maps or "libtsan.so" in maps
        if growth >= RSS_GROWTH_LIMIT and not sanitized:
            tally.bad(f"RSS grew {growth:.1%} after warm-up ({rss_warm / 2**20:.1f} -> "
                      f"{rss_last / 2**20:.1f} MiB)")

        figures.update(
            generate_calls=client_calls,
            by_fate={f: tally.count(f) for f in FATES},
            by_outcome={o: tally.count(outcome=o) for o in sorted({o for _, o in tally.calls})},
            busy_retries=tally.count(outcome="FAILED_PRECONDITION"),
            busy_delete_retries=tally.busy_deletes,
            deadlines_before_any_message=tally.silent_deadlines,
            calls_the_server_never_started=int(unseen),
            server_generate_by_code={c: int(n) for c, n in totals.items() if n},
            server_cancellations={r: int(n) for r, n in cancelled.items()},
            load_s=round(load_s, 1),
            calls_per_s=round(client_calls / load_s, 1),
            kv_blocks_used_end=used, kv_blocks_free_end=free,
            kv_free_ratio_end=free / (used + free) if used is not None and free else None,
            rss_start_mib=round(baseline["rss"] / 2**20, 1),
            rss_after_warmup_mib=round(rss_warm / 2**20, 1),
            rss_end_of_load_mib=round(rss_last / 2**20, 1),
            rss_after_load_mib=round(end_of_load["rss"] / 2**20, 1),
            kv_pool_rss_after_warmup_mib=round(under_load[0]["pool_rss"] / 2**20, 1)
            if under_load else None,
            kv_pool_rss_after_load_mib=round(end_of_load["pool_rss"] / 2**20, 1),
            warmup_calls=int(WARMUP),
            rss_peak_mib=round(rss_peak / 2**20, 1),
            rss_after_cleanup_mib=round(final["rss"] / 2**20, 1),
            rss_growth=round(growth, 4),
            rss_checked=not sanitized,
            open_fds_start=baseline["fds"], open_fds_end=final["fds"],
            rss_timeline_mib=[(s["done"], round(s["rss"] / 2**20, 1),
                               round(s["pool_rss"] / 2**20, 1), round(s["other_rss"] / 2**20, 1))
                              for s in monitor.samples[::max(1, len(monitor.samples) // 40)]],
            server_alive=server.proc.poll() is None)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        unittest.main(verbosity=2)
