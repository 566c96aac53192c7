{{/* The agents' ServiceAccount. */}}
{{- define "spotguard.agentServiceAccount" -}}
{{ default (printf "%s-agent" .Release.Name) .Values.serviceAccount.agentName }}
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "spotguard.controllerServiceAccount" -}}
{{ default (printf "%s-controller" .Release.Name) .Values.serviceAccount.controllerName }}
{{- end }}

{{/* The subjects of a binding every enabled role of the chart needs. */}}
{{- define "spotguard.subjects" -}}
{{- if .Values.agent.enabled }}
- kind: ServiceAccount
  name: {{ include "spotguard.agentServiceAccount" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
{{- if .Values.controller.enabled }}
- kind: ServiceAccount
  name: {{ include "spotguard.controllerServiceAccount" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "spotguard.labels" -}}
app.kubernetes.io/name: spotguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
