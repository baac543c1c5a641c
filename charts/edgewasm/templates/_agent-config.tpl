{{/* The agent's config file (/etc/edgewasm/agent.yaml), rendered from .Values.agent.handlers. */}}
{{- define "edgewasm.agent.config" -}}
{{- $h := .Values.agent.handlers -}}
{{- $onvif := dict "enabled" $h.onvif.enabled "interfaces" $h.onvif.interfaces "scopes" $h.onvif.scopes "approval" $h.onvif.approval -}}
{{- if $h.onvif.credentialsSecret -}}
{{- $_ := set $onvif "credentialsFile" (printf "/etc/edgewasm/onvif/%s" $h.onvif.credentialsKey) -}}
{{- end -}}
{{- $static := dict "enabled" $h.static.enabled "approval" $h.static.approval -}}
{{- if $h.static.enabled -}}
{{- $_ := set $static "file" "/etc/edgewasm/static-devices.yaml" -}}
{{- end -}}
{{- $handlers := dict
  "udev" (dict "enabled" $h.udev.enabled "subsystems" $h.udev.subsystems "filters" $h.udev.filters "approval" $h.udev.approval)
  "onvif" $onvif
  "opcua" (dict "enabled" $h.opcua.enabled "discoveryUrls" $h.opcua.discoveryUrls "approval" $h.opcua.approval)
  "static" $static -}}
{{- toYaml (dict "handlers" $handlers) }}
{{- end }}
