{{/*
Names, labels and small derived values of the kvcache-operator chart. Every helper is
namespaced "kvcache-operator.*".
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kvcache-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of the release's objects: fullnameOverride, or "<release>-<name>" unless the
release name already contains the chart name. Truncated to 52 so suffixes fit in 63.
*/}}
{{- define "kvcache-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "kvcache-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "kvcache-operator.labels" -}}
helm.sh/chart: {{ include "kvcache-operator.chart" . }}
{{ include "kvcache-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvcache
{{- end -}}

{{/* Labels that select the operator pods (immutable in the Deployment selector). */}}
{{- define "kvcache-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvcache-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "kvcache-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvcache-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository, then @digest or :tag (default appVersion). */}}
{{- define "kvcache-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespace whose KVCaches a namespace-scoped operator watches. */}}
{{- define "kvcache-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{/*
The name of the ClusterRole and its binding. Namespace scope: suffixed with the release
namespace, so releases of the same name in two namespaces do not claim the same objects.
*/}}
{{- define "kvcache-operator.clusterRoleName" -}}
{{- if eq .Values.rbac.scope "namespace" -}}
{{- printf "%s-%s" (include "kvcache-operator.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- include "kvcache-operator.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The name of the metrics Service (also used by the helm test). */}}
{{- define "kvcache-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kvcache-operator.fullname" .) -}}
{{- end -}}

{{/*
Checks between values that values.schema.json cannot express with a clear message. Included
by the Deployment, so every render runs it.
*/}}
{{- define "kvcache-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicaCount=%d needs leaderElection.enabled=true: without a Lease every replica would reconcile the same KVCaches" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "cluster") .Values.watchNamespace -}}
{{- fail (printf "watchNamespace=%q is only used with rbac.scope=namespace; set rbac.scope=namespace or leave watchNamespace empty" .Values.watchNamespace) -}}
{{- end -}}
{{- end -}}
