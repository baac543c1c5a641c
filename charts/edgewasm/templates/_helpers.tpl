{{/* Names, labels and image references shared by every template. */}}

{{- define "edgewasm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "edgewasm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's object name: <fullname>-<component>. */}}
{{- define "edgewasm.componentName" -}}
{{- printf "%s-%s" (include "edgewasm.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "edgewasm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: edgewasm
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "agent"). */}}
{{- define "edgewasm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgewasm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "edgewasm.componentLabels" -}}
{{ include "edgewasm.labels" .root }}
{{ include "edgewasm.selectorLabels" . }}
{{- end }}

{{/* registry/repository:tag for a component's image values; call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "edgewasm.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.imageRegistry -}}
{{ printf "%s/%s:%s" .root.Values.imageRegistry .image.repository $tag }}
{{- else -}}
{{ printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "edgewasm.serviceAccountName" -}}
{{ include "edgewasm.componentName" . }}
{{- end }}

{{/* The operator elects a leader whenever more than one replica could act at once. */}}
{{- define "edgewasm.operator.leaderElect" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicas) 1) }}true{{ end }}
{{- end }}
