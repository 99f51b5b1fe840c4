{{/* The release's name for every object: "relay", or "<release>-relay". */}}
{{- define "relay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "relay.labels" -}}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "relay.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Where the Secrets are mounted in the container (files, mode 0400). */}}
{{- define "relay.turnSecretDir" -}}/run/relay/turn-secret{{- end -}}
{{- define "relay.usersDir" -}}/run/relay/users{{- end -}}
{{- define "relay.tlsDir" -}}/run/relay/tls{{- end -}}
{{- define "relay.apiTokenDir" -}}/run/relay/api-token{{- end -}}

{{/* A relay.toml port: the value in config, else relay run's default. */}}
{{- define "relay.port" -}}
{{- $ctx := index . 0 -}}{{- $key := index . 1 -}}{{- $default := index . 2 -}}
{{- if hasKey $ctx.Values.config $key -}}{{ index $ctx.Values.config $key | int }}{{- else -}}{{ $default }}{{- end -}}
{{- end -}}

{{/* "true" when a TURN port is below 1024: binding it needs NET_BIND_SERVICE. */}}
{{- define "relay.lowPort" -}}
{{- $low := false -}}
{{- range $key := list "listening-port" "tls-listening-port" "alt-tls-listening-port" -}}
{{- if and (hasKey $.Values.config $key) (lt (index $.Values.config $key | int) 1024) -}}
{{- $low = true -}}
{{- end -}}
{{- end -}}
{{- $low -}}
{{- end -}}

{{/*
One relay.toml line per key. JSON's strings, numbers, booleans and arrays of them are
TOML's too; a table is refused (only [[tenant]] has tables, from .Values.tenants).
*/}}
{{- define "relay.tomlKeys" -}}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- fail (printf "config.%s: a table is not a relay.toml setting (tenants go in .Values.tenants)" $key) }}
{{- end }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end -}}
