{{/* Names are cut to 63 characters: the DNS label limit of object names. */}}
{{- define "svctrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "svctrace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>, kept within 63 characters. Call with (list $ "agent"). */}}
{{- define "svctrace.componentName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- printf "%s-%s" (include "svctrace.fullname" $root | trunc (int (sub 62 (len $component)))) $component | trimSuffix "-" -}}
{{- end -}}

{{- define "svctrace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades, so never include the version. Call with (list $ "agent"). */}}
{{- define "svctrace.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "svctrace.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The standard app.kubernetes.io labels. Call with (list $ "agent"). */}}
{{- define "svctrace.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "svctrace.chart" $root }}
{{ include "svctrace.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: svctrace
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* repository:tag, or repository:tag@digest when a digest is pinned. */}}
{{- define "svctrace.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "svctrace.serviceAccountName" -}}
{{- include "svctrace.componentName" . -}}
{{- end -}}

{{- define "svctrace.configName" -}}
{{- include "svctrace.componentName" (list . "config") -}}
{{- end -}}

{{- define "svctrace.leaseName" -}}
{{- default (include "svctrace.componentName" (list . "metadata")) .Values.metadata.leaderElection.leaseName -}}
{{- end -}}

{{- define "svctrace.kafkaSecurityProtocol" -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.sasl.enabled -}}SASL_SSL
{{- else if .Values.kafka.tls.enabled -}}SSL
{{- else if .Values.kafka.sasl.enabled -}}SASL_PLAINTEXT
{{- else -}}PLAINTEXT
{{- end -}}
{{- end -}}

{{- define "svctrace.kafkaTlsDir" -}}/etc/svctrace/kafka-tls{{- end -}}

{{/*
Kafka settings every Kafka client of the chart gets: the non-secret ones from the
ConfigMap, the SASL credentials straight from the user's Secret (never copied).
*/}}
{{- define "svctrace.kafkaEnv" -}}
{{- if .Values.kafka.sasl.enabled }}
- name: SVCTRACE_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: SVCTRACE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end -}}

{{/* Non-secret settings as SVCTRACE_* environment variables: the ConfigMap's data, inlined into hooks. */}}
{{- define "svctrace.settings" -}}
SVCTRACE_BOOTSTRAP: {{ join "," .Values.kafka.bootstrapServers | quote }}
SVCTRACE_KAFKA_SECURITY_PROTOCOL: {{ include "svctrace.kafkaSecurityProtocol" . | quote }}
{{- if .Values.kafka.sasl.enabled }}
SVCTRACE_KAFKA_SASL_MECHANISM: {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if .Values.kafka.tls.enabled }}
SVCTRACE_KAFKA_SSL_CAFILE: {{ printf "%s/%s" (include "svctrace.kafkaTlsDir" .) .Values.kafka.tls.caKey | quote }}
{{- if .Values.kafka.tls.certKey }}
SVCTRACE_KAFKA_SSL_CERTFILE: {{ printf "%s/%s" (include "svctrace.kafkaTlsDir" .) .Values.kafka.tls.certKey | quote }}
SVCTRACE_KAFKA_SSL_KEYFILE: {{ printf "%s/%s" (include "svctrace.kafkaTlsDir" .) .Values.kafka.tls.keyKey | quote }}
{{- end }}
{{- end }}
SVCTRACE_LOG_LEVEL: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* The same settings as an env list, for hooks that run before the ConfigMap exists. */}}
{{- define "svctrace.settingsEnv" -}}
{{- range $name, $value := (include "svctrace.settings" . | fromYaml) }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Pods restart when the configuration they read at start changes. */}}
{{- define "svctrace.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum | quote }}
{{- end -}}

{{- define "svctrace.envFrom" -}}
- configMapRef:
    name: {{ include "svctrace.configName" . }}
{{- end -}}

{{- define "svctrace.kafkaTlsVolumeMount" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  mountPath: {{ include "svctrace.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "svctrace.kafkaTlsVolume" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "svctrace.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ .name }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Container securityContext of the non-root components (worker, metadata, topic job, test). */}}
{{- define "svctrace.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
runAsNonRoot: true
readOnlyRootFilesystem: {{ . }}
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Pod securityContext of the non-root components. Call with a podSecurityContext dict. */}}
{{- define "svctrace.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A probe on the component's metrics port. Call with a probe values dict. */}}
{{- define "svctrace.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: metrics
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{/* The agent's PriorityClass: a named one, or the one the chart creates, or none. */}}
{{- define "svctrace.agentPriorityClassName" -}}
{{- if .Values.agent.priorityClass.name -}}
{{- .Values.agent.priorityClass.name -}}
{{- else if .Values.agent.priorityClass.create -}}
{{- include "svctrace.componentName" (list . "agent") -}}
{{- end -}}
{{- end -}}
