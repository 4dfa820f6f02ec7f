"""rbac_audit.py on made-up audit logs and manifests, no cluster (CTest label unit):

    /usr/bin/python3 -m pytest -p no:cacheprovider tests/e2e/rbac_audit_selftest.py
"""

import datetime
import json

import rbac_audit

SA = "system:serviceaccount:ops:op"

MANIFEST = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: op}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets", "statefulsets/status"]
  verbs: ["get", "patch", "create"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["a.example.com"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: op}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: op}
subjects: [{kind: ServiceAccount, name: op, namespace: ops}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: op-lease, namespace: ops}
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: op-lease, namespace: ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: op-lease}
subjects: [{kind: ServiceAccount, name: op, namespace: ops}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: someone-else}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: op}
subjects: [{kind: ServiceAccount, name: other, namespace: ops}]
"""

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def req(verb, group, resource, namespace="", name="", code=200, decision="allow", second=0,
        message=""):
    return rbac_audit.Request(verb, group, resource, namespace, name, code, decision,
                              T0 + datetime.timedelta(seconds=second), f"/{verb}/{resource}",
                              message)


def grants():
    return rbac_audit.grants_from_manifest(MANIFEST, "ops", "op")


def test_grants_follow_the_bindings_of_the_service_account():
    gs = grants()
    assert {(g.role, g.namespace) for g in gs} == {("ClusterRole/op", None),
                                                    ("Role/ops/op-lease", "ops")}
    assert len(gs) == 3 + 6 + 1 + 2


def test_every_grant_used_and_nothing_refused_is_ok():
    requests = [
        req("list", "", "pods"), req("watch", "", "pods", code=0), req("delete", "", "pods", "x", "p"),
        req("get", "apps", "statefulsets", "x", "s", code=404),
        # server-side apply that made the object: RBAC also checked create
        req("patch", "apps", "statefulsets", "x", "s", code=201),
        req("patch", "apps", "statefulsets/status", "x", "s"),
        req("get", "apps", "statefulsets/status", "x", "s"),
        req("create", "apps", "statefulsets/status", "x", "s", code=201),
        req("get", "apiextensions.k8s.io", "customresourcedefinitions", "", "a.example.com"),
        req("get", "coordination.k8s.io", "leases", "ops", "l"),
        req("update", "coordination.k8s.io", "leases", "ops", "l"),
    ]
    verdict = rbac_audit.compare(requests, grants())
    assert verdict.ok(), verdict.report()


def test_unused_refused_and_ungranted_are_reported():
    requests = [
        req("list", "", "pods"),
        req("patch", "apps", "statefulsets", "x", "s"),           # 200: no create implied
        req("get", "", "secrets", "x", "t", code=403, decision="forbid"),
        # allowed (by some other binding), but not by these grants: a lease elsewhere, a CRD
        # outside resourceNames
        req("get", "coordination.k8s.io", "leases", "other", "l"),
        req("get", "apiextensions.k8s.io", "customresourcedefinitions", "", "b.example.com"),
        req("patch", "", "pods", "x", "p", code=403),              # allowed, refused by admission
        req("create", "", "pods", "x", "p", code=403,
            message='pods "p" is forbidden: unable to create new content in namespace x '
                    'because it is being terminated'),
    ]
    verdict = rbac_audit.compare(requests, grants(),
                                 exempt_unused={("", "pods", "delete")})
    assert not verdict.ok()
    assert {(g.group, g.resource, g.verb) for g in verdict.unused} == {
        ("", "pods", "watch"), ("apps", "statefulsets", "get"), ("apps", "statefulsets", "create"),
        ("apps", "statefulsets/status", "get"), ("apps", "statefulsets/status", "patch"),
        ("apps", "statefulsets/status", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
        ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "update")}
    assert set(verdict.forbidden) == {("", "secrets", "get")}
    assert set(verdict.ungranted) == {
        ("coordination.k8s.io", "leases", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
        ("", "pods", "patch"), ("", "pods", "create")}
    assert set(verdict.refused_later) == {("", "pods", "patch")}
    assert set(verdict.terminating) == {("", "pods", "create")}
    report = verdict.report()
    assert "granted but never used: ClusterRole/op: core pods watch" in report
    assert "used but not granted (403 forbid): core secrets get x1" in report
    assert "not counted: created in a namespace being deleted (403): core pods create" in report


def test_create_is_never_matched_by_resource_names():
    g = rbac_audit.Grant("ClusterRole/x", "", "configmaps", "create", ("c",), None)
    assert not g.allows(req("create", "", "configmaps", "n", "c"), "create")
    g = rbac_audit.Grant("ClusterRole/x", "", "configmaps", "get", ("c",), None)
    assert g.allows(req("get", "", "configmaps", "n", "c"), "get")
    assert not g.allows(req("get", "", "configmaps", "n", "d"), "get")


def event(audit_id, stage, verb, resource, user=SA, namespace="x", code=200, second=0, **ref):
    e = {"auditID": audit_id, "stage": stage, "verb": verb, "user": {"username": user},
         "requestURI": f"/{resource}", "annotations": {"authorization.k8s.io/decision": "allow"},
         "requestReceivedTimestamp": (T0 + datetime.timedelta(seconds=second)).isoformat()
         .replace("+00:00", "Z")}
    if resource:
        e["objectRef"] = {"resource": resource, "namespace": namespace, **ref}
    if stage == "ResponseComplete":
        e["responseStatus"] = {"code": code}
    return json.dumps(e) + "\n"


def test_read_requests_one_per_audit_id_from_every_log_file(tmp_path):
    (tmp_path / "audit.log").write_text(
        event("1", "ResponseStarted", "watch", "pods", second=1)
        + event("1", "ResponseComplete", "watch", "pods", second=1)
        + event("2", "ResponseStarted", "watch", "services", second=2)      # still open
        + event("3", "ResponseComplete", "get", "", second=3)               # /version
        + event("4", "ResponseComplete", "get", "pods", user="someone", second=4)
        + event("5", "ResponseComplete", "patch", "statefulsets", code=201, second=5,
                apiGroup="apps", name="s", subresource="status"))
    (tmp_path / "audit-2026-01-01T00-00-00.000.log").write_text(
        event("0", "ResponseComplete", "update", "leases", namespace="ops", second=0,
              apiGroup="coordination.k8s.io", name="l"))
    rs = rbac_audit.read_requests(tmp_path, SA)
    assert [(r.verb, r.group, r.resource, r.code) for r in rs] == [
        ("update", "coordination.k8s.io", "leases", 200), ("watch", "", "pods", 200),
        ("watch", "", "services", 0), ("patch", "apps", "statefulsets/status", 201)]
    lease = lambda r: r.resource == "leases"
    one = datetime.timedelta(seconds=1)
    assert [r.verb for r in rbac_audit.writes(rs, T0, T0 + 6 * one)] == ["update", "patch"]
    assert [r.verb for r in rbac_audit.writes(rs, T0, T0 + 6 * one, exclude=lease)] == ["patch"]
    assert rbac_audit.writes(rs, T0 + one, T0 + 5 * one) == []
