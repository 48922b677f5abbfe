{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "anchorserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart unless the release name already holds the chart name.
*/}}
{{- define "anchorserve.fullname" -}}
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

{{- define "anchorserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (https://helm.sh/docs/chart_best_practices/labels/).
*/}}
{{- define "anchorserve.labels" -}}
helm.sh/chart: {{ include "anchorserve.chart" . }}
{{ include "anchorserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: anchorserve
{{- end }}

{{- define "anchorserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anchorserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anchorserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anchorserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "anchorserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Checks that cannot be written in values.schema.json.
*/}}
{{- define "anchorserve.validate" -}}
{{- $c := .Values.config }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int $c.drainTimeoutSeconds) (int .Values.lifecycle.preStopSleepSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.drainTimeoutSeconds (%d) + lifecycle.preStopSleepSeconds (%d), or the drain is cut short by SIGKILL" (int .Values.terminationGracePeriodSeconds) (int $c.drainTimeoutSeconds) (int .Values.lifecycle.preStopSleepSeconds)) }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.existingSecret: a Secret holding the tokens file (the chart never takes tokens in values)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret" }}
{{- end }}
{{- if and .Values.sessionsDisk.enabled (eq .Values.sessionsDisk.type "pvc") (not .Values.sessionsDisk.existingClaim) }}
{{- fail "sessionsDisk.type pvc needs sessionsDisk.existingClaim" }}
{{- end }}
{{- if and (eq .Values.model.volume.type "pvc") (not .Values.model.volume.existingClaim) }}
{{- fail "model.volume.type pvc needs model.volume.existingClaim" }}
{{- end }}
{{- if and (gt (float64 $c.kv.gpuMemoryFraction) 0.0) (not .Values.gpu.enabled) (ne $c.device "cuda") }}
{{- fail "config.kv.gpuMemoryFraction needs gpu.enabled (device cuda)" }}
{{- end }}
{{- if gt (int $c.scheduler.maxPrefillChunk) (int $c.scheduler.maxBatchedTokens) }}
{{- fail "config.scheduler.maxPrefillChunk must not exceed config.scheduler.maxBatchedTokens" }}
{{- end }}
{{- if eq (int .Values.ports.grpc) (int .Values.ports.metrics) }}
{{- fail "ports.grpc and ports.metrics must differ" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}
