"""The charts against a real API server (localk8s, started by cluster_test.sh): every ci/ render
accepted by `kubectl apply --dry-run=server --validate=strict`, then one release's life:
helm install, helm test, a KVCache from charts/kvcache with an Ingress, curl PUT/GET through a
real ingress controller (traefik, ingress/traefik.yaml), helm upgrade to a chart whose CRD
changed (the CRD follows), helm rollback (the CRD follows back), helm uninstall (the CRD stays
with crds.keep), and a crds.keep=false release whose uninstall removes the CRD.

Readiness expectation, explicit: the operator pod can only become Ready when
$LOCALK8S_BIN_DIR/kvcache-operator exists (localk8s maps the image kvcache/kvcache-operator to
it). Without it the steps that need a running operator (install --wait, helm test, the KVCache
reaching Available) are skipped with that reason and every other step still runs; with
CHART_REQUIRE_OPERATOR=1 (set by CMake once the operator target exists) a missing binary fails.

Same for the ingress controller: localk8s runs the image docker.io/library/traefik as
$LOCALK8S_BIN_DIR/traefik (built by tests/localk8s/upstream/build.sh); without it the
curl-via-ingress steps are skipped with that reason, or fail with CHART_REQUIRE_TRAEFIK=1 (set
by CMake: `make build` always builds traefik).

The tests run in file order and share one cluster; each later step relies on the earlier ones.
"""

import http.client
import json
import os
import pathlib
import re
import shutil
import time

import pytest
import yaml

from chartlib import CACHE_CHART, CACHE_SCENARIOS, CHART, ROOT, SCENARIOS, helm, render, run

BIN = pathlib.Path(os.environ.get("LOCALK8S_BIN_DIR", ROOT / "build" / "bin"))
KUBECTL = os.environ.get("KUBECTL", str(BIN / "kubectl"))
NS = "kvcache-system"          # the operator's release namespace
APPS = "kvcache-apps"          # where the sample KVCache lives (and the namespace-scoped watch)
RELEASE = "kvcache-operator"   # as docs/install.md: its objects are named "kvcache-operator"
FULLNAME = "kvcache-operator"
CRD = "kvcaches.kvcache.io"
OPERATOR = BIN / "kvcache-operator"
STANDIN = os.environ.get("CHART_OPERATOR_STANDIN") == "1"
HAVE_OPERATOR = OPERATOR.exists() or STANDIN
NO_OPERATOR = f"{OPERATOR} does not exist yet: the operator pod cannot become Ready"
needs_real_operator = pytest.mark.skipif(not OPERATOR.exists() or STANDIN,
                                         reason=NO_OPERATOR + " (or a stand-in plays it)")

if os.environ.get("CHART_REQUIRE_OPERATOR") == "1" and not OPERATOR.exists():
    raise RuntimeError(f"CHART_REQUIRE_OPERATOR=1 but {OPERATOR} is missing")

needs_operator = pytest.mark.skipif(not HAVE_OPERATOR, reason=NO_OPERATOR)

TRAEFIK = BIN / "traefik"
TRAEFIK_MANIFEST = ROOT / "tests" / "chart" / "ingress" / "traefik.yaml"
needs_traefik = pytest.mark.skipif(
    not TRAEFIK.exists(),
    reason=f"{TRAEFIK} does not exist (tests/localk8s/upstream/build.sh builds it): no ingress "
           "controller")
if os.environ.get("CHART_REQUIRE_TRAEFIK") == "1" and not TRAEFIK.exists():
    raise RuntimeError(f"CHART_REQUIRE_TRAEFIK=1 but {TRAEFIK} is missing")
# The sample's values: its Ingress routes this host (IngressClass traefik) to the cache.
INGRESS_VALUES = CACHE_CHART / "ci" / "ingress-values.yaml"
INGRESS_HOST = yaml.safe_load(INGRESS_VALUES.read_text())["spec"]["ingress"]["host"]
wait_args = ["--wait", "--timeout", "5m"] if HAVE_OPERATOR else []


def k(*args, check=True, input=None, timeout=300):
    return run([KUBECTL, *map(str, args)], check=check, input=input, timeout=timeout)


def get_json(*args):
    return json.loads(k("get", *args, "-o", "json").stdout)


def await_condition(what, predicate, timeout=300, interval=1.0):
    """Polls predicate() until it returns a truthy value; fails with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except AssertionError as e:  # a kubectl call failed; keep trying until the deadline
            last = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last})")


def local_http(method, port, path, host, body=None):
    """One request to 127.0.0.1:port with the given Host header; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def traefik_ports():
    """The NodePorts of traefik's Service on 127.0.0.1: {"web": port, "admin": port}."""
    svc = get_json("service", "-n", "traefik", "traefik")
    return {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]}


def traefik_routers_for(host):
    """The routers traefik is serving now (its API's runtime view) whose rule names host."""
    try:
        status, body = local_http("GET", traefik_ports()["admin"], "/api/http/routers",
                                  "localhost")
    except OSError as e:  # not reachable yet: await_condition retries AssertionErrors
        raise AssertionError(f"traefik's API: {e}") from e
    assert status == 200, (status, body)
    # The kubernetesingress provider writes rules as Host("h") && PathPrefix("/"); either
    # quote is valid rule syntax.
    names_host = re.compile(r"Host\([\"`]" + re.escape(host) + r"[\"`]\)")
    return [r for r in json.loads(body) if names_host.search(r.get("rule", ""))]


def traefik_diagnostics():
    """What to look at when traefik does not serve the Ingress: its pod, its log, the objects
    the route is made of."""
    try:
        routers = local_http("GET", traefik_ports()["admin"], "/api/http/routers", "localhost")
    except (OSError, AssertionError) as e:
        routers = e
    return f"traefik's routers: {routers}\n" + "\n".join(k(*args, check=False).stdout for args in (
        ("-n", "traefik", "describe", "pods"),
        ("-n", "traefik", "logs", "deployment/traefik", "--tail=60"),
        ("-n", APPS, "get", "ingress,service,endpointslices,pods", "-o", "wide"),
        ("-n", APPS, "get", "endpointslices", "-o", "yaml")))


def crd_columns():
    crd = get_json("crd", CRD)
    return [c["name"] for v in crd["spec"]["versions"]
            for c in v.get("additionalPrinterColumns", [])]


def revision():
    return json.loads(helm("status", RELEASE, "-n", NS, "-o", "json").stdout)["version"]


@pytest.fixture(scope="module")
def changed_chart(tmp_path_factory):
    """A copy of the chart, version 0.1.1, whose CRD gained a printer column: the 'upgrade to
    a changed CRD' helm must carry to the cluster."""
    dst = tmp_path_factory.mktemp("chart") / "kvcache-operator"
    shutil.copytree(CHART, dst)
    chart = yaml.safe_load((dst / "Chart.yaml").read_text())
    chart["version"] = "0.1.1"
    (dst / "Chart.yaml").write_text(yaml.safe_dump(chart))
    crd_path = dst / "files" / "crds" / "kvcache.io_kvcaches.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        version.setdefault("additionalPrinterColumns", []).append(
            {"name": "ChartUpgrade", "type": "string", "jsonPath": ".metadata.uid",
             "priority": 1, "description": "Added by the chart upgrade test."})
    crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return dst


def test_01_namespaces_and_monitoring_crds():
    for ns in (NS, APPS):
        k("create", "namespace", ns)
    for ns in (NS, APPS):  # pods (the helm test hook) need the namespace's default SA
        await_condition(f"ServiceAccount {ns}/default",
                        lambda: k("get", "sa", "-n", ns, "default", check=False).returncode == 0,
                        timeout=60, interval=0.2)
    k("apply", "--server-side", "-f", ROOT / "tests" / "chart" / "crds")
    for name in ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        k("wait", "--for", "condition=established", "--timeout=60s", f"crd/{name}")


@needs_traefik
def test_01b_ingress_controller():
    # Started now so it becomes Ready while the operator installs; awaited in test_07b.
    k("apply", "-f", TRAEFIK_MANIFEST)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_02_every_render_accepted_by_the_apiserver(scenario):
    text, docs = render(values=CHART / "ci" / scenario, release=RELEASE, namespace=NS)
    out = k("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text)
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout


def test_03_install():
    helm("install", RELEASE, CHART, "-n", NS, *wait_args, timeout=400)
    assert revision() == 1
    k("wait", "--for", "condition=established", "--timeout=60s", f"crd/{CRD}")
    crd = get_json("crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    dep = get_json("deployment", "-n", NS, FULLNAME)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    # RBAC really grants what the operator needs, and no more than listed: spot checks through
    # the API server's own authorizer.
    sa = f"system:serviceaccount:{NS}:{FULLNAME}"
    assert_can(sa, [
        ("patch", "kvcaches.kvcache.io/status", APPS, "yes"),
        ("create", "statefulsets.apps", "default", "yes"),
        ("update", "leases.coordination.k8s.io", NS, "yes"),
        ("update", "leases.coordination.k8s.io", APPS, "no"),
        ("delete", "pods", APPS, "yes"),
        ("list", "secrets", APPS, "no"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io/"
                "servicemonitors.monitoring.coreos.com", "", "yes"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io/kvcaches.kvcache.io", "", "no"),
        ("create", "clusterroles.rbac.authorization.k8s.io", "", "no"),
    ])


def assert_can(user, checks):
    """checks: (verb, resource, namespace or "", "yes"/"no") asked of the API server's
    authorizer with `kubectl auth can-i --as`."""
    for verb, resource, ns, allowed in checks:
        args = ["auth", "can-i", verb, resource, "--as", user] + (["-n", ns] if ns else [])
        got = k(*args, check=False).stdout.strip()
        assert got == allowed, f"{user} can-i {verb} {resource} -n {ns}: {got}, want {allowed}"


@needs_operator
def test_04_operator_ready_and_helm_test():
    dep = get_json("deployment", "-n", NS, FULLNAME)
    assert dep["status"].get("readyReplicas") == 1
    k("-n", NS, "rollout", "status", f"deployment/{FULLNAME}", "--timeout=60s")
    out = helm("test", RELEASE, "-n", NS, "--timeout", "3m", timeout=240)
    assert "Phase:          Succeeded" in out.stdout or "Succeeded" in out.stdout, out.stdout


@pytest.mark.parametrize("scenario", CACHE_SCENARIOS)
def test_05_cache_chart_renders_accepted(scenario):
    text, docs = render(chart=CACHE_CHART, values=CACHE_CHART / "ci" / scenario,
                        release="demo", namespace=APPS)
    out = k("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text)
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout


def test_06_sample_kvcache_from_the_cache_chart():
    # The ci scenario with an Ingress (one node, IngressClass traefik, INGRESS_HOST).
    helm("install", "demo", CACHE_CHART, "-n", APPS, "-f", INGRESS_VALUES,
         "--set", "spec.pod.antiAffinity=None")
    kvc = get_json("kvc", "-n", APPS, "demo")
    assert kvc["spec"]["shards"] == 1 and kvc["spec"]["service"]["port"] == 8080
    assert kvc["spec"]["ingress"] == {"enabled": True, "className": "traefik",
                                      "host": INGRESS_HOST, "path": "/"}


@needs_real_operator
def test_07_operator_reconciles_the_sample():
    def available():
        kvc = get_json("kvc", "-n", APPS, "demo")
        conds = {c["type"]: c for c in kvc.get("status", {}).get("conditions", [])}
        a = conds.get("Available")
        return a and a["status"] == "True" and \
            a.get("observedGeneration") == kvc["metadata"]["generation"]
    await_condition("KVCache demo Available", available, timeout=300)
    k("get", "statefulset", "-n", APPS, "demo-0")


@needs_real_operator
def test_07a_operator_created_the_ingress():
    ing = get_json("ingress", "-n", APPS, "demo")
    assert ing["spec"]["ingressClassName"] == "traefik"
    rule, = ing["spec"]["rules"]
    assert rule["host"] == INGRESS_HOST
    path, = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "demo", "port": {"number": 8080}}
    owner, = ing["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("KVCache", "demo")


@needs_real_operator
@needs_traefik
def test_07b_curl_through_the_ingress():
    """PUT and GET from the host through traefik's NodePort on 127.0.0.1: traefik routes the
    Ingress's host to the client Service's endpoints; any other host is traefik's 404."""
    rollout = k("-n", "traefik", "rollout", "status", "deployment/traefik", "--timeout=120s",
                check=False)
    if rollout.returncode != 0:
        pytest.fail("traefik not Ready in 120 s:\n" + traefik_diagnostics())
    # traefik has taken the Ingress (it writes its address into the status) ...
    await_condition(
        "traefik to publish 127.0.0.1 in the Ingress status",
        lambda: get_json("ingress", "-n", APPS, "demo").get("status", {}).get(
            "loadBalancer", {}).get("ingress") == [{"ip": "127.0.0.1"}],
        timeout=60, interval=0.2)
    # ... and serves a router for its host (the API shows the configuration in use).
    try:
        routers = await_condition(
            f"a traefik router for Host({INGRESS_HOST}) enabled",
            lambda: [r for r in traefik_routers_for(INGRESS_HOST)
                     if r.get("status") == "enabled"],
            timeout=60, interval=0.2)
    except pytest.fail.Exception as e:
        pytest.fail(f"{e}\n{traefik_diagnostics()}")
    assert routers[0]["provider"] == "kubernetes", routers
    web = traefik_ports()["web"]

    value = "through traefik"
    assert local_http("PUT", web, "/v1/ingress-greeting", INGRESS_HOST, body=value)[0] == 201
    assert local_http("GET", web, "/v1/ingress-greeting", INGRESS_HOST) == (200, value)
    # The same key, read straight from the client Service: the ingress reached the cache.
    svc = get_json("service", "-n", APPS, "demo")
    conn = http.client.HTTPConnection(svc["spec"]["clusterIP"], 8080, timeout=10)
    try:
        conn.request("GET", "/v1/ingress-greeting")
        resp = conn.getresponse()
        assert (resp.status, resp.read().decode()) == (200, value)
    finally:
        conn.close()
    # No Ingress for another host: traefik's own 404, not the cache's.
    assert local_http("GET", web, "/v1/ingress-greeting", "other.kvcache.test") == \
        (404, "404 page not found\n")


def test_08_upgrade_to_a_changed_crd(changed_chart):
    assert "ChartUpgrade" not in crd_columns()
    helm("upgrade", RELEASE, changed_chart, "-n", NS, *wait_args, timeout=400)
    assert revision() == 2
    assert "ChartUpgrade" in crd_columns(), "helm upgrade did not update the CRD"
    header = k("get", "kvc", "-n", APPS, "-o", "wide").stdout.splitlines()[0]
    assert "CHARTUPGRADE" in header, header
    # Still the keep policy and still the release's object.
    crd = get_json("crd", CRD)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert crd["metadata"]["labels"]["helm.sh/chart"] == "kvcache-operator-0.1.1"


def test_09_rollback_restores_the_crd():
    helm("rollback", RELEASE, "1", "-n", NS, *wait_args, timeout=400)
    assert revision() == 3
    assert "ChartUpgrade" not in crd_columns(), "helm rollback did not restore the CRD"
    assert get_json("kvc", "-n", APPS, "demo")["metadata"]["name"] == "demo"


@needs_real_operator
def test_10_sample_still_available_after_rollback():
    test_07_operator_reconciles_the_sample()


@needs_real_operator
@needs_traefik
def test_10b_ingress_disabled_route_gone():
    # spec.ingress.enabled=false: the operator deletes the Ingress, traefik drops the route and
    # the host now gets traefik's 404.
    helm("upgrade", "demo", CACHE_CHART, "-n", APPS, "-f", INGRESS_VALUES,
         "--set", "spec.pod.antiAffinity=None", "--set", "spec.ingress.enabled=false")
    await_condition("Ingress demo deleted by the operator", lambda: "NotFound" in k(
        "get", "ingress", "-n", APPS, "demo", check=False).stderr, timeout=60, interval=0.2)
    await_condition(f"no traefik router for Host({INGRESS_HOST})",
                    lambda: not traefik_routers_for(INGRESS_HOST), timeout=60, interval=0.2)
    status, _ = local_http("GET", traefik_ports()["web"], "/v1/ingress-greeting", INGRESS_HOST)
    assert status == 404


def test_11_uninstall_cache_release():
    helm("uninstall", "demo", "-n", APPS, "--wait", "--timeout", "3m", timeout=240)
    await_condition("KVCache demo gone",
                    lambda: "NotFound" in k("get", "kvc", "-n", APPS, "demo", check=False).stderr,
                    timeout=180)


def test_12_uninstall_keeps_the_crd():
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", timeout=240)
    assert "NotFound" in k("get", "deployment", "-n", NS, FULLNAME,
                           check=False).stderr
    assert "NotFound" in k("get", "clusterrole", FULLNAME,
                           check=False).stderr
    crd = get_json("crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_13_reinstall_adopts_the_kept_crd(changed_chart):
    # The kept CRD still carries this release's ownership annotations, so the same release
    # name adopts it. helm adopts an object without patching it, unless --take-ownership,
    # which patches what changed: docs/install.md tells users to reinstall that way.
    helm("install", RELEASE, changed_chart, "-n", NS, "--take-ownership", timeout=400)
    assert "ChartUpgrade" in crd_columns(), "reinstall --take-ownership left the old CRD"
    assert f"name: {CRD}" in helm("get", "manifest", RELEASE, "-n", NS).stdout
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", timeout=240)
    assert get_json("crd", CRD)["metadata"]["name"] == CRD


def test_14_keep_false_uninstall_removes_the_crd():
    k("delete", "crd", CRD, "--wait=true")
    helm("install", RELEASE, CHART, "-n", NS, "--set", "crds.keep=false", timeout=400)
    crd = get_json("crd", CRD)
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", timeout=240)
    await_condition("CRD deleted",
                    lambda: "NotFound" in k("get", "crd", CRD, check=False).stderr, timeout=120)


def test_15_namespace_scoped_release_is_confined_to_its_namespace():
    # Second operator release, namespace scope (ci scenario), crds.install=false: the CRD is
    # applied by hand, as docs/install.md says for that case.
    ns = "kvcache-ns"
    k("apply", "--server-side", "-f", ROOT / "crds" / "kvcache.io_kvcaches.yaml")
    k("wait", "--for", "condition=established", "--timeout=60s", f"crd/{CRD}")
    helm("install", "kvc-ns", CHART, "-n", ns, "--create-namespace",
         "-f", CHART / "ci" / "namespace-scoped-values.yaml", "--set", "crds.install=false")
    sa = f"system:serviceaccount:{ns}:kvc-ns-kvcache-operator"
    watched = yaml.safe_load((CHART / "ci" / "namespace-scoped-values.yaml").read_text())[
        "watchNamespace"]
    assert_can(sa, [
        ("watch", "kvcaches.kvcache.io", watched, "yes"),
        ("patch", "statefulsets.apps", watched, "yes"),
        ("watch", "kvcaches.kvcache.io", "default", "no"),
        ("patch", "statefulsets.apps", "default", "no"),
        ("list", "kvcaches.kvcache.io", "", "no"),        # no cluster-wide list
        ("get", "customresourcedefinitions.apiextensions.k8s.io/"
                "prometheusrules.monitoring.coreos.com", "", "yes"),
        ("update", "leases.coordination.k8s.io", ns, "yes"),
    ])
    args = get_json("deployment", "-n", ns, "kvc-ns-kvcache-operator")[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={watched}" in args
    helm("uninstall", "kvc-ns", "-n", ns, "--wait", "--timeout", "3m", timeout=240)
