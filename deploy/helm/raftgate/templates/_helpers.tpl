{{/* The name of every object: the release name, or "raftgate" when the release is called raftgate. */}}
{{- define "raftgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "raftgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "raftgate.labels" -}}
{{ include "raftgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "raftgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The members table read by start.sh: "<node> <id> <address>" per line. */}}
{{- define "raftgate.members" -}}
{{- if not .Values.members.list -}}
{{- fail "members.list is empty: list every ingress node with its Raft id and address (values.yaml)" -}}
{{- end -}}
# node name  id  raft address
{{- range .Values.members.list }}
{{ required "members.list[].node" .node }} {{ required "members.list[].id" .id | int64 }} {{ required "members.list[].address" .address }}
{{- end }}
{{- end -}}
