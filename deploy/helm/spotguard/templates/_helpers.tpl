{{/* The agents' ServiceAccount. */}}
{{- define "spotguard.agentServiceAccount" -}}
{{ default (printf "%s-agent" .Release.Name) .Values.serviceAccount.agentName }}
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "spotguard.controllerServiceAccount" -}}
{{ default (printf "%s-controller" .Release.Name) .Values.serviceAccount.controllerName }}
{{- end }}

{{/* The taint phase 1 puts on an at-risk node. */}}
{{- define "spotguard.taintKey" -}}
{{ .Values.taint.key }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "spotguard.labels" -}}
app.kubernetes.io/name: spotguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
