{{/*
The chart's name: nameOverride (the seed's default, spookd-device-plugin) or the chart's. The DRA
driver left at the default is spookd-dra, as manifests/dra names it: a device plugin and a DRA
driver of one release (two aliases of an umbrella) then differ in names and selectors.
*/}}
{{- define "spookd.name" -}}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if and .Values.dra.enabled (eq $name "spookd-device-plugin") }}{{ $name = "spookd-dra" }}{{ end }}
{{- $name | trunc 63 | trimSuffix "-" }}
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
{{- $name := include "spookd.name" . }}
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

{{/* A duration as spookd reads it (500ms, 40s, 1m30s, 1.5m), in seconds. */}}
{{- define "spookd.seconds" -}}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h)" (toString .) -1 }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" . "" }}
{{- $total = addf $total (mulf $n (get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Fails unless duration `value` (of value `key`) is within spookd's range for its flag. */}}
{{- define "spookd.checkDuration" -}}
{{- $s := include "spookd.seconds" .value | float64 }}
{{- if or (lt $s (float64 .min)) (gt $s (float64 .max)) }}
{{- fail (printf "%s: %s is out of range: from %s to %s (spookd's %s)" .key (toString .value) .minText .maxText .flag) }}
{{- end }}
{{- end }}

{{/* The mode's checks that a schema cannot express: what spookd or the kubelet would refuse. */}}
{{- define "spookd.checkModes" -}}
{{- if contains "ska-ser-k8s-spookd" (toString .Values.image.repository) }}
{{- fail (printf "image.repository %s is the original spookd's image (the Go daemon), which this chart does not run: remove image.repository and image.tag from your values, or name spookd's image (docs/migration.md)" .Values.image.repository) }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.create is false and serviceAccount.name is empty: spookd's RBAC would go to the namespace's default ServiceAccount, which every pod there uses; name an existing ServiceAccount" }}
{{- end }}
{{- if .Values.exclusiveLeases.enabled }}
{{- include "spookd.checkDuration" (dict "key" "exclusiveLeases.duration" "value" .Values.exclusiveLeases.duration "min" 1 "max" 3600 "minText" "1s" "maxText" "1h" "flag" "--lease-duration") }}
{{- end }}
{{- if .Values.pruneStaleResources.enabled }}
{{- include "spookd.checkDuration" (dict "key" "pruneStaleResources.after" "value" .Values.pruneStaleResources.after "min" 1 "max" 2592000 "minText" "1s" "maxText" "720h" "flag" "--prune-after") }}
{{- end }}
{{- if .Values.dra.enabled }}
{{- $kubelet := include "spookd.kubeletPath" . }}
{{- range list (printf "%s/plugins/%s/dra.sock" $kubelet .Values.dra.driverName) (printf "%s/plugins_registry/%s-reg.sock" $kubelet .Values.dra.driverName) }}
{{- if gt (len .) 107 }}
{{- fail (printf "the DRA socket path %s is %d bytes long; a Unix socket's path holds at most 107: shorten dra.driverName (or kubeletPath)" . (len .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.dra.enabled }}
{{- if .Values.exclusiveLeases.enabled }}
{{- fail "exclusiveLeases.enabled is a device-plugin feature: with dra.enabled the scheduler already hands each device to one claim; turn one of them off" }}
{{- end }}
{{- if .Values.pruneStaleResources.enabled }}
{{- fail "pruneStaleResources.enabled is a device-plugin feature (a DRA driver advertises nothing in the node's status); turn one of them off" }}
{{- end }}
{{- end }}
{{- end }}
