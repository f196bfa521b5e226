{{/* The chart name, or nameOverride. */}}
{{- define "trustplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of every object: fullnameOverride, else the release name
when it contains the chart name, else <release>-<chart>. */}}
{{- define "trustplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "trustplane.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "trustplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "trustplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trustplane
{{- end -}}

{{/* Labels that select this release's pods. */}}
{{- define "trustplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
{{- end -}}

{{/* The ServiceAccount's name. */}}
{{- define "trustplane.serviceAccountName" -}}
{{- default (include "trustplane.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "trustplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The health/metrics container port of the role. */}}
{{- define "trustplane.healthPort" -}}
{{- if eq .Values.role "server" -}}{{ .Values.server.healthPort }}{{- else -}}{{ .Values.agent.healthPort }}{{- end -}}
{{- end -}}

{{/* The pod spec parts both roles share: service account, security context,
scheduling, pull secrets. */}}
{{- define "trustplane.podCommon" -}}
serviceAccountName: {{ include "trustplane.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container parts both roles share: image, security context, probes
on the http-health port. */}}
{{- define "trustplane.containerCommon" -}}
image: {{ include "trustplane.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http-health
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http-health
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* Environment both roles share. */}}
{{- define "trustplane.envCommon" -}}
- name: TRUSTPLANE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: TRUSTPLANE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
