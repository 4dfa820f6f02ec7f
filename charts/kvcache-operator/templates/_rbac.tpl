{{/*
=====================================================================================
THE PERMISSIONS THE OPERATOR IS GRANTED — the one list. clusterrole.yaml / role.yaml
render "kvcache-operator.rules.watched" (in the watched namespaces: every namespace for
rbac.scope=cluster, one for rbac.scope=namespace) and leader-election-role.yaml renders
"kvcache-operator.rules.leaderElection" (release namespace only). The audit-log test
(issue 7) compares the verbs the operator's ServiceAccount really used with these lists:
change them here and only here.
=====================================================================================
*/}}

{{- define "kvcache-operator.rules.watched" -}}
# The custom resource: watched, finalizer added/removed, status written.
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["kvcache.io"]
  resources: ["kvcaches/finalizers"]
  verbs: ["update"]
# Children of a KVCache (server-side apply = patch; owner references collect them).
- apiGroups: [""]
  resources: ["secrets", "configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Optional children, only used when the prometheus-operator CRDs exist.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Volumes: PVC expansion (patch, with the shrink guard) and storage reclaim on delete.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Readiness and addresses of the cache pods (failover); the rolling upgrade deletes one pod at
# a time (the StatefulSets use OnDelete).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# Events for every significant action.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "kvcache-operator.rules.leaderElection" -}}
# Leader election (client-go's protocol: GET, POST on 404, PUT to renew or take over).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}
