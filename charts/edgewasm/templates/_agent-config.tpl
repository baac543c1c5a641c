{{/* The agent's config file (/etc/edgewasm/agent.yaml), rendered from .Values.agent.handlers. */}}
{{- define "edgewasm.agent.config" -}}
{{- $h := .Values.agent.handlers -}}
{{- $onvif := omit $h.onvif "credentialsSecret" "credentialsKey" -}}
{{- if $h.onvif.credentialsSecret -}}
{{- $_ := set $onvif "credentialsFile" (printf "/etc/edgewasm/onvif/%s" $h.onvif.credentialsKey) -}}
{{- end -}}
{{- $handlers := dict "udev" $h.udev "onvif" $onvif "opcua" $h.opcua -}}
{{- if $h.static.enabled -}}
{{- $_ := set $handlers "static" (dict "enabled" true "file" "/etc/edgewasm/static-devices.yaml" "approval" $h.static.approval) -}}
{{- end -}}
{{- toYaml (dict "handlers" $handlers) }}
{{- end }}
