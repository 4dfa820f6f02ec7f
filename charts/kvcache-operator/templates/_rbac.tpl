{{/*
=====================================================================================
THE PERMISSIONS THE OPERATOR IS GRANTED — the one list. clusterrole.yaml / role.yaml
render "kvcache-operator.rules.watched" (in the watched namespaces: every namespace for
rbac.scope=cluster, one for rbac.scope=namespace), clusterrole.yaml also renders
"kvcache-operator.rules.crds" (cluster-scoped objects, in both scopes) and
leader-election-role.yaml renders "kvcache-operator.rules.leaderElection" (release namespace
only). Exactly the verbs the operator calls (operator/controller, operator/kube):
tests/e2e/test_rbac_audit.py compares them with what its ServiceAccount really used, from
the apiserver's audit log, and fails on a verb granted but never used or used but refused.
Change them here and only here.
=====================================================================================
*/}}

{{- define "kvcache-operator.rules.watched" -}}
# The custom resource: read each pass and watched; the finalizer added and removed (merge
# patch); status written (update of the status subresource).
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches/status"]
  verbs: ["update"]
# Children point at their KVCache with blockOwnerDeletion: where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift, hardened clusters),
# creating them needs this. Checked inside admission, never a request of its own.
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches/finalizers"]
  verbs: ["update"]
# Children, written by server-side apply: patch, which the API server also authorizes as
# create when the object is new. ConfigMaps, Services, StatefulSets and PDBs are watched
# (changes trigger a reconcile); Secrets and Ingresses are only read by name.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# StatefulSets of drained shards, PDBs switched off, Ingresses switched off are deleted.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "create", "patch", "delete"]
# Optional children, created only when asked for and their CRDs exist (garbage-collected
# with the KVCache).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "create", "patch"]
# Volumes: claims grow in place (patch) and are deleted with a KVCache whose reclaimPolicy is
# Delete; both find them by label (list).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "patch", "delete"]
# Readiness and addresses of the cache pods (failover, rolling updates); the rolling update
# of the OnDelete StatefulSets deletes one pod at a time.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
# Events: created, and patched when one repeats (a series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "kvcache-operator.rules.crds" -}}
# Whether the prometheus-operator CRDs exist, before a ServiceMonitor or PrometheusRule is
# applied (missing: the KVCache says so in its Degraded condition). Those two only.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"]
  verbs: ["get"]
{{- end -}}

{{- define "kvcache-operator.rules.leaderElection" -}}
# Leader election (client-go's protocol: GET, POST on 404, PUT to renew, take over or release).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}
