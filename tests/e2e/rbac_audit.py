"""What a ServiceAccount really did, from the apiserver's audit log (localk8s writes one:
STATE/logs/audit.log, Metadata level, service accounts outside kube-system), compared with
what RBAC grants it (the Roles/ClusterRoles and bindings of a rendered chart).

Pure functions over text and dicts: the e2e tests feed them the live log and
`helm get manifest`; rbac_audit_selftest.py feeds them made-up ones.
"""

import dataclasses
import datetime
import json
import pathlib

import yaml

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Verbs for which RBAC never sees a name, so a rule with resourceNames cannot match them.
UNNAMED_VERBS = frozenset({"create", "list", "watch", "deletecollection"})


@dataclasses.dataclass(frozen=True)
class Request:
    """One API request (one audit ID) of the user."""
    verb: str
    group: str        # "" for the core group
    resource: str     # with "/subresource" when there is one
    namespace: str    # "" when cluster-scoped or across all namespaces
    name: str
    code: int         # HTTP status (0 while a watch is still open)
    decision: str     # the authorizer's: "allow" or "forbid"
    received: datetime.datetime
    uri: str
    message: str = ""  # the error's, when it failed

    def key(self):
        return (self.group, self.resource, self.verb)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_requests(log_dir, username):
    """Every resource request by `username` in log_dir/audit*.log (the current file and the
    rotated ones), one per audit ID: its ResponseComplete event, or ResponseStarted for a watch
    that is still open. Requests without an objectRef (discovery, /version) are left out."""
    events = {}
    for path in sorted(pathlib.Path(log_dir).glob("audit*.log")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                e = json.loads(line)
                if e["user"].get("username") != username or "objectRef" not in e:
                    continue
                if e["stage"] == "ResponseComplete" or e["auditID"] not in events:
                    events[e["auditID"]] = e
    out = []
    for e in events.values():
        ref = e["objectRef"]
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        status = e.get("responseStatus", {}) if e["stage"] == "ResponseComplete" else {}
        code = status.get("code", 0)
        out.append(Request(
            verb=e["verb"], group=ref.get("apiGroup", ""), resource=resource,
            namespace=ref.get("namespace", ""), name=ref.get("name", ""), code=code,
            decision=e.get("annotations", {}).get("authorization.k8s.io/decision", ""),
            received=parse_time(e["requestReceivedTimestamp"]), uri=e.get("requestURI", ""),
            message=status.get("message", "")))
    return sorted(out, key=lambda r: r.received)


def authorized_verbs(req):
    """The verbs RBAC checked for a request: its own, plus create when a server-side apply
    (patch) or an update made the object (201): the apiserver authorizes that create inside
    the request, so it has no audit event of its own."""
    verbs = [req.verb]
    if req.verb in ("patch", "update") and req.code == 201:
        verbs.append("create")
    return verbs


@dataclasses.dataclass(frozen=True)
class Grant:
    """One (apiGroup, resource, verb) of one rule, where it applies."""
    role: str            # "ClusterRole/x" or "Role/ns/x"
    group: str
    resource: str
    verb: str
    names: tuple         # resourceNames; () = any
    namespace: str       # None = every namespace and cluster-scoped objects

    def key(self):
        return (self.group, self.resource, self.verb)

    def allows(self, req, verb):
        if self.namespace is not None and req.namespace != self.namespace:
            return False
        if self.names and (verb in UNNAMED_VERBS or req.name not in self.names):
            return False
        return (self.group in (req.group, "*") and self.resource in (req.resource, "*")
                and self.verb in (verb, "*"))


def grants_from_manifest(manifest, sa_namespace, sa_name):
    """The grants of every (Cluster)RoleBinding in `manifest` (YAML documents, e.g. `helm get
    manifest`) whose subjects include the ServiceAccount, with the rules of the role it binds
    (which must be in the manifest too)."""
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    roles = {}
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            ns = d["metadata"].get("namespace") if d["kind"] == "Role" else None
            roles[(d["kind"], ns, d["metadata"]["name"])] = d.get("rules") or []
    out = []
    for d in docs:
        if d["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace") == sa_namespace for s in d.get("subjects") or []):
            continue
        where = d["metadata"].get("namespace") if d["kind"] == "RoleBinding" else None
        ref = d["roleRef"]
        role_ns = where if ref["kind"] == "Role" else None
        rules = roles.get((ref["kind"], role_ns, ref["name"]))
        if rules is None:
            raise AssertionError(f"{d['kind']} {d['metadata']['name']} binds {ref['kind']} "
                                 f"{ref['name']}, which is not in the manifest")
        label = f"{ref['kind']}/{role_ns + '/' if role_ns else ''}{ref['name']}"
        for rule in rules:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        out.append(Grant(label, group, resource, verb,
                                         tuple(rule.get("resourceNames", [])), where))
    return out


# NamespaceLifecycle's refusal of new objects in a namespace being deleted: a write racing the
# namespace's deletion, not a missing permission.
TERMINATING = "because it is being terminated"


@dataclasses.dataclass
class Verdict:
    unused: list          # Grant never used by an allowed request
    forbidden: dict       # (group, resource, verb) -> [Request] the authorizer refused
    ungranted: dict       # (group, resource, verb) -> [Request] allowed, but not by these grants
    refused_later: dict   # (group, resource, verb) -> [Request]: allowed, then 403 (admission)
    terminating: dict     # (group, resource, verb) -> [Request]: 403, namespace being deleted

    def ok(self):
        return not (self.unused or self.forbidden or self.ungranted or self.refused_later)

    def report(self):
        lines = []
        fmt = lambda k: f"{k[0] or 'core'} {k[1]} {k[2]}"
        for g in sorted(self.unused, key=lambda g: (g.role, g.key())):
            names = f" (resourceNames {list(g.names)})" if g.names else ""
            lines.append(f"granted but never used: {g.role}: {fmt(g.key())}{names}")
        for title, table in (("used but not granted (403 forbid)", self.forbidden),
                             ("used, allowed by something other than the chart", self.ungranted),
                             ("allowed by RBAC, then refused (403) by admission",
                              self.refused_later),
                             ("not counted: created in a namespace being deleted (403)",
                              self.terminating)):
            for k in sorted(table):
                r = table[k][0]
                why = f" ({r.code}: {r.message[:300]})" if r.message else ""
                lines.append(f"{title}: {fmt(k)} x{len(table[k])}, e.g. {r.uri}{why}")
        return "\n".join(lines)


def compare(requests, grants, exempt_unused=()):
    """Which grants no request used, and which requests no grant covered. exempt_unused:
    (group, resource, verb) granted for a check the audit log cannot show."""
    used = set()
    forbidden, ungranted, refused_later, terminating = {}, {}, {}, {}
    for req in requests:
        if req.decision == "forbid":
            forbidden.setdefault(req.key(), []).append(req)
            continue
        if req.code == 403:
            table = terminating if TERMINATING in req.message else refused_later
            table.setdefault(req.key(), []).append(req)
        for verb in authorized_verbs(req):
            matched = [i for i, g in enumerate(grants) if g.allows(req, verb)]
            if not matched:
                ungranted.setdefault((req.group, req.resource, verb), []).append(req)
            used.update(matched)
    unused = [g for i, g in enumerate(grants) if i not in used and g.key() not in exempt_unused]
    return Verdict(unused, forbidden, ungranted, refused_later, terminating)


def writes(requests, since, until, exclude=lambda r: False):
    """Write requests received in [since, until) (aware datetimes) not excluded."""
    return [r for r in requests
            if r.verb in WRITE_VERBS and since <= r.received < until and not exclude(r)]
