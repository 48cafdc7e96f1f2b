{{- define "k8slan.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "k8slan.labels" -}}
app.kubernetes.io/name: k8slan
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "k8slan.controllerSelector" -}}
app.kubernetes.io/name: k8slan
app.kubernetes.io/component: controller
{{- end -}}

{{- define "k8slan.agentSelector" -}}
app.kubernetes.io/name: k8slan
app.kubernetes.io/component: agent
{{- end -}}

{{/* Fixed names: the docs, the agents and the e2e tests refer to them. */}}
{{- define "k8slan.webhookService" -}}k8slan-webhook{{- end -}}
{{- define "k8slan.webhookConfig" -}}k8slan-validating-webhook{{- end -}}
{{- define "k8slan.mutatingWebhookConfig" -}}k8slan-mutating-webhook{{- end -}}
{{- define "k8slan.tlsSecret" -}}k8slan-webhook-tls{{- end -}}
