#!/usr/bin/env python3
"""Generates the Grafana dashboards beside this file (the JSON files are the committed artefacts).

    python3 generate.py           # rewrite kvcache-data-plane.json and kvcache-operator.json
    python3 generate.py --check   # exit 1 if a committed file differs from what this writes

One script keeps both dashboards consistent: the same datasource variable, the same label
selectors (the labels of the kubernetes_sd relabeling in docs/metrics.md), the same panel
defaults. Every expression is checked against a real Prometheus scraping a real KVCache by
tests/monitoring/test_prometheus_k8s.py. Grafana schemaVersion 39 (Grafana 10.x/11.x).
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# Node series: every selector narrows by the dashboard's variables.
NODE = 'namespace=~"$namespace", kvcache_cluster=~"$cluster", shard=~"$shard", instance=~"$instance"'
# Operator series: operator pods; per-KVCache series carry the KVCache's namespace and name.
OPERATOR = 'instance=~"$instance"'
KVCACHE = 'namespace=~"$namespace", name=~"$cluster"'


def sel(metric, selector, extra=""):
    inner = selector + (", " + extra if extra else "")
    return f"{metric}{{{inner}}}"


def rate(metric, selector=NODE, extra="", by=None, fn="rate"):
    body = f"{fn}({sel(metric, selector, extra)}[{RATE}])"
    return f"sum by ({by}) ({body})" if by else f"sum({body})"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping at the edge."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def _place(self, panel, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = self.next_id
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)

    def row(self, title):
        if self.x:
            self.y += self.row_height
        self.x, self.row_height = 0, 0
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_height = 0, self.y + 1, 0

    def add(self, panel, w, h):
        self._place(panel, w, h)


def target(expr, legend="", ref="A", table=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "refId": ref}
    if table:
        t.update({"format": "table", "instant": True, "range": False})
    else:
        t.update({"instant": False, "range": True})
    return t


def targets(queries, table=False):
    return [target(q[0], q[1] if len(q) > 1 else "", chr(ord("A") + i), table)
            for i, q in enumerate(queries)]


def timeseries(title, description, queries, unit="short", stack=False, bars=False, minimum=0):
    defaults = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack or bars else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(queries),
    }


def stat(title, description, queries, unit="short", thresholds=None, decimals=None):
    steps = thresholds or [{"color": "green", "value": None}]
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": steps}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
            "orientation": "auto", "textMode": "auto",
        },
        "targets": targets(queries),
    }


def table(title, description, queries, rename):
    """An instant table: one query per column, merged on their common labels."""
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "targets": targets(queries, table=True),
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": rename}},
        ],
    }


def RED_AT(value, base="green", bad="red"):
    """Stat thresholds: `base` below `value`, `bad` from it on (swap them for "low is bad")."""
    return [{"color": base, "value": None}, {"color": bad, "value": value}]


def variable(name, label, query):
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "regex": "", "sort": 1, "hide": 0,
    }


def datasource_variable():
    return {"type": "datasource", "name": "datasource", "label": "Data source",
            "query": "prometheus", "current": {}, "options": [], "refresh": 1, "regex": "",
            "hide": 0, "includeAll": False, "multi": False}


def dashboard(uid, title, description, panels, variables):
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [{"type": "dashboards", "tags": ["kvcache"], "asDropdown": False,
                   "includeVars": False, "keepTime": True, "title": "kvcache dashboards",
                   "icon": "external link", "targetBlank": False, "tooltip": "", "url": ""}],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["kvcache"],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def data_plane():
    L = Layout()
    hits = rate("kvcache_node_hits_total")
    misses = rate("kvcache_node_misses_total")
    all_requests = rate("kvcache_node_http_requests_total")

    L.row("Overview")
    L.add(stat("Ready nodes", "Nodes whose /readyz answers 200, of all scraped node targets.",
               [(f"sum(kvcache_node_ready{{{NODE}}})", "ready"),
                (f"count(up{{{NODE}}})", "targets")]), 4, 4)
    L.add(stat("Requests/s", "HTTP requests answered per second by the selected nodes "
               "(a forwarded request counts on both nodes).", [(all_requests, "")], "reqps"), 4, 4)
    L.add(stat("Hit ratio", "Reads that found a live key, of all reads.",
               [(f"{hits} / ({hits} + {misses})", "")], "percentunit",
               RED_AT(0.8, "red", "green"), 1), 4, 4)
    five_xx = rate("kvcache_node_http_requests_total", extra='code=~"5..|other"')
    L.add(stat("5xx ratio", "Answers with a 5xx (or unlisted) status, of all answers.",
               [(f"({five_xx} or vector(0)) / {all_requests}", "")], "percentunit",
               RED_AT(0.01), 2), 4, 4)
    L.add(stat("Keys", "Keys held by the selected nodes (replicas count again).",
               [(f"sum(kvcache_node_keys{{{NODE}}})", "")]), 4, 4)
    L.add(stat("Memory of limit", "Entry memory of the selected nodes against their "
               "--max-memory (nodes without a limit are left out).",
               [(f"sum(kvcache_node_memory_bytes{{{NODE}}} and kvcache_node_max_memory_bytes{{{NODE}}} > 0)"
                 f" / sum(kvcache_node_max_memory_bytes{{{NODE}}} > 0)", "")],
               "percentunit", [{"color": "green", "value": None},
                               {"color": "orange", "value": 0.8}, {"color": "red", "value": 0.95}], 1), 4, 4)

    L.row("Requests")
    L.add(timeseries("Request rate by method and code",
                     "Requests answered per second, by HTTP method and status code.",
                     [(rate("kvcache_node_http_requests_total", by="method, code"),
                       "{{method}} {{code}}")], "reqps", stack=True), 12, 8)
    L.add(timeseries("Request rate by instance", "Requests answered per second by each node.",
                     [(rate("kvcache_node_http_requests_total", by="instance"), "{{instance}}")],
                     "reqps", stack=True), 12, 8)
    bucket = rate("kvcache_node_http_request_duration_seconds_bucket", by="method, le")
    L.add(timeseries("Latency by method (p50, p99)",
                     "Time from a parsed request to its response being queued, by method; "
                     "a forwarded request includes the hop.",
                     [(f"histogram_quantile(0.99, {bucket})", "p99 {{method}}"),
                      (f"histogram_quantile(0.5, {bucket})", "p50 {{method}}")], "s"), 12, 8)
    L.add(timeseries("Errors by code", "4xx and 5xx answers per second by status and method. "
                     "404 on GET is an ordinary miss; 503 means an owner was unreachable or a "
                     "role is moving; 507 means memory or disk is full.",
                     [(rate("kvcache_node_http_requests_total", extra='code=~"4..|5..|other"',
                            by="code, method"), "{{code}} {{method}}")], "reqps", stack=True), 12, 8)

    L.row("Cache")
    hits_i = rate("kvcache_node_hits_total", by="instance")
    misses_i = rate("kvcache_node_misses_total", by="instance")
    L.add(timeseries("Hit ratio by instance", "Reads that found a live key, of all reads that "
                     "reached the owning node.",
                     [(f"{hits_i} / ({hits_i} + {misses_i})", "{{instance}}")],
                     "percentunit"), 8, 8)
    L.add(timeseries("Keys by instance", "Keys held locally, including expired ones not yet "
                     "reclaimed.", [(f"sum by (instance) (kvcache_node_keys{{{NODE}}})",
                                     "{{instance}}")]), 8, 8)
    L.add(timeseries("Memory vs limit", "Entry memory (what --max-memory limits), the limit, "
                     "and the process's resident set.",
                     [(f"sum by (instance) (kvcache_node_memory_bytes{{{NODE}}})", "used {{instance}}"),
                      (f"sum by (instance) (kvcache_node_max_memory_bytes{{{NODE}}} > 0)",
                       "limit {{instance}}"),
                      (f"sum by (instance) (kvcache_node_resident_memory_bytes{{{NODE}}})",
                       "RSS {{instance}}")], "bytes"), 8, 8)
    L.add(timeseries("Evictions", "Keys evicted per second to stay under --max-memory.",
                     [(rate("kvcache_node_evictions_total", by="instance"), "{{instance}}")],
                     "ops"), 12, 7)
    L.add(timeseries("Expirations", "Expired keys reclaimed per second.",
                     [(rate("kvcache_node_expirations_total", by="instance"), "{{instance}}")],
                     "ops"), 12, 7)

    L.row("Cluster and replication")
    fwd_i = rate("kvcache_node_forwarded_requests_total", by="instance")
    L.add(timeseries("Forwarded share", "Requests a node passed on to the owning shard's "
                     "primary, of all requests it answered: clients that spread requests "
                     "over the Service see about (shards-1)/shards.",
                     [(f"{fwd_i} / {rate('kvcache_node_http_requests_total', by='instance')}",
                       "{{instance}}")], "percentunit"), 8, 8)
    L.add(timeseries("Forwarded by code", "Forwarded requests per second by the owner's answer "
                     "(503: owner unreachable).",
                     [(rate("kvcache_node_forwarded_requests_total", by="code"), "{{code}}")],
                     "reqps", stack=True), 8, 8)
    L.add(table("Roles", "Each node's shard and role now, with the topology epoch it holds.",
                [(f"max by (instance, shard, role) (kvcache_node_role{{{NODE}}} == 1)"
                  f" * on (instance) group_left"
                  f" max by (instance) (kvcache_node_topology_epoch{{{NODE}}})", "")],
                {"Value": "epoch"}), 8, 8)
    L.add(timeseries("Replication lag", "Records a replica still has to apply (primary offset "
                     "minus applied offset).",
                     [(f"max by (shard, instance) (kvcache_node_replication_lag_records{{{NODE}}})",
                       "shard {{shard}} {{instance}}")]), 8, 8)
    L.add(timeseries("Replication offset", "Offset each node has applied; replicas follow "
                     "their primary.",
                     [(f"max by (shard, instance) (kvcache_node_replication_offset{{{NODE}}})",
                       "shard {{shard}} {{instance}}")], minimum=None), 8, 8)
    L.add(timeseries("Connected replicas and full syncs",
                     "Replicas streaming from each primary, and full snapshot syncs (a replica "
                     "too far behind, or new).",
                     [(f"sum by (instance) (kvcache_node_replication_connected_replicas{{{NODE}}})",
                       "connected {{instance}}"),
                      (rate("kvcache_node_replication_full_syncs_total", by="instance",
                            fn="increase"), "full syncs {{instance}}")]), 8, 8)
    L.add(timeseries("Slot migration", "Keys moved per second by slot migrations, and whether "
                     "a migration is running on the node.",
                     [(rate("kvcache_node_migration_keys_moved_total", by="instance"),
                       "keys/s {{instance}}"),
                      (f"max by (instance) (kvcache_node_migration_active{{{NODE}}})",
                       "active {{instance}}")]), 24, 7)

    L.row("Persistence")
    fsync = rate("kvcache_node_fsync_duration_seconds_bucket", by="instance, le")
    L.add(timeseries("fsync latency (p50, p99)", "Time of each log fdatasync; with --fsync "
                     "always a write waits for one.",
                     [(f"histogram_quantile(0.99, {fsync})", "p99 {{instance}}"),
                      (f"histogram_quantile(0.5, {fsync})", "p50 {{instance}}")], "s"), 8, 8)
    L.add(timeseries("Log writes", "Bytes appended to the log per second.",
                     [(rate("kvcache_node_log_bytes_total", by="instance"), "{{instance}}")],
                     "Bps"), 8, 8)
    L.add(timeseries("Persistence errors", "Failed log writes or fsyncs, failed snapshots, and "
                     "whether the log refuses writes (1). Any of these fires "
                     "KVCachePersistenceErrors.",
                     [(rate("kvcache_node_log_write_errors_total", by="instance", fn="increase"),
                       "log write errors {{instance}}"),
                      (rate("kvcache_node_snapshot_failures_total", by="instance", fn="increase"),
                       "snapshot failures {{instance}}"),
                      (f"max by (instance) (kvcache_node_log_failed{{{NODE}}})",
                       "log failed {{instance}}")]), 8, 8)
    L.add(timeseries("Snapshot age", "Time since the last snapshot finished (nodes that have "
                     "taken none since they started are left out).",
                     [(f"time() - max by (instance) (kvcache_node_snapshot_timestamp_seconds{{{NODE}}} > 0)",
                       "{{instance}}")], "s"), 8, 8)
    L.add(timeseries("Snapshot duration", "Duration of each node's last snapshot.",
                     [(f"max by (instance) (kvcache_node_snapshot_duration_seconds{{{NODE}}})",
                       "{{instance}}")], "s"), 8, 8)
    L.add(table("Last start", "What each node's last start recovered.",
                [(f"max by (instance) (kvcache_node_recovery_duration_seconds{{{NODE}}})", ""),
                 (f"max by (instance) (kvcache_node_recovery_replayed_records{{{NODE}}})", ""),
                 (f"max by (instance) (kvcache_node_recovery_corrupt_records{{{NODE}}})", ""),
                 (f"max by (instance) (kvcache_node_recovery_skipped_snapshots{{{NODE}}})", ""),
                 (f"time() - max by (instance) (kvcache_node_start_time_seconds{{{NODE}}})", "")],
                {"Value #A": "recovery seconds", "Value #B": "records replayed",
                 "Value #C": "corrupt records", "Value #D": "snapshots skipped",
                 "Value #E": "uptime seconds"}), 8, 8)

    L.row("Versions")
    L.add(table("Versions", "Nodes running each version.",
                [(f"count by (version) (kvcache_node_build_info{{{NODE}}})", "")],
                {"Value": "nodes"}), 24, 5)

    base = 'kvcache_node_build_info{namespace=~"$namespace"'
    variables = [
        variable("namespace", "Namespace", "label_values(kvcache_node_build_info, namespace)"),
        variable("cluster", "KVCache", f"label_values({base}}}, kvcache_cluster)"),
        variable("shard", "Shard",
                 f'label_values({base}, kvcache_cluster=~"$cluster"}}, shard)'),
        variable("instance", "Instance",
                 f'label_values({base}, kvcache_cluster=~"$cluster", shard=~"$shard"}}, instance)'),
    ]
    return dashboard("kvcache-data-plane", "kvcache / Data plane",
                     "kvcache nodes: requests, cache, cluster and replication, persistence.",
                     L.panels, variables)


def operator():
    L = Layout()
    reconciles = rate("kvcache_operator_reconcile_total", OPERATOR)
    errors = rate("kvcache_operator_reconcile_errors_total", OPERATOR)

    L.row("Overview")
    L.add(stat("Leader", "1 when one of the selected operator instances holds the leader lease.",
               [(f"max(kvcache_operator_leader{{{OPERATOR}}})", "")], "short",
               RED_AT(1, "red", "green")), 4, 4)
    L.add(stat("KVCaches available", "KVCaches whose Available condition is True.",
               [(f"sum(kvcache_operator_kvcache_available{{{KVCACHE}}})", "available"),
                (f"count(kvcache_operator_kvcache_available{{{KVCACHE}}})", "total")]), 5, 4)
    L.add(stat("Reconciles/s", "Reconciles finished per second.", [(reconciles, "")],
               "ops"), 5, 4)
    L.add(stat("Error ratio", "Reconciles that failed, of all reconciles.",
               [(f"{errors} / {reconciles}", "")], "percentunit", RED_AT(0.2), 1), 5, 4)
    L.add(stat("Queue depth", "KVCaches waiting in the work queue.",
               [(f"sum(kvcache_operator_workqueue_depth{{{OPERATOR}}})", "")], "short",
               RED_AT(50)), 5, 4)

    L.row("Reconciles")
    L.add(timeseries("Reconciles by result", "Reconciles finished per second: success, error, "
                     "or requeue (waiting on something, e.g. a pod to turn ready).",
                     [(rate("kvcache_operator_reconcile_total", OPERATOR, by="result"),
                       "{{result}}")], "ops", stack=True), 12, 8)
    L.add(timeseries("Reconcile errors", "Failed reconciles per second by operator instance.",
                     [(rate("kvcache_operator_reconcile_errors_total", OPERATOR, by="instance"),
                       "{{instance}}")], "ops"), 12, 8)
    dur = rate("kvcache_operator_reconcile_duration_seconds_bucket", OPERATOR, by="le")
    L.add(timeseries("Reconcile duration (p50, p90, p99)", "Time one reconcile takes.",
                     [(f"histogram_quantile(0.99, {dur})", "p99"),
                      (f"histogram_quantile(0.9, {dur})", "p90"),
                      (f"histogram_quantile(0.5, {dur})", "p50")], "s"), 12, 8)
    L.add(timeseries("Work queue depth", "KVCaches waiting to be reconciled.",
                     [(f"sum by (instance) (kvcache_operator_workqueue_depth{{{OPERATOR}}})",
                       "{{instance}}")]), 12, 8)

    L.row("Leadership, failovers and migrations")
    L.add(timeseries("Leader", "Which operator instance holds the lease (1).",
                     [(f"max by (instance) (kvcache_operator_leader{{{OPERATOR}}})",
                       "{{instance}}")]), 8, 8)
    L.add(timeseries("Failovers", "Primaries replaced by a promoted replica.",
                     [(rate("kvcache_operator_failovers_total", OPERATOR, fn="increase"),
                       "failovers")], bars=True), 8, 8)
    L.add(timeseries("Migrations", "Slot migrations started (resharding).",
                     [(rate("kvcache_operator_migrations_total", OPERATOR, fn="increase"),
                       "migrations")], bars=True), 8, 8)

    L.row("KVCaches")
    L.add(table("Readiness", "Each KVCache's ready and desired nodes and its Available "
                "condition (1 = True).",
                [(f"max by (namespace, name) (kvcache_operator_kvcache_ready_nodes{{{KVCACHE}}})", ""),
                 (f"max by (namespace, name) (kvcache_operator_kvcache_desired_nodes{{{KVCACHE}}})", ""),
                 (f"max by (namespace, name) (kvcache_operator_kvcache_available{{{KVCACHE}}})", "")],
                {"Value #A": "ready nodes", "Value #B": "desired nodes",
                 "Value #C": "available"}), 10, 9)
    L.add(timeseries("Ready nodes of desired", "Ready nodes as a share of desired nodes per "
                     "KVCache.",
                     [(f"max by (namespace, name) (kvcache_operator_kvcache_ready_nodes{{{KVCACHE}}})"
                       f" / max by (namespace, name) (kvcache_operator_kvcache_desired_nodes{{{KVCACHE}}} > 0)",
                       "{{namespace}}/{{name}}")], "percentunit"), 14, 9)

    L.row("Kubernetes API")
    L.add(timeseries("API requests by verb and code", "Requests the operator sends to the "
                     "Kubernetes API server (code \"error\": no answer).",
                     [(rate("kvcache_operator_kube_requests_total", OPERATOR, by="verb, code"),
                       "{{verb}} {{code}}")], "reqps", stack=True), 12, 8)
    kube = rate("kvcache_operator_kube_request_duration_seconds_bucket", OPERATOR, by="verb, le")
    L.add(timeseries("API latency by verb (p99)", "Latency of Kubernetes API requests (a watch: "
                     "until its headers arrive).",
                     [(f"histogram_quantile(0.99, {kube})", "p99 {{verb}}")], "s"), 12, 8)
    L.add(timeseries("Watch restarts", "Informer watches started again, by resource and reason "
                     "(410 Gone means a relist).",
                     [(rate("kvcache_operator_kube_watch_restarts_total", OPERATOR,
                            by="resource, reason", fn="increase"), "{{resource}} {{reason}}")],
                     bars=True), 12, 7)
    L.add(timeseries("Retries", "Requests sent again after a 429 or 5xx with Retry-After: the "
                     "API server is pushing back.",
                     [(rate("kvcache_operator_kube_request_retries_total", OPERATOR, by="code",
                            fn="increase"), "{{code}}")], bars=True), 12, 7)

    kv = "kvcache_operator_kvcache_desired_nodes"
    variables = [
        variable("instance", "Operator instance", "label_values(kvcache_operator_leader, instance)"),
        variable("namespace", "Namespace", f"label_values({kv}, namespace)"),
        variable("cluster", "KVCache", f'label_values({kv}{{namespace=~"$namespace"}}, name)'),
    ]
    return dashboard("kvcache-operator", "kvcache / Operator",
                     "The kvcache operator: reconciles, queue, leadership, failovers, "
                     "migrations, each KVCache's readiness, and its Kubernetes API traffic.",
                     L.panels, variables)


DASHBOARDS = {"kvcache-data-plane.json": data_plane, "kvcache-operator.json": operator}


def render(build):
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv):
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run charts/kvcache-operator/dashboards/generate.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
