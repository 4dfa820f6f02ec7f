{{/* The KVCache's name: .Values.name or the release name. */}}
{{- define "kvcache.name" -}}
{{- default .Release.Name .Values.name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of the chart's own objects. */}}
{{- define "kvcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: kvcache
app.kubernetes.io/instance: {{ include "kvcache.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvcache
{{- end -}}
