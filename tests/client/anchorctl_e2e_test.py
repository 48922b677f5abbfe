#!/usr/bin/env python3
"""Black-box tests of anchorctl against the real anchorserve binary on 127.0.0.1.

A tiny model is written by `anchor-eval init-model` into a temporary directory, anchorserve is
started on 127.0.0.1:0 (the port is read from its "serving ... listen=HOST:PORT" log line) and
every test runs the anchorctl binary as a user would: generate (text and NDJSON), a piped
3-turn chat, the session round trip, health, bench, exit codes and Ctrl-C. The bearer token
tests use a small Python gRPC health server that records the metadata it receives (the real
server is started without auth). The server is stopped with SIGTERM at the end and must exit 0.

Environment (set by CTest): ANCHORCTL_BIN, E2E_ANCHORSERVE_BIN, ANCHOR_EVAL_BIN (not
ANCHORSERVE_*: the server reads those as configuration)."""
import json
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

ANCHORCTL = os.environ["ANCHORCTL_BIN"]
ANCHORSERVE = os.environ["E2E_ANCHORSERVE_BIN"]
ANCHOR_EVAL = os.environ["ANCHOR_EVAL_BIN"]
# anchorctl runs from the repository root, where bench finds ../shared/data when present.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

TURN_LINE = re.compile(
    r"^\[turn (\d+)\] ttft=([\d.]+)ms tok/s=([\d.]+) kept_kv=(\d+)/(\d+) C↓=([\d.]+)% "
    r"prompt=(\d+) cached=(\d+) completion=(\d+) finish=(\w+)$")

try:
    import grpc  # Debian python3-grpcio; only the token tests need it
except ImportError:  # pragma: no cover
    grpc = None


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "ANCHORCTL_TOKEN"}
    env.update(extra)
    return env


def anchorctl(*args, server=None, stdin=None, env=None, timeout=30):
    """Runs anchorctl; returns CompletedProcess with text stdout/stderr."""
    argv = [ANCHORCTL, *args]
    if server is not None:
        argv += ["--server", server]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env=env if env is not None else clean_env())


class Server:
    """anchorserve on 127.0.0.1:0 with a tiny model in a temporary directory."""

    def __init__(self, model_dir):
        self.log_lines = []
        # anchorserve reads ANCHORSERVE_* variables as configuration and refuses unknown ones
        # (a user's ANCHORCTL_TOKEN for anchorctl among them): start it without any.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANCHORSERVE_")}
        self.proc = subprocess.Popen(
            [ANCHORSERVE, "--model", model_dir, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.address = None
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log_lines.append(line)
            m = re.search(r" serving .*listen=([0-9.]+:\d+)", line)
            if m:
                self.address = m.group(1)
                break
        if self.address is None:
            self.proc.kill()
            raise RuntimeError("anchorserve did not start:\n" + "".join(self.log_lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log_lines.append(line)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        return code


class AnchorctlAgainstRealServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="anchorctl-e2e-")
        model = os.path.join(cls.tmp.name, "model")
        subprocess.run([ANCHOR_EVAL, "init-model", "--out", model], check=True,
                       capture_output=True, timeout=60)
        cls.server = Server(model)
        cls.addr = cls.server.address

    @classmethod
    def tearDownClass(cls):
        try:
            code = cls.server.stop()
        except subprocess.TimeoutExpired:
            cls.server.proc.kill()
            raise AssertionError("anchorserve ignored SIGTERM")
        finally:
            cls.tmp.cleanup()
        assert code == 0, f"anchorserve exit {code}:\n" + "".join(cls.server.log_lines[-20:])

    def ctl(self, *args, **kwargs):
        return anchorctl(*args, server=self.addr, **kwargs)

    def assertExit(self, result, code):
        self.assertEqual(result.returncode, code,
                         f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")

    # --- health -----------------------------------------------------------------------------

    def test_health_serving_exits_zero(self):
        result = self.ctl("health")
        self.assertExit(result, 0)
        self.assertEqual(result.stdout.strip(), "SERVING")
        result = self.ctl("health", "--service", "anchorserve.v1.AnchorServe")
        self.assertExit(result, 0)

    # --- generate ---------------------------------------------------------------------------

    def test_generate_streams_text_and_ndjson_agrees(self):
        prompt = "The old captain opened the letter. He read it twice."
        text = self.ctl("generate", "--prompt", prompt, "--max-tokens", "8",
                        "--temperature", "0")
        self.assertExit(text, 0)
        self.assertTrue(text.stdout.strip())
        summary = [l for l in text.stderr.splitlines() if l.startswith("[done]")]
        self.assertEqual(len(summary), 1, text.stderr)
        self.assertIn("completion=8 finish=length", summary[0])

        ndjson = self.ctl("generate", "--prompt", prompt, "--max-tokens", "8",
                          "--temperature", "0", "--json")
        self.assertExit(ndjson, 0)
        messages = [json.loads(line) for line in ndjson.stdout.splitlines()]
        self.assertGreater(len(messages), 1, "one object per response message")
        for m in messages:
            self.assertEqual(set(m), {"request_id", "text", "token_ids", "finish_reason",
                                      "usage"})
        for m in messages[:-1]:
            self.assertIsNone(m["finish_reason"])
            self.assertIsNone(m["usage"])
        last = messages[-1]
        self.assertEqual(last["finish_reason"], "length")
        self.assertEqual(last["usage"]["completion_tokens"], 8)
        self.assertGreater(last["usage"]["prompt_tokens"], 0)
        self.assertEqual(sum(len(m["token_ids"]) for m in messages), 8)
        self.assertEqual(len({m["request_id"] for m in messages}), 1)
        # Greedy: the text mode printed exactly the concatenated deltas.
        self.assertEqual("".join(m["text"] for m in messages) + "\n", text.stdout)

    # --- chat -------------------------------------------------------------------------------

    def test_chat_three_piped_turns_reuse_the_session(self):
        turns = ["The storm came at night. The ship was ready.",
                 "Anna watched the river. The bridge was long.",
                 "Tom found the book. He wrote a letter."]
        result = self.ctl("chat", "--max-tokens", "6", "--temperature", "0",
                          stdin="\n".join(turns) + "\n")
        self.assertExit(result, 0)
        m = re.search(r"anchorctl chat: session (\S+)", result.stderr)
        self.assertIsNotNone(m, result.stderr)
        session_id = m.group(1)
        lines = [TURN_LINE.match(l) for l in result.stderr.splitlines()
                 if l.startswith("[turn ")]
        self.assertEqual(len(lines), 3, result.stderr)
        self.assertTrue(all(lines), result.stderr)
        parsed = [dict(n=int(x[1]), kept=int(x[4]), full=int(x[5]), reduction=float(x[6]),
                       prompt=int(x[7]), cached=int(x[8]), completion=int(x[9]), finish=x[10])
                  for x in lines]
        self.assertEqual([p["n"] for p in parsed], [1, 2, 3])
        self.assertEqual(parsed[0]["cached"], 0)
        for before, after in zip(parsed, parsed[1:]):
            # A turn reuses everything the session saw so far and prefills only its own tokens.
            self.assertGreater(after["cached"], 0)
            self.assertEqual(after["cached"], before["full"])
        for p in parsed:
            self.assertEqual(p["completion"], 6)
            self.assertEqual(p["finish"], "length")
            self.assertLess(p["kept"], p["full"])
            self.assertGreater(p["reduction"], 0)
        self.assertTrue(result.stdout.strip(), "the replies stream to stdout")
        info = json.loads(self.ctl("session", "get", session_id, "--json").stdout)
        self.assertEqual(info["turns"], 3)
        self.assertEqual(info["full_kv_tokens"], parsed[-1]["full"])

        # --session continues it; turn numbers go on from the session's count.
        more = self.ctl("chat", "--session", session_id, "--max-tokens", "2",
                        stdin="One more turn.\n")
        self.assertExit(more, 0)
        self.assertIn("[turn 4]", more.stderr)
        self.assertExit(self.ctl("session", "delete", session_id), 0)

    def test_ctrl_c_cancels_the_stream_and_chat_goes_on(self):
        # Greedy decoding of the tiny model never reaches EOS within these lengths, so a
        # stream of 400 tokens (a few hundred ms) is still running when SIGINT arrives.
        proc = subprocess.Popen(
            [ANCHORCTL, "--server", self.addr, "chat", "--max-tokens", "400",
             "--temperature", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO_ROOT, env=clean_env())
        try:
            proc.stdin.write(b"Tell me a long story. It starts at night.\n")
            proc.stdin.flush()
            self.assertTrue(proc.stdout.read(1), "tokens arrive before Ctrl-C")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(input=b"A short turn now.\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = stderr.decode()
        self.assertEqual(proc.returncode, 0, stderr)
        self.assertRegex(stderr, r"\[turn 1\] .*finish=cancelled")
        self.assertRegex(stderr, r"\[turn 2\] .*completion=400 finish=length")
        session_id = re.search(r"anchorctl chat: session (\S+)", stderr).group(1)
        self.ctl("session", "delete", session_id)

        gen = subprocess.Popen(
            [ANCHORCTL, "--server", self.addr, "generate", "--prompt", "Go on. And on.",
             "--max-tokens", "400", "--temperature", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, env=clean_env())
        self.assertTrue(gen.stdout.read(1))
        gen.send_signal(signal.SIGINT)
        _, stderr = gen.communicate(timeout=30)
        self.assertEqual(gen.returncode, 1, "CANCELLED")
        self.assertIn(b"cancelled", stderr)

    # --- sessions ---------------------------------------------------------------------------

    def test_session_list_get_export_import_delete_round_trip(self):
        created = self.ctl("session", "create", "ctl-round-trip")
        self.assertExit(created, 0)
        self.assertEqual(created.stdout.strip(), "ctl-round-trip")
        self.assertExit(self.ctl("generate", "--session", "ctl-round-trip", "--prompt",
                                 "One sentence here. Another one there.", "--max-tokens", "4"),
                        0)
        listed = self.ctl("session", "list", "--json")
        self.assertExit(listed, 0)
        ids = [s["session_id"] for s in json.loads(listed.stdout)["sessions"]]
        self.assertIn("ctl-round-trip", ids)
        table = self.ctl("session", "list")
        self.assertRegex(table.stdout, r"(?m)^ctl-round-trip\s")

        got = json.loads(self.ctl("session", "get", "ctl-round-trip", "--json").stdout)
        self.assertEqual(got["turns"], 1)
        self.assertGreater(got["full_kv_tokens"], got["kept_kv_tokens"])
        text = self.ctl("session", "get", "ctl-round-trip")
        self.assertIn("session_id: ctl-round-trip", text.stdout)

        state = os.path.join(self.tmp.name, "state.bin")
        exported = self.ctl("session", "export", "ctl-round-trip", "--out", state)
        self.assertExit(exported, 0)
        self.assertGreater(os.path.getsize(state), 0)
        self.assertFalse(os.path.exists(state + ".part"))
        imported = self.ctl("session", "import", "ctl-round-trip-copy", "--in", state, "--json")
        self.assertExit(imported, 0)
        copy = json.loads(imported.stdout)
        self.assertEqual(copy["session_id"], "ctl-round-trip-copy")
        self.assertEqual(copy["full_kv_tokens"], got["full_kv_tokens"])
        self.assertEqual(copy["kept_kv_tokens"], got["kept_kv_tokens"])

        self.assertExit(self.ctl("session", "delete", "ctl-round-trip"), 0)
        self.assertExit(self.ctl("session", "get", "ctl-round-trip"), 5)
        self.assertExit(self.ctl("session", "delete", "ctl-round-trip-copy"), 0)

    # --- bench ------------------------------------------------------------------------------

    def session_ids(self):
        listed = self.ctl("session", "list", "--json")
        self.assertExit(listed, 0)
        return {s["session_id"] for s in json.loads(listed.stdout)["sessions"]}

    def test_bench_summary(self):
        sessions_before = self.session_ids()
        # --ignore-eos: a batched step's rounding depends on its batch, so whether a sampled
        # stream meets EOS within 8 tokens is not fixed; the token count below is.
        result = self.ctl("bench", "--requests", "6", "--concurrency", "2", "--turns", "2",
                          "--max-tokens", "8", "--ignore-eos", timeout=60)
        self.assertExit(result, 0)
        summary = json.loads(result.stdout)  # the JSON summary, always on stdout
        self.assertEqual(summary["requests"]["total"], 6)
        self.assertEqual(summary["requests"]["ok"], 6)
        self.assertEqual(summary["requests"]["errors"], 0)
        self.assertEqual(summary["requests"]["errors_by_status"], {})
        self.assertEqual(summary["kv_per_session"]["sessions"], 3, "6 requests = 3 x 2 turns")
        for name in ("ttft", "itl", "e2e"):
            d = summary["latency_ms"][name]
            self.assertGreater(d["count"], 0, name)
            self.assertGreater(d["p99"], 0, name)
            self.assertLessEqual(d["p50"], d["p99"], name)
        self.assertGreater(summary["throughput"]["output_tokens_per_s"], 0)
        self.assertEqual(summary["tokens"]["completion"], 6 * 8)
        self.assertGreater(summary["tokens"]["cached"], 0, "second turns reuse their session")
        kv = summary["kv_per_session"]
        self.assertLess(kv["kept_bytes"]["mean"], kv["full_bytes"]["mean"])
        self.assertGreater(kv["cache_reduction_overall"], 0)
        self.assertIn("TTFT", result.stderr)  # the human summary

        quiet = self.ctl("bench", "--requests", "4", "--concurrency", "2", "--turns", "2",
                         "--max-tokens", "4", "--rate", "50", "--json", "--no-progress",
                         timeout=60)
        self.assertExit(quiet, 0)
        self.assertEqual(len(quiet.stdout.splitlines()), 1, "--json: one line")
        summary = json.loads(quiet.stdout)
        self.assertEqual(summary["requests"]["ok"], 4)
        self.assertIn("schedule_lag", summary["latency_ms"])
        self.assertEqual(quiet.stderr, "")
        self.assertEqual(self.session_ids(), sessions_before, "bench deletes its sessions")

    # --- exit codes -------------------------------------------------------------------------

    def test_exit_codes_follow_the_grpc_status(self):
        unknown = self.ctl("generate", "--session", "no-such-session", "--prompt", "Hi.")
        self.assertExit(unknown, 5)
        self.assertIn("NOT_FOUND", unknown.stderr)
        self.assertExit(self.ctl("session", "get", "no-such-session"), 5)
        self.assertExit(self.ctl("chat", "--session", "no-such-session", stdin="Hi.\n"), 5)
        as_json = self.ctl("generate", "--session", "no-such-session", "--prompt", "Hi.",
                           "--json")
        self.assertEqual(json.loads(as_json.stdout.splitlines()[-1])["error"]["code"], 5)
        # Server-side validation: INVALID_ARGUMENT (3).
        self.assertExit(self.ctl("session", "create", "bad id!"), 3)
        # A deadline shorter than the stream: DEADLINE_EXCEEDED (4).
        self.assertExit(self.ctl("generate", "--prompt", "Slow.", "--max-tokens", "4000",
                                 "--temperature", "0", "--timeout", "0.05"), 4)
        # Nobody listening: UNAVAILABLE (14).
        self.assertExit(anchorctl("health", server="127.0.0.1:1"), 14)

    def test_bad_arguments_print_one_line_and_exit_2(self):
        for args in (["generate", "--prompt", "x", "--bogus"],
                     ["generate"],
                     ["generate", "--prompt", "x", "--mode", "sparse"],
                     ["generate", "--prompt", "x", "--max-tokens", "zero"],
                     ["session", "explode"],
                     ["session", "get"],
                     ["session", "export", "x"],
                     ["bench", "--concurrency", "0"],
                     ["bench", "--text", "/nonexistent/text.txt"],
                     ["frobnicate"],
                     ["health", "--token-file", "/nonexistent/token"]):
            with self.subTest(args=args):
                result = self.ctl(*args)
                self.assertExit(result, 2)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
                self.assertEqual(result.stdout, "")


class FakeHealthServer:
    """A grpc.health.v1 server in Python that answers SERVING only to `Bearer <token>` and
    records the authorization metadata it receives."""

    SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}

    def __init__(self, token):
        from concurrent import futures
        self.seen = []

        def check(request, context):
            auth = dict(context.invocation_metadata()).get("authorization")
            self.seen.append(auth)
            if auth != f"Bearer {token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown token")
            return self.SERVING

        handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=lambda b: b, response_serializer=lambda b: b)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop(None)


@unittest.skipIf(grpc is None, "python3-grpcio missing")
class BearerToken(unittest.TestCase):
    TOKEN = "s3cret-token-42"

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeHealthServer(cls.TOKEN)
        cls.tmp = tempfile.TemporaryDirectory(prefix="anchorctl-token-")

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()
        cls.tmp.cleanup()

    def setUp(self):
        self.fake.seen.clear()

    def token_file(self, contents):
        path = os.path.join(self.tmp.name, "token")
        with open(path, "w") as f:
            f.write(contents)
        return path

    def test_token_from_environment(self):
        result = anchorctl("health", server=self.fake.address,
                           env=clean_env(ANCHORCTL_TOKEN=self.TOKEN))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.fake.seen, [f"Bearer {self.TOKEN}"])

    def test_token_from_file_wins_over_environment(self):
        result = anchorctl("health", "--token-file", self.token_file(self.TOKEN + "\n"),
                           server=self.fake.address, env=clean_env(ANCHORCTL_TOKEN="other"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.fake.seen, [f"Bearer {self.TOKEN}"])

    def test_no_token_is_unauthenticated(self):
        result = anchorctl("health", server=self.fake.address)
        self.assertEqual(result.returncode, 16, result.stderr)  # UNAUTHENTICATED
        self.assertEqual(self.fake.seen, [None])

    def test_token_flag_is_rejected_before_any_call(self):
        for args in (["--token", self.TOKEN], [f"--token={self.TOKEN}"]):
            with self.subTest(args=args):
                result = anchorctl("health", *args, server=self.fake.address)
                self.assertEqual(result.returncode, 2)
                self.assertIn("--token-file", result.stderr)
                self.assertNotIn(self.TOKEN, result.stderr)
        self.assertEqual(self.fake.seen, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
