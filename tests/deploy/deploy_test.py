"""Checks of the deployment artefacts: helm/anchorserve, deploy/grafana, deploy/prometheus.

Environment (set by CTest, see CMakeLists.txt): DEPLOY_ANCHORSERVE_BIN, DEPLOY_ANCHOR_EVAL_BIN,
DEPLOY_ANCHORCTL_BIN, DEPLOY_REPO_ROOT. Not ANCHORSERVE_*: the server refuses unknown variables with that prefix.
Tools that are not installed here (helm; yamllint, promtool where missing) are skipped with a
message; everything else always runs.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.request

import jsonschema
import yaml

ROOT = os.environ.get("DEPLOY_REPO_ROOT",
                      os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CHART = os.path.join(ROOT, "helm", "anchorserve")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "anchorserve-dashboard.json")
RULES = os.path.join(ROOT, "deploy", "prometheus", "alert-rules.yaml")
SCRAPE = os.path.join(ROOT, "deploy", "prometheus", "scrape-config.yaml")
SERVER_CONFIG = os.path.join(ROOT, "deploy", "config", "anchorserve.yaml")
DOCKERFILES = [os.path.join(ROOT, "deploy", f"Dockerfile.{k}") for k in ("gpu", "cpu")]
DEFAULT_MODEL = os.path.join(ROOT, "models", "anllm-ac-20m")
PLOT = os.path.join(ROOT, "deploy", "tools", "plot_cache_reduction.py")
YAMLLINT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yamllint.yaml")
CI_VALUES = sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))

# Grafana template variables and their substitutes for promtool.
DASHBOARD_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                  "$job": ".*", "$instance": ".*", "${datasource}": "prometheus"}
# Kubernetes objects passed through to the pod spec: schema "type: object" without listing
# their (Kubernetes-defined) fields.
PASSTHROUGH = {"podSecurityContext", "securityContext", "resources", "affinity",
               "autoscaling.behavior"}


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def dashboard_exprs(dash):
    out = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return out


def substitute(expr):
    for k, v in DASHBOARD_VARS.items():
        expr = expr.replace(k, v)
    return expr


def metric_names(expr):
    return set(re.findall(r"\banchorserve_[a-z_]+\b", expr))


def rule_exprs():
    return [(r["alert"], r["expr"]) for g in load_yaml(RULES)["groups"] for r in g["rules"]]


class ChartFiles(unittest.TestCase):
    def test_chart_metadata(self):
        chart = load_yaml(os.path.join(CHART, "Chart.yaml"))
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["name"], "anchorserve")
        for key in ("version", "appVersion", "description", "type"):
            self.assertIn(key, chart)

    def test_expected_templates_exist(self):
        for name in ("_helpers.tpl", "deployment.yaml", "configmap.yaml", "service.yaml",
                     "servicemonitor.yaml", "pdb.yaml", "hpa.yaml",
                     "grafana-dashboard-configmap.yaml", "NOTES.txt", "tests/test-health.yaml"):
            self.assertTrue(os.path.isfile(os.path.join(CHART, "templates", name)), name)
        self.assertIn(os.path.join(CHART, "ci", "default-values.yaml"), CI_VALUES)
        self.assertIn(os.path.join(CHART, "ci", "gpu-values.yaml"), CI_VALUES)

    def test_chart_copies_match_deploy(self):
        """The chart ships copies (Helm reads only files inside the chart)."""
        for copy, source in ((os.path.join(CHART, "dashboards", "anchorserve-dashboard.json"), DASHBOARD),
                             (os.path.join(CHART, "rules", "alert-rules.yaml"), RULES)):
            with open(copy) as a, open(source) as b:
                self.assertEqual(a.read(), b.read(), f"{copy} differs from {source}: copy it over")

    def test_values_validate_against_schema(self):
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)
        jsonschema.Draft7Validator.check_schema(schema)
        for path in [os.path.join(CHART, "values.yaml")] + CI_VALUES:
            with self.subTest(values=os.path.relpath(path, ROOT)):
                jsonschema.validate(load_yaml(path) or {}, schema)

    def test_schema_rejects_unknown_and_bad_values(self):
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)
        values = load_yaml(os.path.join(CHART, "values.yaml"))
        for bad in ({"replicas": 2}, {"config": {"kv": {"budget": "1GiB"}}},
                    {"config": {"device": "tpu"}}, {"config": {"kv": {"budgetBytes": "lots"}}},
                    {"gpu": {"enabled": "yes"}}, {"autoscaling": {"metric": {"type": "Resource"}}},
                    {"model": {"volume": {"type": "emptyDir"}}}):
            with self.subTest(bad=bad):
                merged = json.loads(json.dumps(values))
                def merge(dst, src):
                    for k, v in src.items():
                        if isinstance(v, dict) and isinstance(dst.get(k), dict):
                            merge(dst[k], v)
                        else:
                            dst[k] = v
                merge(merged, bad)
                with self.assertRaises(jsonschema.ValidationError):
                    jsonschema.validate(merged, schema)

    def test_schema_closed_and_documented(self):
        """additionalProperties: false on every chart-defined object; every value described."""
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)
        def walk(node, path):
            if node.get("type") == "object":
                if path in PASSTHROUGH:
                    self.assertIn("description", node, path)
                    return
                ap = node.get("additionalProperties")
                self.assertTrue(ap is False or isinstance(ap, dict) and "type" in ap,
                                f"{path or '<root>'}: additionalProperties must be false (or a typed map)")
                for k, v in node.get("properties", {}).items():
                    walk(v, f"{path}.{k}" if path else k)
                if "properties" in node:
                    return
            self.assertIn("description", node, f"{path}: undocumented value")
        walk(schema, "")

    def test_config_keys_match_server_config(self):
        """config.* in values covers every key of deploy/config/anchorserve.yaml."""
        def flat(d, prefix=""):
            out = set()
            for k, v in d.items():
                key = f"{prefix}{k}"
                out |= flat(v, key + ".") if isinstance(v, dict) else {key}
            return out
        server_keys = flat(load_yaml(SERVER_CONFIG))
        with open(os.path.join(CHART, "templates", "configmap.yaml")) as f:
            text = f.read()
        body = text.split("anchorserve.yaml: |", 1)[1]
        rendered, stack = set(), []
        for line in body.splitlines():
            m = re.match(r"^( +)([a-z_]+):", line)
            if not m:
                continue
            depth = (len(m.group(1)) - 4) // 2
            stack = stack[:depth] + [m.group(2)]
            if not line.rstrip().endswith(":"):
                rendered.add(".".join(stack))
        self.assertEqual(rendered, server_keys)
        camel = lambda s: re.sub(r"_([a-z])", lambda m: m.group(1).upper(), s)
        values = load_yaml(os.path.join(CHART, "values.yaml"))["config"]
        set_by_chart = {"model", "listen", "metrics_listen", "sessions.disk_dir", "auth.enabled",
                        "auth.tokens_file", "tls.cert_file", "tls.key_file", "tls.client_ca_file",
                        "drain_timeout"}
        for key in server_keys - set_by_chart:
            node = values
            for part in key.split("."):
                self.assertIn(camel(part), node, f"values.yaml config lacks {key}")
                node = node[camel(part)]
        self.assertIn("drainTimeoutSeconds", values)

    def test_images_ship_the_default_model(self):
        """The chart's default (model baked into the image) matches what the Dockerfiles build."""
        values = load_yaml(os.path.join(CHART, "values.yaml"))
        self.assertEqual(values["model"]["volume"]["type"], "image")
        path = values["model"]["mountPath"].rstrip("/")
        self.assertTrue(os.path.isfile(os.path.join(DEFAULT_MODEL, "config.json")))
        for dockerfile in DOCKERFILES:
            with self.subTest(dockerfile=os.path.basename(dockerfile)):
                with open(dockerfile) as f:
                    text = f.read()
                self.assertRegex(text, r"(?m)^COPY models/anllm-ac-20m/? " + re.escape(path) + "/?$")
                self.assertIn(f'"--model={path}"', text)
                self.assertNotIn("init-model", text)
                self.assertRegex(text, r"(?m)^FROM .* AS build$")     # multi-stage
                self.assertRegex(text, r"(?m)^FROM .* AS runtime$")
                self.assertIn(f"USER {values['podSecurityContext']['runAsUser']}:", text)
                self.assertIn(f"EXPOSE {values['ports']['grpc']} {values['ports']['metrics']}", text)
                self.assertTrue(os.path.isfile(dockerfile + ".dockerignore"))
                with open(dockerfile + ".dockerignore") as f:
                    ignored = f.read()
                self.assertIn("build*/", ignored)
                self.assertNotRegex(ignored, r"(?m)^[^#]*models")   # the model is copied in

    def test_yamllint(self):
        if not shutil.which("yamllint"):
            self.skipTest("yamllint not installed (scripts/install-deps.sh installs it): skipped")
        files = ([os.path.join(CHART, "Chart.yaml"), os.path.join(CHART, "values.yaml"),
                  RULES, SCRAPE, SERVER_CONFIG] + CI_VALUES)
        r = subprocess.run(["yamllint", "-s", "-c", YAMLLINT_CONFIG, *files],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


@unittest.skipUnless(shutil.which("helm"), "helm not on PATH: helm lint --strict and helm template skipped")
class Helm(unittest.TestCase):
    def test_lint_strict(self):
        for values in CI_VALUES:
            with self.subTest(values=os.path.basename(values)):
                r = subprocess.run(["helm", "lint", "--strict", CHART, "-f", values],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_template(self):
        for values in CI_VALUES:
            with self.subTest(values=os.path.basename(values)):
                r = subprocess.run(["helm", "template", "t", CHART, "-f", values],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                docs = [d for d in yaml.safe_load_all(r.stdout) if d]
                kinds = {d["kind"] for d in docs}
                self.assertTrue({"Deployment", "ConfigMap", "Service"} <= kinds, kinds)
                dep = next(d for d in docs if d["kind"] == "Deployment")
                pod = dep["spec"]["template"]["spec"]
                c = pod["containers"][0]
                self.assertGreater(pod["terminationGracePeriodSeconds"], 0)
                self.assertIn("startupProbe", c)
                cm = next(d for d in docs if d["kind"] == "ConfigMap" and "anchorserve.yaml" in d["data"])
                cfg = yaml.safe_load(cm["data"]["anchorserve.yaml"])
                self.assertEqual(set(cfg), set(load_yaml(SERVER_CONFIG)))
                volume_type = (load_yaml(values).get("model", {}).get("volume", {})
                               .get("type", load_yaml(os.path.join(CHART, "values.yaml"))["model"]["volume"]["type"]))
                has_model_volume = any(v["name"] == "model" for v in pod["volumes"])
                self.assertEqual(has_model_volume, volume_type != "image", volume_type)
                self.assertIn("startupProbe", c)
                self.assertTrue(any(d["kind"] == "Pod" and d["metadata"].get("annotations", {})
                                    .get("helm.sh/hook") == "test" for d in docs), "helm test pod")
                if load_yaml(values).get("gpu", {}).get("enabled"):
                    self.assertIn("nvidia.com/gpu", c["resources"]["limits"])
                    self.assertEqual(cfg["device"], "cuda")

    def test_grace_period_must_exceed_drain(self):
        r = subprocess.run(["helm", "template", "t", CHART, "-f", CI_VALUES[0],
                            "--set", "terminationGracePeriodSeconds=20"], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("terminationGracePeriodSeconds", r.stderr)


class Dashboard(unittest.TestCase):
    def test_model(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        self.assertEqual(dash["uid"], "anchorserve-overview")
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for p in dash["panels"]:
            if p["type"] != "row":
                self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
        exprs = " ".join(e for _, e in dashboard_exprs(dash))
        # The panels the issue asks for.
        for needle in ("anchorserve_requests_total", "histogram_quantile",
                       "anchorserve_time_to_first_token_seconds_bucket",
                       "anchorserve_inter_token_latency_seconds_bucket",
                       "anchorserve_request_duration_seconds_bucket",
                       "anchorserve_requests_running", "anchorserve_requests_waiting",
                       "anchorserve_kv_pool_usage_ratio", "anchorserve_sessions",
                       "anchorserve_turn_cache_reduction_ratio_bucket",
                       "anchorserve_session_cache_reduction_ratio_bucket",
                       "anchorserve_kv_kept_bytes", "anchorserve_kv_full_equivalent_bytes",
                       "anchorserve_anchors_per_turn_bucket", "anchorserve_kv_saved_bytes_total"):
            self.assertIn(needle, exprs)
        self.assertEqual(sum(p["type"] == "heatmap" for p in dash["panels"]), 2)

    def test_promql_with_promtool(self):
        if not shutil.which("promtool"):
            self.skipTest("promtool not installed (Debian prometheus): PromQL checks skipped")
        with open(DASHBOARD) as f:
            dash = json.load(f)
        rules = [{"record": f"anchorserve_dashboard:panel_{i}", "expr": substitute(e)}
                 for i, (_, e) in enumerate(dashboard_exprs(dash))]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "dashboard-rules.yaml")
            with open(path, "w") as f:
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
            r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open(path) as f:
                self.assertNotIn("$", f.read(), "a dashboard variable was not substituted")


class AlertRules(unittest.TestCase):
    def test_rules_present(self):
        names = {a for a, _ in rule_exprs()}
        for a in ("AnchorServeKVPoolNearFull", "AnchorServeQueueRejections",
                  "AnchorServeDrainStuck", "AnchorServeTTFTSLOFastBurn"):
            self.assertIn(a, names)

    def test_promtool_check_rules(self):
        if not shutil.which("promtool"):
            self.skipTest("promtool not installed (Debian prometheus): promtool check rules skipped")
        r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class MetricNamesExistInServer(unittest.TestCase):
    """Every anchorserve_* name in the dashboard and the rules is in a real server's /metrics."""

    @classmethod
    def setUpClass(cls):
        binary = os.environ.get("DEPLOY_ANCHORSERVE_BIN")
        init = os.environ.get("DEPLOY_ANCHOR_EVAL_BIN")
        if not binary or not init:
            raise unittest.SkipTest("DEPLOY_ANCHORSERVE_BIN / DEPLOY_ANCHOR_EVAL_BIN not set (run through ctest)")
        cls.tmp = tempfile.TemporaryDirectory()
        # The embedded default model that the images and the chart serve; a tiny random model
        # from anchor-eval init-model where a checkout lacks it.
        model = DEFAULT_MODEL
        if not os.path.isfile(os.path.join(model, "config.json")):
            model = os.path.join(cls.tmp.name, "model")
            subprocess.run([init, "init-model", "--out", model], check=True, capture_output=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANCHORSERVE_")}
        cls.proc = subprocess.Popen(
            [binary, "--model", model, "--listen", "127.0.0.1:0", "--metrics_listen", "127.0.0.1:0",
             "--config="], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        log, port, grpc_port = [], None, None
        deadline = time.time() + 60
        while time.time() < deadline:
            line = cls.proc.stdout.readline()
            if not line:
                break
            log.append(line)
            m = re.search(r" serving .*listen=[0-9.]+:(\d+) metrics=[0-9.]+:(\d+)", line)
            if m:
                grpc_port, port = int(m.group(1)), int(m.group(2))
                break
        if port is None:
            cls.proc.kill()
            cls.proc.wait()
            raise RuntimeError("anchorserve did not start:\n" + "".join(log))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        cls.names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                     if line and not line.startswith("#")}
        cls.grpc = f"127.0.0.1:{grpc_port}"

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        try:
            cls.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            cls.proc.wait()
        cls.proc.stdout.close()
        cls.tmp.cleanup()

    def check(self, exprs):
        used = set()
        for where, expr in exprs:
            for name in metric_names(expr):
                used.add(name)
                self.assertIn(name, self.names, f"{where}: {name} is not served by anchorserve")
        return used

    def test_dashboard_names(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        used = self.check(dashboard_exprs(dash))
        variables = [(v["name"], v.get("definition", "")) for v in dash["templating"]["list"]]
        used |= self.check(variables)
        self.assertGreater(len(used), 20)

    def test_alert_rule_names(self):
        self.assertGreater(len(self.check(rule_exprs())), 5)

    def test_hpa_metric_name(self):
        name = load_yaml(os.path.join(CHART, "values.yaml"))["autoscaling"]["metric"]["name"]
        self.assertIn(name, self.names)

    def test_cache_reduction_plot_from_bench(self):
        """deploy/tools/plot_cache_reduction.py renders a PNG from real `anchorctl bench` output
        (what docs/cache_reduction_per_turn.png was made with; a Grafana screenshot cannot be
        taken here: docs/DEPLOY.md)."""
        anchorctl = os.environ.get("DEPLOY_ANCHORCTL_BIN")
        if not anchorctl:
            self.skipTest("DEPLOY_ANCHORCTL_BIN not set (run through ctest)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("python3-matplotlib not installed: plot rendering skipped")
        out = os.path.join(self.tmp.name, "plot.png")
        raw = os.path.join(self.tmp.name, "bench.json")
        r = subprocess.run([PLOT, "--server", self.grpc, "--anchorctl", anchorctl, "--turns", "2",
                            "--sessions", "1", "--max-tokens", "4", "--out", out, "--json-out", raw],
                           capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        with open(raw) as f:
            result = json.load(f)
        self.assertEqual(len(result["session_cr"]), 2)
        for cr in result["session_cr"]:
            self.assertGreater(cr, 0.0)   # an AC model keeps fewer KV bytes than full attention
            self.assertLess(cr, 1.0)


if __name__ == "__main__":
    unittest.main()
