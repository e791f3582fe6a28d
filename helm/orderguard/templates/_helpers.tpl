{{/* The chart's name, or nameOverride. */}}
{{- define "orderguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of every object. */}}
{{- define "orderguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "orderguard.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "orderguard.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "orderguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orderguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "orderguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "orderguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "orderguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret every pod reads its credentials from: required, never defaulted. */}}
{{- define "orderguard.secret" -}}
{{- required "existingSecret: name the Secret holding the database URL, keys and credentials (see the README, Deploying on Kubernetes)" .Values.existingSecret }}
{{- end }}

{{/* The environment the chart decides: it wins over orderguard.toml. */}}
{{- define "orderguard.env" -}}
- name: ORDERGUARD_CONFIG
  value: /etc/orderguard/orderguard.toml
- name: ORDERGUARD_MODE
  value: production
- name: ORDERGUARD_DATA_DIR
  value: /var/lib/orderguard
- name: ORDERGUARD_BRANDS_DIR
  value: /etc/orderguard/brands
- name: ORDERGUARD_BRANDS_RELOAD_INTERVAL_MS
  value: {{ .Values.brands.reloadIntervalMs | int | quote }}
- name: ORDERGUARD_HTTP__PUBLIC_URL
  value: {{ required "publicUrl: where buyers reach the service, e.g. https://pay.example.com" .Values.publicUrl | quote }}
- name: ORDERGUARD_LOG__FORMAT
  value: json
{{- with .Values.clickhouse.url }}
- name: ORDERGUARD_CLICKHOUSE__URL
  value: {{ . | quote }}
{{- end }}
- name: ORDERGUARD_CLICKHOUSE__DATABASE
  value: {{ .Values.clickhouse.database | quote }}
{{- with .Values.clickhouse.user }}
- name: ORDERGUARD_CLICKHOUSE__USER
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The brands ConfigMap's keys mapped back to their paths in the brands folder. */}}
{{- define "orderguard.brandItems" -}}
{{- range $path, $_ := .Files.Glob "brands/_base/**" }}
- key: {{ trimPrefix "brands/" $path | replace "/" "__" }}
  path: {{ trimPrefix "brands/" $path }}
{{- end }}
{{- range $brand := .Values.brands.examples }}
{{- range $path, $_ := $.Files.Glob (printf "brands/%s/**" $brand) }}
- key: {{ trimPrefix "brands/" $path | replace "/" "__" }}
  path: {{ trimPrefix "brands/" $path }}
{{- end }}
{{- end }}
{{- range $path, $_ := .Values.brands.files }}
- key: {{ $path | replace "/" "__" }}
  path: {{ $path }}
{{- end }}
{{- range $path, $_ := .Values.brands.binaryFiles }}
- key: {{ $path | replace "/" "__" }}
  path: {{ $path }}
{{- end }}
{{- end }}
