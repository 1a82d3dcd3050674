{{/* The chart's name: nameOverride (the seed's default, spookd-device-plugin) or the chart's. */}}
{{- define "spookd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, as Helm's own scaffold makes it: fullnameOverride, or the release name
when it already holds the chart's name, or both joined. A release spookd-device-plugin with the
default nameOverride names its objects spookd-device-plugin, as the seed's chart did.
*/}}
{{- define "spookd.fullname" -}}
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

{{/* A name derived from the full name: its suffix always survives the cut to 63 characters. */}}
{{- define "spookd.derived" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "spookd.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "spookd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spookd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spookd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spookd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spookd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spookd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "spookd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The kubelet's root dir, without a trailing slash. */}}
{{- define "spookd.kubeletPath" -}}
{{- if eq .Values.kubeletPath "/" }}{{ "" }}{{ else }}{{ trimSuffix "/" .Values.kubeletPath }}{{ end }}
{{- end }}

{{/*
daemon.logLevel as RUST_LOG. The seed took logrus's levels: warning, fatal and panic have no
env_logger name (env_logger would read them as a module's name and log nothing), so they map to
the nearest; anything else (an env_logger filter) passes as it is, lower-cased where it is a level.
*/}}
{{- define "spookd.rustLog" -}}
{{- $level := toString .Values.daemon.logLevel }}
{{- $known := dict "warning" "warn" "fatal" "error" "panic" "error" "trace" "trace" "debug" "debug" "info" "info" "warn" "warn" "error" "error" "off" "off" }}
{{- $lower := lower $level }}
{{- if hasKey $known $lower }}{{ get $known $lower }}{{ else }}{{ $level }}{{ end }}
{{- end }}

{{/* The DRA leader Lease's name, as spookd derives it (src/dra/publish.rs, leader_lease_name);
empty where spookd would cut it with a hash, which a template cannot compute. */}}
{{- define "spookd.draLeaderLease" -}}
{{- $name := printf "spookd-dra-%s" (replace "." "-" .Values.dra.driverName) }}
{{- if le (len $name) 63 }}{{ $name }}{{ end }}
{{- end }}

{{/* The mode's checks that a schema cannot express: spookd would refuse these flags together. */}}
{{- define "spookd.checkModes" -}}
{{- if .Values.dra.enabled }}
{{- if .Values.exclusiveLeases.enabled }}
{{- fail "exclusiveLeases.enabled is a device-plugin feature: with dra.enabled the scheduler already hands each device to one claim; turn one of them off" }}
{{- end }}
{{- if .Values.pruneStaleResources.enabled }}
{{- fail "pruneStaleResources.enabled is a device-plugin feature (a DRA driver advertises nothing in the node's status); turn one of them off" }}
{{- end }}
{{- end }}
{{- end }}
