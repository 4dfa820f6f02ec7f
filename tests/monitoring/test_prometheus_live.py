"""Every dashboard and alert expression against a real Prometheus scraping real kvcache nodes.

Three kvcache-node processes in cluster mode (a topology file, 3 shards x 1 node, on their own
loopback addresses, so requests are forwarded) get a few hundred requests from Python while
Debian's Prometheus scrapes them every second through the kubernetes_sd relabeling of
docs/metrics.md (fed by file_sd with the __meta_kubernetes_* labels a KVCache pod has) and
evaluates charts/kvcache-operator/rules/kvcache.rules.yaml. Then:

- every panel and variable query of both dashboards, with Grafana's variables replaced by
  match-anything regexes, and every alert expression, is accepted by /api/v1/query;
- each returns data unless it needs a series this setup cannot have (OPTIONAL below, each with
  its reason); any other metric name is a typo and fails;
- the operator is not run (it needs a Kubernetes API): a stand-in serves series of exactly the
  names, types and labels docs/metrics.md documents for it, scraped by the documented operator
  job (honor_labels), so the operator dashboard and alerts are checked against that contract;
- the rules evaluate without errors, the node alerts stay silent while all is well, and
  KVCacheNodeDown goes pending for a node that is killed;
- every metric the node exports, and every one a dashboard or alert uses, is in docs/metrics.md.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from conftest import start_node, wait_for  # noqa: E402  (the integration tests' node launcher)

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "prometheus")
RULES = ROOT / "charts" / "kvcache-operator" / "rules" / "kvcache.rules.yaml"
DASHBOARDS = ROOT / "charts" / "kvcache-operator" / "dashboards"
METRICS_DOC = ROOT / "docs" / "metrics.md"
NAMESPACE, CLUSTER, SHARDS = "monitoring-test", "demo", 3
OPERATOR_NAMESPACE, OPERATOR_POD = "kvcache-system", "kvcache-operator-5d8f-x2x7q"

# Series this setup cannot have, with the reason. Anything else a dashboard or alert names must
# be exported by the node binary under test (or the operator stand-in) and must return data.
OPTIONAL = {
    "kvcache_node_replication_lag_records": "replicas only; this cluster has none",
}
# Named by the replication/migration/forwarding work; checked for data once the binary exports them.
PENDING_REASON = "not exported by this build yet"
PENDING = {
    "kvcache_node_role", "kvcache_node_shard", "kvcache_node_topology_epoch",
    "kvcache_node_replication_offset", "kvcache_node_replication_lag_records",
    "kvcache_node_replication_connected_replicas", "kvcache_node_replication_full_syncs_total",
    "kvcache_node_forwarded_requests_total", "kvcache_node_migration_keys_moved_total",
    "kvcache_node_migration_active",
}
# Alerts that only look at series every node exports: they must stay silent on a healthy cluster.
SILENT_WHEN_HEALTHY = ["KVCacheNodeDown", "KVCacheMemoryNearLimit", "KVCacheEvictionStorm",
                       "KVCachePersistenceErrors", "KVCacheOperatorReconcileErrors",
                       "KVCacheOperatorNotLeading"]

METRIC_NAME = re.compile(r"\b(kvcache_(?:node|operator)_[a-z0-9_]+|up)\b")
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


# ---- what is checked, loaded at collection time so each expression is its own test ---------

def dashboard_queries():
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append(pytest.param(t["expr"], id=f"{path.stem}/{panel['title']}/{t['refId']}"))
    return out


def variable_queries():
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                out.append(pytest.param(var["definition"], id=f"{path.stem}/${var['name']}"))
    return out


def alert_rules():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [pytest.param(r["expr"], id=r["alert"]) for g in groups for r in g["rules"]]


def substitute(expr):
    """Grafana's view of an expression: built-ins get fixed durations, $var a regex for all."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    variables = re.findall(r"\$\{?(\w+)\}?", expr)
    for var in variables:
        # A multi-value variable only works inside a regex matcher.
        assert re.search(rf'=~"\$\{{?{var}\}}?"', expr), f"${var} used outside =~ in {expr}"
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def label_values_to_promql(definition):
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
    assert m, f"not a label_values() query: {definition}"
    return f"count by ({m.group(2)}) ({m.group(1)})"


# ---- the running system -----------------------------------------------------------------

# Example values for the documented operator labels that list no values of their own.
STAND_IN_LABEL_VALUES = {"namespace": NAMESPACE, "name": CLUSTER, "verb": "GET", "code": "200",
                         "resource": "kvcaches", "reason": "gone"}


def documented_operator_metrics():
    """[(name, type, {label: [values]}, meaning)] from the operator table of docs/metrics.md."""
    doc = METRICS_DOC.read_text()
    section = doc.split("## Operator metrics", 1)[1].split("\n## ", 1)[0]
    out = []
    for m in re.finditer(r"^\| `(kvcache_operator_\w+)` \| (\w+) \|([^|]*)\|([^|]*)\|",
                         section, re.M):
        labels = {}
        for part in re.finditer(r"`(\w+)`(?: = ((?:`\w+`(?:, )?)+))?", m.group(3)):
            values = re.findall(r"`(\w+)`", part.group(2) or "")
            labels[part.group(1)] = values or [STAND_IN_LABEL_VALUES[part.group(1)]]
        out.append((m.group(1), m.group(2), labels, m.group(4).strip()))
    return out


class OperatorStandIn:
    """Serves /metrics with series of exactly the operator metrics docs/metrics.md documents
    (names, types, label names), for the operator dashboard's queries and the operator scrape
    job until a real operator runs in this test (the localk8s variant). It proves nothing about
    the operator itself. Counters grow at each scrape (errors a tenth as fast as the rest, so
    the operator alerts stay silent); gauges are 1: one leader, every KVCache available."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import itertools
        import threading
        scrapes = itertools.count(1)
        metrics = documented_operator_metrics()
        assert metrics, "no operator metrics table in docs/metrics.md"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = OperatorStandIn.render(metrics, next(scrapes)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def render(metrics, n):
        lines = []
        for name, kind, labels, meaning in metrics:
            lines.append(f"# HELP {name} {meaning}")
            lines.append(f"# TYPE {name} {kind}")
            combos = [{}]
            for label, values in labels.items():
                combos = [dict(c, **{label: v}) for c in combos for v in values]
            step = n if "error" in name else 10 * n
            for combo in combos:
                def series(suffix, value, extra=None):
                    pairs = {**combo, **(extra or {})}
                    inner = ",".join(f'{k}="{v}"' for k, v in pairs.items())
                    lines.append(f"{name}{suffix}{{{inner}}} {value}" if inner
                                 else f"{name}{suffix} {value}")
                if kind == "histogram":
                    series("_bucket", step // 2, {"le": "0.1"})
                    series("_bucket", step, {"le": "+Inf"})
                    series("_sum", step * 0.05)
                    series("_count", step)
                elif kind == "counter":
                    series("", step)
                else:
                    series("", 1)
        return "\n".join(lines) + "\n"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def listening_port(pid):
    """The TCP port process `pid` listens on (Prometheus was told port 0)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    return None


class Prometheus:
    def __init__(self, url):
        self.url = url

    def query(self, expr):
        r = requests.post(self.url + "/api/v1/query", data={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", \
            f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]["result"]

    def get(self, path):
        r = requests.get(self.url + path, timeout=10)
        r.raise_for_status()
        return r.json()["data"]


def exported_families(text):
    """{family name: type} and the set of series names from an exposition."""
    families, series = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        elif line and not line.startswith("#"):
            series.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return families, series


def generate_load(addrs):
    """A few hundred requests of every kind, spread over the nodes (two thirds get forwarded)."""
    with requests.Session() as s:
        for i in range(240):
            assert s.put(f"http://{addrs[i % 3]}/v1/load-{i}", data=f"v{i}").status_code == 201
        for i in range(240):
            assert s.get(f"http://{addrs[(i + 1) % 3]}/v1/load-{i}").status_code == 200
        for i in range(60):
            assert s.get(f"http://{addrs[i % 3]}/v1/missing-{i}").status_code == 404
        for i in range(20):
            r = s.put(f"http://{addrs[i % 3]}/v1/load-{i}", data="x",
                      headers={"If-None-Match": "*"})
            assert r.status_code == 412
            assert s.head(f"http://{addrs[i % 3]}/v1/load-{i + 20}").status_code == 200
            assert s.delete(f"http://{addrs[(i + 2) % 3]}/v1/load-{i + 40}").status_code == 204
            assert s.put(f"http://{addrs[i % 3]}/v1/ttl-{i}?ttl=1", data="t").status_code == 201


def start_cluster(tmp):
    """SHARDS nodes in cluster mode on their own loopback addresses, one port (the topology
    names every address up front, as test_cluster.py does)."""
    net, port = random.randrange(1, 250), random.randrange(20000, 60000)
    addrs = [f"127.78.{net}.{i + 1}:{port}" for i in range(SHARDS)]
    pods = [f"{CLUSTER}-{i}-0" for i in range(SHARDS)]
    step = 16384 // SHARDS
    topology = {
        "cluster": CLUSTER, "epoch": 1,
        "shards": [{"id": i, "slots": [[i * step, 16383 if i == SHARDS - 1 else (i + 1) * step - 1]],
                    "primary": {"name": pods[i], "addr": addrs[i]}, "replicas": []}
                   for i in range(SHARDS)],
    }
    (tmp / "topology.json").write_text(json.dumps(topology))
    nodes = []
    for i in range(SHARDS):
        nodes.append(start_node(tmp, ("--node-name", pods[i], "--topology-file",
                                      str(tmp / "topology.json"), "--max-memory", "64Mi",
                                      "--fsync", "always", "--snapshot-interval-seconds", "1"),
                                name=pods[i], listen=addrs[i]))
    return nodes, addrs, pods


def pod_target(addr, pod, shard, scrape="true"):
    """A file_sd target group carrying the __meta_kubernetes_* labels that kubernetes_sd
    (role: pod) gives a KVCache node pod annotated for scraping."""
    host, port = addr.rsplit(":", 1)
    return {"targets": [host], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kvcache",
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance": CLUSTER,
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": "cache-node",
        "__meta_kubernetes_pod_label_kvcache_io_shard": str(shard),
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }}


def operator_pod_target(port):
    """The same for the operator's pod (the chart's labels and scrape annotations)."""
    return {"targets": ["127.0.0.1"], "labels": {
        "__meta_kubernetes_namespace": OPERATOR_NAMESPACE,
        "__meta_kubernetes_pod_name": OPERATOR_POD,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kvcache-operator",
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": "operator",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }}


def start_prometheus(tmp):
    """Prometheus on 127.0.0.1 port 0 with tests/monitoring/prometheus.yml and the rules.
    Returns (process, Prometheus) once it is ready."""
    config = yaml.safe_load((HERE / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS_BIN, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", "--web.listen-address=127.0.0.1:0",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)

    def port():
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        return listening_port(proc.pid)
    prom = Prometheus(f"http://127.0.0.1:{wait_for(port, 30, what='Prometheus to listen')}")

    def ready():
        try:
            return requests.get(prom.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    wait_for(ready, 60, what="Prometheus to be ready")
    return proc, prom


def await_scrapes_after_load(prom, addrs, pods):
    """Series born during the load need two samples for rate(): waits until Prometheus has
    scraped every node twice since. (Each scrape is itself a counted request, so a higher
    request count in Prometheus means a newer scrape.) Then for a snapshot on every node and a
    rule evaluation after all that."""
    def scraped_counts():
        return {r["metric"]["pod"]: float(r["value"][1]) for r in
                prom.query("sum by (pod) (kvcache_node_http_requests_total)")}
    after_load = {}
    for addr, pod in zip(addrs, pods):
        text = requests.get(f"http://{addr}/metrics", timeout=5).text
        after_load[pod] = sum(float(line.split()[-1]) for line in text.splitlines()
                              if line.startswith("kvcache_node_http_requests_total{"))
    wait_for(lambda: all(scraped_counts().get(p, 0) >= n for p, n in after_load.items()),
             30, what="Prometheus to scrape the load")
    first = scraped_counts()
    wait_for(lambda: all(scraped_counts().get(p, 0) > n for p, n in first.items()),
             30, what="a second scrape after the load")
    wait_for(lambda: len(prom.query("kvcache_node_snapshot_timestamp_seconds > 0")) == SHARDS,
             30, what="a snapshot on every node")
    after = time.time()

    def rules_evaluated():
        groups = prom.get("/api/v1/rules")["groups"]
        return groups and all(
            g["lastEvaluation"] and _rfc3339(g["lastEvaluation"]) > after for g in groups)
    wait_for(rules_evaluated, 30, what="rules evaluated after the load")


def stop(proc, timeout):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    nodes, prom_proc, operator = [], None, None
    try:
        nodes, addrs, pods = start_cluster(tmp)
        operator = OperatorStandIn()
        targets = [pod_target(a, p, i) for i, (a, p) in enumerate(zip(addrs, pods))]
        # A pod that does not ask to be scraped: the relabeling must drop it.
        host = addrs[0].rsplit(".", 1)[0]
        targets.append(pod_target(f"{host}.200:1", "not-scraped-0", 0, scrape="false"))
        (tmp / "targets.json").write_text(json.dumps(targets))
        (tmp / "operator-targets.json").write_text(json.dumps([operator_pod_target(operator.port)]))
        prom_proc, prom = start_prometheus(tmp)
        wait_for(lambda: len(prom.query("up == 1")) == SHARDS + 1, 30, what="every target scraped")
        generate_load(addrs)
        await_scrapes_after_load(prom, addrs, pods)
        node_text = requests.get(f"http://{addrs[0]}/metrics", timeout=5).text
        operator_text = requests.get(f"http://127.0.0.1:{operator.port}/metrics", timeout=5).text
        yield {"prom": prom, "nodes": nodes, "addrs": addrs, "pods": pods,
               "exposition": node_text, "known": exported_families(node_text)[1]
               | exported_families(operator_text)[1]}
    finally:
        if prom_proc is not None:
            stop(prom_proc, 30)
        if operator is not None:
            operator.stop()
        for n in nodes:
            stop(n.proc, 10)


def _rfc3339(stamp):
    """Seconds since the epoch of Prometheus's RFC 3339 stamps (nanoseconds, 'Z')."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float(m.group(2) or 0)


def check_names(expr, series):
    """Returns the reasons this expression may lack data ([] = it must have data), given the
    series names the node and the operator stand-in export."""
    reasons = []
    for name in set(METRIC_NAME.findall(expr)):
        if name == "up" or (name in series and name not in OPTIONAL):
            continue
        if name in OPTIONAL:
            reasons.append(f"{name} ({OPTIONAL[name]})")
        elif name in PENDING and name not in series:
            reasons.append(f"{name} ({PENDING_REASON})")
        else:
            pytest.fail(f"{name} is neither exported by kvcache-node, nor documented for the "
                        f"operator, nor a known optional series")
    return reasons


# ---- the checks --------------------------------------------------------------------------

def test_relabeling_gives_the_documented_labels(stack):
    targets = stack["prom"].get("/api/v1/targets")
    active = sorted((t for t in targets["activeTargets"] if t["labels"]["job"] == "kvcache-nodes"),
                    key=lambda t: t["labels"]["pod"])
    assert [t["health"] for t in active] == ["up"] * SHARDS
    for i, t in enumerate(active):
        assert t["labels"] == {"job": "kvcache-nodes", "namespace": NAMESPACE,
                               "kvcache_cluster": CLUSTER, "shard": str(i),
                               "pod": stack["pods"][i], "instance": stack["pods"][i]}
        assert t["scrapeUrl"] == f"http://{stack['addrs'][i]}/metrics"
    dropped = [t["discoveredLabels"]["__meta_kubernetes_pod_name"]
               for t in targets["droppedTargets"]]
    assert dropped == ["not-scraped-0"]
    [operator] = [t for t in targets["activeTargets"] if t["labels"]["job"] == "kvcache-operator"]
    assert operator["health"] == "up"
    assert operator["labels"] == {"job": "kvcache-operator", "namespace": OPERATOR_NAMESPACE,
                                  "pod": OPERATOR_POD, "instance": OPERATOR_POD}


def test_operator_series_keep_their_kvcache_namespace(stack):
    # honor_labels: the per-KVCache series keep the KVCache's namespace; the others get the
    # operator pod's.
    prom = stack["prom"]
    [ready] = prom.query("kvcache_operator_kvcache_ready_nodes")
    assert (ready["metric"]["namespace"], ready["metric"]["name"]) == (NAMESPACE, CLUSTER)
    assert "exported_namespace" not in ready["metric"]
    [leader] = prom.query("kvcache_operator_leader")
    assert leader["metric"]["namespace"] == OPERATOR_NAMESPACE


def test_every_exported_metric_is_in_prometheus(stack):
    _, series = exported_families(stack["exposition"])
    have = {r["metric"]["__name__"] for r in stack["prom"].query(
        'count by (__name__) ({__name__=~"kvcache_.*", kvcache_cluster="%s"})' % CLUSTER)}
    assert series - have == set()


@pytest.mark.parametrize("expr", dashboard_queries())
def test_panel_query(stack, expr):
    result = stack["prom"].query(substitute(expr))
    reasons = check_names(expr, stack["known"])
    if reasons:
        pytest.skip("parsed OK; no data required: " + "; ".join(sorted(reasons)))
    assert result, f"no data for {expr}"


@pytest.mark.parametrize("definition", variable_queries())
def test_variable_query(stack, definition):
    expr = label_values_to_promql(substitute(definition))
    result = stack["prom"].query(expr)
    reasons = check_names(expr, stack["known"])
    if reasons:
        pytest.skip("parsed OK; no data required: " + "; ".join(sorted(reasons)))
    assert {v for r in result for v in r["metric"].values()}, f"no values for {definition}"


@pytest.mark.parametrize("expr", alert_rules())
def test_alert_expression(stack, expr):
    # Parses and names only known series; whether it fires is checked below and by promtool.
    stack["prom"].query(expr)
    check_names(expr, stack["known"])


def test_rules_evaluate_without_errors(stack):
    rules = [r for g in stack["prom"].get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    assert [(r["name"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []


@pytest.mark.parametrize("alert", SILENT_WHEN_HEALTHY)
def test_node_alert_silent_when_healthy(stack, alert):
    expr = next(p.values[0] for p in alert_rules() if p.id == alert)
    assert stack["prom"].query(expr) == []


def test_metrics_are_documented(stack):
    doc = METRICS_DOC.read_text()
    families, _ = exported_families(stack["exposition"])
    used = set()
    for p in dashboard_queries() + variable_queries() + alert_rules():
        used |= set(METRIC_NAME.findall(p.values[0]))
    used = {re.sub(r"_bucket$", "", n) for n in used} - {"up"}
    missing = sorted(n for n in set(families) | used if f"`{n}`" not in doc)
    assert missing == [], "not in docs/metrics.md"


def test_documented_relabeling_is_the_tested_one():
    doc = METRICS_DOC.read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    jobs = [j for b in blocks if isinstance(b, dict) for j in b.get("scrape_configs", [])]
    tested = yaml.safe_load((HERE / "prometheus.yml").read_text())["scrape_configs"]
    assert [j["job_name"] for j in jobs] == [j["job_name"] for j in tested]
    for documented, ran in zip(jobs, tested):
        assert documented["kubernetes_sd_configs"][0]["role"] == "pod"
        assert documented.get("honor_labels") == ran.get("honor_labels")
        assert documented["relabel_configs"] == ran["relabel_configs"], documented["job_name"]


def test_every_alert_has_a_runbook():
    doc = METRICS_DOC.read_text()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        name = rule["alert"]
        assert f"\n### {name}\n" in doc, f"no runbook section for {name} in docs/metrics.md"
        assert f"| {name} | {rule['labels']['severity']} |" in doc, f"{name} not in the alert table"
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())


def test_killed_node_makes_node_down_pending(stack):
    """Runs last in this module: it kills a node."""
    prom, victim = stack["prom"], stack["pods"][2]
    stack["nodes"][2].proc.send_signal(signal.SIGKILL)
    stack["nodes"][2].proc.wait()
    expr = next(p.values[0] for p in alert_rules() if p.id == "KVCacheNodeDown")
    wait_for(lambda: [r["metric"]["pod"] for r in prom.query(expr)] == [victim], 30,
             what="KVCacheNodeDown's expression to select the killed node")

    def pending():
        return [(a["labels"]["pod"], a["state"]) for a in prom.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "KVCacheNodeDown"]
    wait_for(lambda: pending() == [(victim, "pending")], 30, what="KVCacheNodeDown pending")
    # A request for a key of the dead shard is a 503 from the forwarding node, which the
    # dashboard's 5xx ratio must show. A counter series is born with its first 503, and rate()
    # only counts increases after its first sample: so a second batch once it is scraped.
    def get_all():
        with requests.Session() as s:
            return [s.get(f"http://{stack['addrs'][0]}/v1/load-{i}").status_code
                    for i in range(60, 120)]
    assert 503 in get_all()
    # (Other nodes may have 503 series already: /readyz answered 503 while they started.)
    wait_for(lambda: prom.query('kvcache_node_http_requests_total{code="503", pod="%s"}'
                                % stack["pods"][0]), 30,
             what="the 503 series scraped")
    assert 503 in get_all()
    ratio = next(p.values[0] for p in dashboard_queries() if p.id.endswith("/5xx ratio/A"))
    wait_for(lambda: (r := prom.query(substitute(ratio))) and float(r[0]["value"][1]) > 0, 30,
             what="5xx ratio above 0")

