{{/* Names and labels. */}}
{{- define "cdc-migrator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdc-migrator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cdc-migrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdc-migrator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cdc-migrator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "cdc-migrator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "cdc-migrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cdc-migrator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cdc-migrator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The ConfigMaps mounted, by what they hold: the user's, else the chart's (from files). */}}
{{- define "cdc-migrator.migrationsConfigMap" -}}
{{- if .Values.migrations.configMap -}}
{{- .Values.migrations.configMap -}}
{{- else if .Values.migrations.files -}}
{{- printf "%s-migrations" (include "cdc-migrator.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "cdc-migrator.schemasConfigMap" -}}
{{- if .Values.schemas.configMap -}}
{{- .Values.schemas.configMap -}}
{{- else if .Values.schemas.files -}}
{{- printf "%s-schemas" (include "cdc-migrator.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Environment every container gets: where MongoDB and Kafka are, the credentials (from
Secrets), the paths of the mounted files, and the user's settings.
*/}}
{{- define "cdc-migrator.env" -}}
{{- $mongo := .Values.mongodb -}}
{{- $kafka := .Values.kafka -}}
- name: CDC_MIGRATOR_MONGODB_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mongodb.uriSecret.name: the Secret holding the MongoDB URI is required" $mongo.uriSecret.name }}
      key: {{ required "mongodb.uriSecret.key is required" $mongo.uriSecret.key }}
- name: CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers (host:port[,...]) is required" $kafka.bootstrapServers | quote }}
- name: CDC_MIGRATOR_TRANSFORMS
  value: /app/transforms
- name: CDC_MIGRATOR_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with $mongo.database }}
- name: CDC_MIGRATOR_DB
  value: {{ . | quote }}
{{- end }}
{{- if $mongo.tls.secretName }}
{{- with $mongo.tls.caKey }}
- name: CDC_MIGRATOR_MONGO_TLS_CA_FILE
  value: {{ printf "/etc/cdc-migrator/mongodb-tls/%s" . | quote }}
{{- end }}
{{- with $mongo.tls.certKeyKey }}
- name: CDC_MIGRATOR_MONGO_TLS_CERT_KEY_FILE
  value: {{ printf "/etc/cdc-migrator/mongodb-tls/%s" . | quote }}
{{- end }}
{{- end }}
{{- with $kafka.securityProtocol }}
- name: CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with $kafka.sasl.mechanism }}
- name: CDC_MIGRATOR_KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- with $kafka.sasl.username }}
- name: CDC_MIGRATOR_KAFKA_SASL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with $kafka.sasl.passwordSecret }}
{{- if .name }}
- name: CDC_MIGRATOR_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ required "kafka.sasl.passwordSecret.key is required" .key }}
{{- end }}
{{- end }}
{{- if $kafka.tls.secretName }}
{{- with $kafka.tls.caKey }}
- name: CDC_MIGRATOR_KAFKA_SSL_CAFILE
  value: {{ printf "/etc/cdc-migrator/kafka-tls/%s" . | quote }}
{{- end }}
{{- with $kafka.tls.certKey }}
- name: CDC_MIGRATOR_KAFKA_SSL_CERTFILE
  value: {{ printf "/etc/cdc-migrator/kafka-tls/%s" . | quote }}
{{- end }}
{{- with $kafka.tls.keyKey }}
- name: CDC_MIGRATOR_KAFKA_SSL_KEYFILE
  value: {{ printf "/etc/cdc-migrator/kafka-tls/%s" . | quote }}
{{- end }}
{{- end }}
{{- with $kafka.tls.keyPasswordSecret }}
{{- if .name }}
- name: CDC_MIGRATOR_KAFKA_SSL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ required "kafka.tls.keyPasswordSecret.key is required" .key }}
{{- end }}
{{- end }}
{{- if .Values.configFile }}
- name: CDC_MIGRATOR_CONFIG
  value: /etc/cdc-migrator/config/cdc-migrator.toml
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The volumes of every pod, and where each container mounts them. */}}
{{- define "cdc-migrator.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with include "cdc-migrator.migrationsConfigMap" . }}
- name: migrations
  configMap:
    name: {{ . }}
{{- end }}
{{- with include "cdc-migrator.schemasConfigMap" . }}
- name: schemas
  configMap:
    name: {{ . }}
{{- end }}
{{- if .Values.configFile }}
- name: config
  configMap:
    name: {{ include "cdc-migrator.fullname" . }}-config
{{- end }}
{{- if .Values.mongodb.tls.secretName }}
- name: mongodb-tls
  secret:
    secretName: {{ .Values.mongodb.tls.secretName }}
{{- end }}
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.secretName }}
{{- end }}
{{- end -}}

{{- define "cdc-migrator.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "cdc-migrator.migrationsConfigMap" . }}
- name: migrations
  mountPath: /app/transforms
  readOnly: true
{{- end }}
{{- if include "cdc-migrator.schemasConfigMap" . }}
- name: schemas
  mountPath: /app/schemas
  readOnly: true
{{- end }}
{{- if .Values.configFile }}
- name: config
  mountPath: /etc/cdc-migrator/config
  readOnly: true
{{- end }}
{{- if .Values.mongodb.tls.secretName }}
- name: mongodb-tls
  mountPath: /etc/cdc-migrator/mongodb-tls
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  mountPath: /etc/cdc-migrator/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* A change to what the chart mounts rolls the pods: they read it at start. */}}
{{- define "cdc-migrator.checksum" -}}
{{- toYaml (list .Values.migrations.files .Values.schemas.files .Values.configFile) | sha256sum -}}
{{- end -}}

{{/*
The pod spec of one piece, given a dict: root (the chart's context), component, args,
env (a list of entries of this piece's own), metrics (serve and probe /metrics), probes,
restartPolicy, and piece (the piece's values: resources, env, scheduling).
*/}}
{{- define "cdc-migrator.podSpec" -}}
{{- $root := .root -}}
{{- $piece := .piece -}}
serviceAccountName: {{ include "cdc-migrator.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
{{- with .restartPolicy }}
restartPolicy: {{ . }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "cdc-migrator.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      {{- include "cdc-migrator.env" $root | nindent 6 }}
      {{- with .env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- range $name, $value := $piece.env }}
      - name: {{ $name }}
        value: {{ $value | toString | quote }}
      {{- end }}
    {{- if .metrics }}
    ports:
      - name: metrics
        containerPort: {{ $root.Values.metrics.port }}
        protocol: TCP
    {{- end }}
    {{- if .probes }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      {{- toYaml $root.Values.probes.liveness | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /readyz
        port: metrics
      {{- toYaml $root.Values.probes.readiness | nindent 6 }}
    {{- end }}
    resources:
      {{- toYaml $piece.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "cdc-migrator.volumeMounts" $root | nindent 6 }}
volumes:
  {{- include "cdc-migrator.volumes" $root | nindent 2 }}
{{- with $piece.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $piece.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $piece.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A headless Service naming the metrics port of one piece's pods (for the ServiceMonitor). */}}
{{- define "cdc-migrator.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cdc-migrator.fullname" .root }}-{{ .component }}
  labels:
    {{- include "cdc-migrator.labels" . | nindent 4 }}
    cdc-migrator.io/metrics: "true"
spec:
  clusterIP: None
  selector:
    {{- include "cdc-migrator.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end -}}
