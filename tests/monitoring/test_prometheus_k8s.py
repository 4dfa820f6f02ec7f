"""Every dashboard and alert expression against a real Prometheus scraping a real KVCache.

run_k8s.sh starts a localk8s (tests/localk8s/with-localk8s.sh) and runs this module in it:

- the operator is installed by its Helm chart, and a KVCache of 2 shards x 1 replica becomes
  Available with every node ready;
- Debian's Prometheus, on the host, finds the node pods and the operator pod with
  kubernetes_sd_configs (role: pod) against localk8s's API server, as a ServiceAccount that
  may only get/list/watch pods, endpoints and services, relabels them with the jobs of
  docs/metrics.md (tests/monitoring/prometheus.yml), scrapes them by pod IP every second and
  evaluates charts/kvcache-operator/rules/kvcache.rules.yaml;
- a few hundred requests of every kind go through the KVCache's Service (ClusterIP) from the
  host.

Then:

- every panel and variable query of both dashboards, with Grafana's variables replaced by
  match-anything regexes, is accepted by /api/v1/query and returns data, and so does every
  series selector of every alert expression, unless its series cannot exist here (OPTIONAL,
  each with its reason); any other metric name is a typo and fails;
- the rules evaluate without errors, every alert stays silent while the KVCache is healthy,
  and KVCacheNodeDown goes pending for a node pod that is killed;
- every metric the node and the operator export, and every one a dashboard or alert uses, is
  in docs/metrics.md, the operator's with the documented type and labels.
"""

import base64
import json
import os
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
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
# The e2e tier's helpers: kubectl/helm on a localk8s state dir, waiting with progress, the
# cache client through a ClusterIP.
from e2elib import OPERATOR_NS, Cache, LocalK8s, await_condition, is_available, log, summary  # noqa: E402

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "prometheus")
RULES = ROOT / "charts" / "kvcache-operator" / "rules" / "kvcache.rules.yaml"
DASHBOARDS = ROOT / "charts" / "kvcache-operator" / "dashboards"
METRICS_DOC = ROOT / "docs" / "metrics.md"
NAMESPACE, CLUSTER, SHARDS, REPLICAS = "monitoring-test", "demo", 2, 1
NODES = SHARDS * (1 + REPLICAS)
PROMETHEUS_NS, PROMETHEUS_SA = "prometheus", "prometheus"

KVCACHE = {
    "apiVersion": "kvcache.io/v1alpha1", "kind": "KVCache",
    "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
    "spec": {
        "shards": SHARDS, "replicasPerShard": REPLICAS,
        "storage": {"size": "64Mi"},
        # The shortest interval, so each node has a snapshot (the snapshot age panel) soon.
        "persistence": {"snapshotIntervalSeconds": 10},
        # A limit, so the memory-of-limit panels (max_memory_bytes > 0) have data.
        "memory": {"limit": "16Mi"},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    },
}

# What the Prometheus of this test may read: the verbs and resources kubernetes_sd needs.
PROMETHEUS_RBAC = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {PROMETHEUS_NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {PROMETHEUS_SA}, namespace: {PROMETHEUS_NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: kvcache-test-prometheus}}
rules:
  - apiGroups: [""]
    resources: [pods, endpoints, services]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: kvcache-test-prometheus}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kvcache-test-prometheus}}
subjects:
  - {{kind: ServiceAccount, name: {PROMETHEUS_SA}, namespace: {PROMETHEUS_NS}}}
"""

# Series this setup cannot have, with the reason. Anything else a dashboard or alert names must
# be exported by the node or the operator and must return data.
OPTIONAL = {
    "kvcache_operator_kube_watch_restarts_total":
        "born with the first watch restart; the API server ends the operator's watches after "
        "5 to 10 minutes, longer than this test",
    "kvcache_operator_kube_request_retries_total":
        "born with the first retry after a 429/5xx with Retry-After, which a healthy API "
        "server does not send",
}

METRIC_NAME = re.compile(r"\b(kvcache_(?:node|operator)_[a-z0-9_]+|up)\b")
SELECTOR = re.compile(r"\b((?:kvcache_(?:node|operator)_[a-z0-9_]+|up)\b(?:\{[^}]*\})?)")
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


def documented_operator_metrics():
    """{name: (type, {label names})} from the operator table of docs/metrics.md."""
    section = METRICS_DOC.read_text().split("## Operator metrics", 1)[1].split("\n## ", 1)[0]
    out = {}
    for m in re.finditer(r"^\| `(kvcache_operator_\w+)` \| (\w+) \|([^|]*)\|", section, re.M):
        # A label cell: `name` or `name` = `value`, `value`, ... (the values are not labels).
        labels = {p.group(1) for p in re.finditer(r"`(\w+)`(?: = (?:`\w+`(?:, )?)+)?", m.group(3))}
        out[m.group(1)] = (m.group(2), labels)
    return out


# ---- the running system -----------------------------------------------------------------

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
    """{family name: type} and {series name: set of label names} of an exposition."""
    families, series = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = set(re.findall(r'(\w+)="', rest.rpartition("}")[0])) if rest else set()
            series.setdefault(name, set()).update(labels)
    return families, series


def scrape(addr):
    return requests.get(f"http://{addr}/metrics", timeout=5).text


def generate_load(cache):
    """A few hundred requests of every kind through the Service (the receiving node forwards
    those of the other shard)."""
    def expect(status, method, path, body=None):
        got, data, _ = cache.request(method, path, body)
        assert got == status, f"{method} {path} -> {got} {data[:200]!r}"
    for i in range(200):
        expect(201, "PUT", f"/v1/load-{i}", f"v{i}".encode())
    for i in range(200):
        expect(200, "GET", f"/v1/load-{i}")
    for i in range(50):
        expect(404, "GET", f"/v1/missing-{i}")
    for i in range(20):
        expect(200, "HEAD", f"/v1/load-{i}")
        expect(204, "DELETE", f"/v1/load-{i + 20}")
        expect(201, "PUT", f"/v1/ttl-{i}?ttl=1", b"t")


def prometheus_credentials(lk, tmp):
    """(API server URL, CA file, token file) for a Prometheus on the host: the kubeconfig's
    server and CA, a token of a ServiceAccount bound to PROMETHEUS_RBAC only."""
    lk.kubectl("apply", "-f", "-", input=PROMETHEUS_RBAC)
    token = lk.kubectl("create", "token", PROMETHEUS_SA, "-n", PROMETHEUS_NS,
                       "--duration", "1h").stdout.strip()
    (tmp / "token").write_text(token)
    cluster = json.loads(lk.kubectl("config", "view", "--raw", "-o", "json").stdout)[
        "clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority")
    if ca is None:
        ca = tmp / "ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return cluster["server"], str(ca), str(tmp / "token")


def start_prometheus(tmp, server, ca, token):
    """Prometheus on 127.0.0.1 port 0 with tests/monitoring/prometheus.yml pointed at the API
    server. Returns (process, Prometheus) once it is ready."""
    config = yaml.safe_load((HERE / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    for job in config["scrape_configs"]:
        for sd in job["kubernetes_sd_configs"]:
            sd.update(api_server=server, tls_config={"ca_file": ca},
                      authorization={"credentials_file": token})
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp / "prometheus.log", "wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS_BIN, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", "--web.listen-address=127.0.0.1:0",
             "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT)

    def port():
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        return listening_port(proc.pid)
    prom = Prometheus(f"http://127.0.0.1:{await_condition('Prometheus to listen', port, 30)}")
    await_condition("Prometheus to be ready", lambda: requests.get(
        prom.url + "/-/ready", timeout=2).status_code == 200, 60)
    return proc, prom


def await_scrapes_after_load(prom, node_addrs):
    """Series born during the load need two samples for rate(): waits until Prometheus has
    scraped every node twice since. (Each scrape is itself a counted request, so a higher
    request count in Prometheus means a newer scrape.) Then for a snapshot on every node and a
    rule evaluation after all that."""
    def scraped_counts():
        return {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(
            'sum by (pod) (kvcache_node_http_requests_total{namespace="%s"})' % NAMESPACE)}
    after_load = {}
    for pod, addr in node_addrs.items():
        after_load[pod] = sum(float(line.split()[-1]) for line in scrape(addr).splitlines()
                              if line.startswith("kvcache_node_http_requests_total{"))
    await_condition("Prometheus to scrape the load", lambda: all(
        scraped_counts().get(p, 0) >= n for p, n in after_load.items()), 30)
    first = scraped_counts()
    await_condition("a second scrape after the load", lambda: all(
        scraped_counts().get(p, 0) > n for p, n in first.items()), 30)
    await_condition("a snapshot on every node", lambda: len(prom.query(
        "kvcache_node_snapshot_timestamp_seconds > 0")) == NODES, 30)
    after = time.time()

    def rules_evaluated():
        groups = prom.get("/api/v1/rules")["groups"]
        return groups and all(
            g["lastEvaluation"] and _rfc3339(g["lastEvaluation"]) > after for g in groups)
    await_condition("rules evaluated after the load", rules_evaluated, 30)


def stop(proc, timeout):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pod_addrs(lk, namespace, selector):
    """{pod name: pod IP:first container port} of the running pods matching selector."""
    return {p["metadata"]["name"]: "%s:%d" % (
                p["status"]["podIP"], p["spec"]["containers"][0]["ports"][0]["containerPort"])
            for p in lk.get_json("pods", "-n", namespace, "-l", selector)["items"]
            if p["status"].get("podIP")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = os.environ.get("LOCALK8S_STATE_DIR")
    if not state:
        pytest.fail("no LOCALK8S_STATE_DIR: run through run_k8s.sh (it starts the localk8s)")
    tmp = tmp_path_factory.mktemp("monitoring")
    lk = LocalK8s(state)  # started by with-localk8s.sh; only its kubectl/helm are used
    prom_proc = None
    t0 = time.monotonic()
    try:
        # The CRD exists once helm returns: the KVCache waits for the operator, not for helm.
        lk.install_operator(wait=False)
        lk.kubectl("create", "namespace", NAMESPACE)
        # Retried: the API server serves a new CRD's kind a moment after creating it.
        await_condition("the KVCache created", lambda: lk.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(KVCACHE), check=False).returncode == 0, 60)
        prom_proc, prom = start_prometheus(tmp, *prometheus_credentials(lk, tmp))

        def kvc():
            return lk.get_json("kvc", "-n", NAMESPACE, CLUSTER, check=False)
        await_condition("KVCache Available with every node ready",
                        lambda: (k := kvc()) and is_available(k)
                        and k["status"].get("readyNodes") == NODES,
                        timeout=300, progress=lambda: summary(kvc()))
        log(f"KVCache Available, {NODES} nodes ready: {time.monotonic() - t0:.1f}s")
        await_condition("every node and the operator scraped", lambda: len(prom.query(
            'up{job=~"kvcache-nodes|kvcache-operator"} == 1')) == NODES + 1, 60)
        nodes = pod_addrs(lk, NAMESPACE, f"app.kubernetes.io/instance={CLUSTER}")
        [operator] = pod_addrs(lk, OPERATOR_NS, "app.kubernetes.io/name=kvcache-operator").values()
        service = lk.get_json("svc", "-n", NAMESPACE, CLUSTER)["spec"]["clusterIP"]
        cache = Cache(service)
        # kube-proxy programs the Service a moment after its endpoints become ready.
        await_condition("the Service to answer", lambda: cache.request("GET", "/readyz")[0] == 200,
                        30)
        generate_load(cache)
        cache.close()
        await_scrapes_after_load(prom, nodes)
        log(f"load scraped and rules evaluated: {time.monotonic() - t0:.1f}s")
        # Every node's: the load's one connection reaches one pod, and only the pods that
        # forwarded a request have kvcache_node_forwarded_requests_total.
        node_text = "\n".join(scrape(addr) for addr in nodes.values())
        operator_text = scrape(operator)
        yield {"prom": prom, "lk": lk, "nodes": nodes, "operator": operator,
               "kvc": kvc(), "node_exposition": node_text, "operator_exposition": operator_text,
               "known": set(exported_families(node_text)[1])
               | set(exported_families(operator_text)[1])}
    except Exception:
        # What a failed setup leaves for diagnosis (the state dir, with every pod's log, is
        # kept by with-localk8s.sh on failure).
        for args in (("get", "kvc,pods", "-A", "-o", "wide"),
                     ("logs", "-n", OPERATOR_NS, "deployment/kvcache-operator", "--tail=30")):
            out = lk.kubectl(*args, check=False)
            log(f"---- kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
        if (tmp / "prometheus.log").exists():
            log("---- prometheus.log\n" + (tmp / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        if prom_proc is not None:
            stop(prom_proc, 30)
        # The cluster, the operator and the KVCache go with the localk8s (with-localk8s.sh).


def _rfc3339(stamp):
    """Seconds since the epoch of Prometheus's RFC 3339 stamps (nanoseconds, 'Z')."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float(m.group(2) or 0)


def may_lack_data(expr, series):
    """{metric name: reason} of the metrics of expr that may have no series here ({} = the
    expression must have data), given the series names the node and the operator export.
    Fails on a name that is none of these (a typo)."""
    reasons = {}
    for name in set(METRIC_NAME.findall(expr)):
        if name == "up" or (name in series and name not in OPTIONAL):
            continue
        if name in OPTIONAL:
            reasons[name] = OPTIONAL[name]
        else:
            pytest.fail(f"{name} is exported neither by kvcache-node nor by kvcache-operator, "
                        f"nor a known optional series")
    return reasons


def skip_for(reasons):
    pytest.skip("parsed OK; no data required: "
                + "; ".join(f"{n} ({r})" for n, r in sorted(reasons.items())))


# ---- the checks --------------------------------------------------------------------------

def test_relabeling_gives_the_documented_labels(stack):
    targets = stack["prom"].get("/api/v1/targets")
    active = {t["labels"]["job"]: [] for t in targets["activeTargets"]}
    for t in targets["activeTargets"]:
        active[t["labels"]["job"]].append(t)
    assert sorted(active) == ["kvcache-nodes", "kvcache-operator"]
    nodes = sorted(active["kvcache-nodes"], key=lambda t: t["labels"]["pod"])
    assert [t["labels"]["pod"] for t in nodes] == sorted(stack["nodes"])
    for t in nodes:
        pod = t["labels"]["pod"]
        assert t["health"] == "up", t
        assert t["labels"] == {"job": "kvcache-nodes", "namespace": NAMESPACE,
                               "kvcache_cluster": CLUSTER, "shard": pod.split("-")[-2],
                               "pod": pod, "instance": pod}
        assert t["scrapeUrl"] == f"http://{stack['nodes'][pod]}/metrics"
    [operator] = active["kvcache-operator"]
    pod = operator["labels"]["pod"]
    assert operator["health"] == "up"
    assert operator["labels"] == {"job": "kvcache-operator", "namespace": OPERATOR_NS,
                                  "pod": pod, "instance": pod}
    assert operator["scrapeUrl"] == f"http://{stack['operator']}/metrics"
    # Each job saw the other's pods and dropped them.
    dropped = {}
    for t in targets["droppedTargets"]:
        labels = t["discoveredLabels"]
        dropped.setdefault(labels["job"], set()).add(labels["__meta_kubernetes_pod_name"])
    assert pod in dropped["kvcache-nodes"]
    assert set(stack["nodes"]) <= dropped["kvcache-operator"]


def test_prometheus_account_reads_only_what_discovery_needs(stack):
    account = f"--as=system:serviceaccount:{PROMETHEUS_NS}:{PROMETHEUS_SA}"

    def can(verb, resource):
        return stack["lk"].kubectl("auth", "can-i", verb, resource, "-A", account,
                                   check=False).stdout.strip()
    assert [can("watch", r) for r in ("pods", "endpoints", "services")] == ["yes"] * 3
    assert [can("list", "secrets"), can("delete", "pods"), can("list", "configmaps")] == \
        ["no"] * 3


def test_operator_series_keep_their_kvcache_namespace(stack):
    # honor_labels: the per-KVCache series keep the KVCache's namespace; the others get the
    # operator pod's.
    prom = stack["prom"]
    [ready] = prom.query("kvcache_operator_kvcache_ready_nodes")
    assert (ready["metric"]["namespace"], ready["metric"]["name"]) == (NAMESPACE, CLUSTER)
    assert float(ready["value"][1]) == NODES
    assert "exported_namespace" not in ready["metric"]
    [leader] = prom.query("kvcache_operator_leader")
    assert leader["metric"]["namespace"] == OPERATOR_NS and leader["value"][1] == "1"


def test_every_exported_metric_is_in_prometheus(stack):
    _, series = exported_families(stack["node_exposition"])
    have = {r["metric"]["__name__"] for r in stack["prom"].query(
        'count by (__name__) ({__name__=~"kvcache_.*", kvcache_cluster="%s"})' % CLUSTER)}
    assert set(series) - have == set()
    _, series = exported_families(stack["operator_exposition"])
    have = {r["metric"]["__name__"] for r in stack["prom"].query(
        'count by (__name__) ({__name__=~"kvcache_operator_.*", job="kvcache-operator"})')}
    assert set(series) - have == set()


@pytest.mark.parametrize("expr", dashboard_queries())
def test_panel_query(stack, expr):
    result = stack["prom"].query(substitute(expr))
    if reasons := may_lack_data(expr, stack["known"]):
        skip_for(reasons)
    assert result, f"no data for {expr}"


@pytest.mark.parametrize("definition", variable_queries())
def test_variable_query(stack, definition):
    expr = label_values_to_promql(substitute(definition))
    result = stack["prom"].query(expr)
    if reasons := may_lack_data(expr, stack["known"]):
        skip_for(reasons)
    assert {v for r in result for v in r["metric"].values()}, f"no values for {definition}"


@pytest.mark.parametrize("expr", alert_rules())
def test_alert_expression(stack, expr):
    """Accepted, silent while all is well (promtool's unit tests check that each fires), and
    every series it selects exists."""
    prom = stack["prom"]
    assert prom.query(expr) == [], "fires on a healthy KVCache"
    reasons = may_lack_data(expr, stack["known"])
    for selector in sorted(set(SELECTOR.findall(expr))):
        if METRIC_NAME.match(selector).group(1) not in reasons:
            assert prom.query(selector), f"no data for {selector}"
    if reasons:
        skip_for(reasons)


def test_rules_evaluate_without_errors(stack):
    rules = [r for g in stack["prom"].get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    assert [(r["name"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []


def test_metrics_are_documented(stack):
    doc = METRICS_DOC.read_text()
    families = set(exported_families(stack["node_exposition"])[0]) | set(
        exported_families(stack["operator_exposition"])[0])
    used = set()
    for p in dashboard_queries() + variable_queries() + alert_rules():
        used |= set(METRIC_NAME.findall(p.values[0]))
    used = {re.sub(r"_bucket$", "", n) for n in used} - {"up"}
    missing = sorted(n for n in families | used if f"`{n}`" not in doc)
    assert missing == [], "not in docs/metrics.md"


def test_operator_metrics_are_the_documented_ones(stack):
    """Names and types of the operator's families, and the label names of each series it
    exports, are those of the operator table in docs/metrics.md. (prometheus-cpp writes no
    family that has no series yet: only OPTIONAL ones may be missing.)"""
    documented = documented_operator_metrics()
    families, series = exported_families(stack["operator_exposition"])
    families = {n: k for n, k in families.items() if n.startswith("kvcache_operator_")}
    assert families == {n: kind for n, (kind, _) in documented.items()
                        if n in families or n not in OPTIONAL}
    for name, labels in series.items():
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if family in documented:
            assert labels - {"le"} == documented[family][1], name


def test_documented_relabeling_is_the_tested_one():
    doc = METRICS_DOC.read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    jobs = [j for b in blocks if isinstance(b, dict) for j in b.get("scrape_configs", [])]
    tested = yaml.safe_load((HERE / "prometheus.yml").read_text())["scrape_configs"]
    assert [j["job_name"] for j in jobs] == [j["job_name"] for j in tested]
    for documented, ran in zip(jobs, tested):
        assert documented["kubernetes_sd_configs"][0]["role"] == "pod"
        assert documented["kubernetes_sd_configs"] == ran["kubernetes_sd_configs"]
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
    """Runs last in this module: it kills a replica's process twice (as the OOM killer would).
    The agent restarts a container at once the first time (the node is ready again within a
    scrape interval, too soon to see), after a 10 s back-off the second: the node is down
    meanwhile, and the ALERTS series Prometheus records shows the alert pending."""
    prom, lk = stack["prom"], stack["lk"]
    victim = stack["kvc"]["status"]["shards"][0]["replicas"][0]

    def restarted_and_ready():
        [status] = lk.get_json("pod", "-n", NAMESPACE, victim)["status"]["containerStatuses"]
        return status["restartCount"] >= 1 and status["ready"]
    lk.kill_pod(NAMESPACE, victim)
    await_condition(f"{victim} restarted and ready", restarted_and_ready, 60)
    killed = time.time()
    lk.kill_pod(NAMESPACE, victim)

    def pending_since_kill():
        # Only samples after the second kill: every node was pending while the KVCache started.
        window = int(time.time() - killed)
        return window >= 1 and [r["metric"]["pod"] for r in prom.query(
            'max_over_time(ALERTS{alertname="KVCacheNodeDown", alertstate="pending"}[%ds])'
            % window)]
    assert await_condition("KVCacheNodeDown pending for " + victim, pending_since_kill,
                           30) == [victim]
