"""The operator's RBAC against what it really did: every request of its ServiceAccount over
the whole session, from the apiserver's audit log (localk8s: STATE/logs/audit.log), compared
with the Roles and ClusterRoles its Helm release binds to it. Runs after every other test of
the session (conftest.py orders it last), so it judges all of them.

- "used but not granted": a request refused with 403 (by the authorizer, or by admission
  after it), or one allowed by a binding that is not the chart's. Always checked. Not counted:
  NamespaceLifecycle's 403 for an object created in a namespace being deleted (the operator
  re-applies children the namespace's deletion removes until the KVCache itself is gone; RBAC
  allowed it) - logged.
- "granted but never used": a (apiGroup, resource, verb) of the chart no request needed. Only
  checked when every other test of the default selection ran and passed, since the grant may
  be needed by a test that did not run.
"""

import pytest

import e2elib
import rbac_audit
from e2elib import OPERATOR_NS, OPERATOR_USER, RELEASE, log

# Granted for checks made inside other requests, which the audit log cannot show.
EXEMPT_UNUSED = {
    # OwnerReferencesPermissionEnforcement (not enabled in localk8s; on in OpenShift) checks
    # it when a child with blockOwnerDeletion is created (charts/.../_rbac.tpl).
    ("kvcache.io", "kvcaches/finalizers", "update"),
}


@pytest.mark.session_end
def test_operator_uses_exactly_the_verbs_its_chart_grants(cluster, request):
    sa = cluster.kubectl("get", "deployment", "-n", OPERATOR_NS, RELEASE, "-o",
                         "jsonpath={.spec.template.spec.serviceAccountName}").stdout
    assert OPERATOR_USER == f"system:serviceaccount:{OPERATOR_NS}:{sa}"
    manifest = cluster.helm("get", "manifest", RELEASE, "-n", OPERATOR_NS).stdout
    grants = rbac_audit.grants_from_manifest(manifest, OPERATOR_NS, sa)
    assert grants, "the release binds no role to the operator's ServiceAccount"
    requests = cluster.operator_requests()
    assert requests, f"no request of {OPERATOR_USER} in {cluster.state / 'logs'}/audit.log"
    verdict = rbac_audit.compare(requests, grants, exempt_unused=EXEMPT_UNUSED)
    used = sorted({k for r in requests for k in
                   ((r.group, r.resource, v) for v in rbac_audit.authorized_verbs(r))})
    log(f"audit log: {len(requests)} requests of {OPERATOR_USER}; "
        f"{len(used)} (apiGroup, resource, verb) used, {len(grants)} granted")
    if verdict.terminating:
        log(f"not counted: {sum(map(len, verdict.terminating.values()))} writes refused in "
            f"namespaces being deleted: {sorted(verdict.terminating)}")
    refused = {**verdict.forbidden, **verdict.ungranted, **verdict.refused_later}
    assert not refused, "the operator needed what its chart does not grant:\n" + verdict.report()

    others = [i for i in request.session.items if i is not request.node]
    not_passed = [i.nodeid for i in others
                  if not (getattr(i, "rep_call", None) and i.rep_call.passed)]
    deselected = [i.nodeid for i in request.config.stash.get(e2elib.DESELECTED, [])
                  if not i.get_closest_marker("slow")]
    if not_passed or deselected:
        pytest.skip(f"granted-but-unused not judged: {len(not_passed)} tests did not pass "
                    f"{not_passed}, {len(deselected)} deselected; unused so far:\n"
                    + verdict.report())
    assert not verdict.unused, ("the chart grants what the operator never used (shrink "
                                "_rbac.tpl, or exercise it in a test):\n" + verdict.report())
    log(f"ok: the chart grants exactly what the operator used ({len(EXEMPT_UNUSED)} exempt: "
        f"{sorted(EXEMPT_UNUSED)})")
