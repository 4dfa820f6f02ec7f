"""Chart tests that need no cluster: helm lint and helm template for every ci/ scenario, what
each scenario renders, the values schema refusing bad values, and the CRD copy equal to crds/.

    HELM=build/bin/helm /usr/bin/python3 -m pytest tests/chart/test_chart_render.py
"""

import json
import re
import tarfile

import pytest
import yaml

from chartlib import (CACHE_CHART, CACHE_SCENARIOS, CHART, CRD_COPY, CRD_SOURCE, ROOT, RULES,
                      SCENARIOS, by_kind, helm, one, render)

RESTRICTED_KINDS = {"Deployment", "Pod"}


def scenario_values(name):
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def test_every_scenario_named_in_the_brief_exists():
    assert {"default-values.yaml", "namespace-scoped-values.yaml", "monitoring-on-values.yaml",
            "crds-off-values.yaml"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint(scenario):
    out = helm("lint", "--strict", CHART, "-f", CHART / "ci" / scenario,
               "--namespace", "kvcache-system")
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("scenario", CACHE_SCENARIOS)
def test_lint_cache_chart(scenario):
    out = helm("lint", "--strict", CACHE_CHART, "-f", CACHE_CHART / "ci" / scenario)
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_template_renders_one_kind_per_file_with_labels(scenario):
    text, docs = render(values=CHART / "ci" / scenario)
    assert docs, "nothing rendered"
    kinds_by_source = {}
    for source, body in re.findall(r"^# Source: (\S+)\n(.*?)(?=^---$|\Z)", text, re.M | re.S):
        for doc in yaml.safe_load_all(body):
            if doc:
                kinds_by_source.setdefault(source, set()).add(doc["kind"])
    for source, kinds in kinds_by_source.items():
        assert len(kinds) == 1, f"{source} renders several kinds: {kinds}"
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deployment_is_restricted_with_probes_and_leader_election(scenario):
    values = scenario_values(scenario)
    _, docs = render(values=CHART / "ci" / scenario)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["image"] == "kvcache/kvcache-operator:0.1.0"
    args = container["args"]
    assert "--metrics-listen=0.0.0.0:8080" in args
    leader = values.get("leaderElection", {}).get("enabled", True)
    assert ("--leader-elect" in args) == leader
    scope = values.get("rbac", {}).get("scope", "cluster")
    if scope == "namespace":
        assert f"--namespace={values['watchNamespace']}" in args
    else:
        assert not any(a.startswith("--namespace") for a in args)
    assert dep["spec"]["replicas"] == values.get("replicaCount", 1)
    # Two or more replicas, no affinity given: spread over nodes where possible.
    spread = pod.get("affinity", {}).get("podAntiAffinity", {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution", [])
    if values.get("replicaCount", 1) > 1 and not values.get("affinity"):
        (term,) = spread
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
            dep["spec"]["selector"]["matchLabels"]
    else:
        assert not spread


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_scope(scenario):
    values = scenario_values(scenario)
    _, docs = render(values=CHART / "ci" / scenario)
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "Role")}
    bindings = by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa,
                                  "namespace": "kvcache-system"}]
    leader = [r for n, r in roles.items() if n.endswith("-leader-election")]
    if values.get("leaderElection", {}).get("enabled", True):
        assert leader[0]["metadata"]["namespace"] == "kvcache-system"
        assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "create", "update"]} in leader[0]["rules"]
    else:
        assert not leader
    # Both scopes: a ClusterRole reading the two prometheus-operator CRDs (cluster-scoped).
    cluster_rules = one(docs, "ClusterRole")["rules"]
    one(docs, "ClusterRoleBinding")
    crd_rule = {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                "resourceNames": ["servicemonitors.monitoring.coreos.com",
                                  "prometheusrules.monitoring.coreos.com"],
                "verbs": ["get"]}
    assert crd_rule in cluster_rules
    cluster_role = one(docs, "ClusterRole")["metadata"]["name"]
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role
    if values.get("rbac", {}).get("scope", "cluster") == "namespace":
        assert cluster_rules == [crd_rule]
        # Cluster-scoped, so named per namespace: two releases of one name may coexist.
        assert cluster_role.endswith("-kvcache-system"), cluster_role
        (watched,) = [r for n, r in roles.items() if not n.endswith("-leader-election")]
        assert watched["metadata"]["namespace"] == values["watchNamespace"]
        rules = watched["rules"]
    else:
        rules = [r for r in cluster_rules if r != crd_rule]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    # Spot checks; the exact list is compared with the audit log by the operator's e2e test
    # (tests/e2e/test_rbac_audit.py).
    assert ("kvcache.io", "kvcaches/status", "update") in granted
    assert ("apps", "statefulsets", "patch") in granted
    assert ("events.k8s.io", "events", "create") in granted
    assert ("", "pods", "delete") in granted  # rolling updates (OnDelete StatefulSets)
    assert ("", "secrets", "list") not in granted  # read by name only
    assert not any("*" in (g, r, v) for g, r, v in granted)
    assert not any("resourceNames" in rule for rule in rules)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_crd_rendered_from_crds_folder(scenario):
    values = scenario_values(scenario)
    _, docs = render(values=CHART / "ci" / scenario)
    crds = by_kind(docs, "CustomResourceDefinition")
    if not values.get("crds", {}).get("install", True):
        assert not crds
        return
    (crd,) = crds
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert crd["spec"] == source["spec"], "rendered CRD spec differs from crds/"
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    keep = values.get("crds", {}).get("keep", True)
    annotations = crd["metadata"].get("annotations") or {}
    assert (annotations.get("helm.sh/resource-policy") == "keep") == keep
    for key, value in (source["metadata"].get("annotations") or {}).items():
        assert annotations.get(key) == value


def test_crd_copy_is_byte_for_byte_crds_folder():
    assert CRD_SOURCE.exists(), f"{CRD_SOURCE} is missing"
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/kvcache-operator/files/crds differs from crds/: "
        "run charts/kvcache-operator/sync-crds.sh")


def test_crds_keep_false_drops_the_keep_annotation():
    _, docs = render(sets=["crds.keep=false"])
    crd = one(docs, "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_monitoring_objects_follow_their_switches():
    _, docs = render(values=CHART / "ci" / "monitoring-on-values.yaml")
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert all(svc["metadata"]["labels"][k] == v
               for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    _, docs = render()
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")


def test_every_dashboard_becomes_a_labelled_configmap():
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    _, docs = render()
    cms = by_kind(docs, "ConfigMap")
    assert len(cms) == len(dashboards)
    by_file = {k: v for cm in cms for k, v in cm["data"].items()}
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(cm["metadata"]["name"]) <= 63
    for path in dashboards:
        assert json.loads(by_file[path.name]) == json.loads(path.read_text())
    _, docs = render(sets=["dashboards.enabled=false"])
    assert not by_kind(docs, "ConfigMap")


def test_helm_test_hook_targets_the_metrics_service():
    _, docs = render(extra=["--show-only", "templates/tests/test-connection.yaml"])
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    svc = render(extra=["--show-only", "templates/metrics-service.yaml"])[1][0]
    url = pod["spec"]["containers"][0]["args"][-1]
    assert f"http://{svc['metadata']['name']}.kvcache-system.svc:8080/readyz" == url


# Each bad value and the words helm's refusal must contain.
REFUSALS = [
    (["rbac.scope=global"], "at '/rbac/scope': value must be one of 'cluster', 'namespace'"),
    (["replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
    (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (["metrics.port=70000"], "at '/metrics/port': maximum"),
    (["metrics.serviceMonitor.interval=soon"], "at '/metrics/serviceMonitor/interval'"),
    (["crds.install=yes"], "at '/crds/install': got string, want boolean"),
    (["watchNamespace=Bad_NS", "rbac.scope=namespace"], "at '/watchNamespace'"),
    (["extraArgs={-v}"], "at '/extraArgs/0'"),
    (["image.digest=md5:abc"], "at '/image/digest'"),
    (["colour=blue"], "additional properties 'colour' not allowed"),
    (["rbac.create=true", "rbac.namespaced=true"], "additional properties 'namespaced' not allowed"),
    (["replicaCount=2", "leaderElection.enabled=false"],
     "replicaCount=2 needs leaderElection.enabled=true"),
    (["watchNamespace=apps"], 'watchNamespace="apps" is only used with rbac.scope=namespace'),
]


@pytest.mark.parametrize("sets,message", REFUSALS, ids=[" ".join(s) for s, _ in REFUSALS])
def test_schema_refuses_bad_values(sets, message):
    args = ["template", "kvc", CHART]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0, f"helm accepted {sets}"
    assert message in proc.stderr, proc.stderr


def test_every_value_is_commented_and_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    path = []
    uncommented, unschemed, documented_paths = [], [], []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        path = path[:depth] + [m.group(2)]
        node, free_form = schema, False
        for key in path[:-1]:
            node = (node.get("properties") or {}).get(key) or {}
            if "properties" not in node:
                free_form = True  # inside a Kubernetes object passed through (resources, ...)
                break
        if free_form:
            continue
        node = (node.get("properties") or {}).get(path[-1])
        if node is None:
            unschemed.append(".".join(path))
        if m.group(3).strip() != "":
            j = i - 1
            block = []
            while j >= 0 and lines[j].strip().startswith("#"):
                block.append(lines[j].strip())
                j -= 1
            if not any(b.startswith("# --") for b in block):
                uncommented.append(".".join(path))
            documented_paths.append(".".join(path))
    assert not uncommented, f"values without a '# --' comment: {uncommented}"
    assert not unschemed, f"values missing from values.schema.json: {unschemed}"
    documented = (ROOT / "docs" / "install.md").read_text()
    undocumented = [p for p in documented_paths if f"`{p}`" not in documented]
    assert not undocumented, f"values missing from docs/install.md's table: {undocumented}"


def test_package_carries_crd_rules_and_dashboards(tmp_path):
    helm("package", CHART, "-d", tmp_path)
    (pkg,) = tmp_path.glob("kvcache-operator-*.tgz")

    names = set(tarfile.open(pkg).getnames())
    for want in ("kvcache-operator/files/crds/kvcache.io_kvcaches.yaml",
                 "kvcache-operator/rules/kvcache.rules.yaml",
                 "kvcache-operator/values.schema.json"):
        assert want in names
    assert {f"kvcache-operator/dashboards/{p.name}" for p in (CHART / "dashboards").glob("*.json")} <= names
    assert not any(n.endswith((".py", ".sh")) for n in names), sorted(names)
    # The packaged chart renders the same as the directory.
    assert render(chart=pkg)[0] == render()[0]
