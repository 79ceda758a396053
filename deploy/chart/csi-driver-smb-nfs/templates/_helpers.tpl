{{/* Chart name, truncated to a DNS label. */}}
{{- define "csi-smb-nfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; suffixes (-controller, -node-win) stay within 63 characters. */}}
{{- define "csi-smb-nfs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "csi-smb-nfs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that never change for a release: used in selectors. */}}
{{- define "csi-smb-nfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-smb-nfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the chart itself, on every object. */}}
{{- define "csi-smb-nfs.baseLabels" -}}
{{ include "csi-smb-nfs.selectorLabels" . }}
helm.sh/chart: {{ include "csi-smb-nfs.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: csi-driver-smb-nfs
{{- end -}}

{{/*
A user label map without the keys the chart sets itself (the selector keys
are refused by values.schema.json as well): user labels can never break a
selector or duplicate a key.
*/}}
{{- define "csi-smb-nfs.userLabels" -}}
{{- $labels := omit (. | default dict) "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/os" "helm.sh/chart" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" -}}
{{- with $labels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Object labels: the chart's plus customLabels. */}}
{{- define "csi-smb-nfs.labels" -}}
{{ include "csi-smb-nfs.baseLabels" . }}
{{- include "csi-smb-nfs.userLabels" .Values.customLabels }}
{{- end -}}

{{/* Labels of an object with its own labels value: those over customLabels. Call with (list $ $labels). */}}
{{- define "csi-smb-nfs.labelsWith" -}}
{{- $root := index . 0 -}}
{{ include "csi-smb-nfs.baseLabels" $root }}
{{- include "csi-smb-nfs.userLabels" (merge (dict) (index . 1 | default dict) ($root.Values.customLabels | default dict)) }}
{{- end -}}

{{/* Pod labels: the chart's plus podLabels over customLabels. */}}
{{- define "csi-smb-nfs.podLabels" -}}
{{ include "csi-smb-nfs.baseLabels" . }}
{{- include "csi-smb-nfs.userLabels" (merge (dict) (.Values.podLabels | default dict) (.Values.customLabels | default dict)) }}
{{- end -}}

{{- define "csi-smb-nfs.controllerServiceAccount" -}}
{{- default (printf "%s-controller" (include "csi-smb-nfs.fullname" .)) .Values.serviceAccount.controllerName -}}
{{- end -}}

{{- define "csi-smb-nfs.nodeServiceAccount" -}}
{{- default (printf "%s-node" (include "csi-smb-nfs.fullname" .)) .Values.serviceAccount.nodeName -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: "repo@digest" when a digest
is given, else "repo:tag". Call with (list $image $defaultTag $messageIfNoRepository).
*/}}
{{- define "csi-smb-nfs.image" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if not $image.repository -}}
{{- fail (index . 2) -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Flags every driver container shares. */}}
{{- define "csi-smb-nfs.commonDriverArgs" -}}
- --driver-name={{ .Values.driver.name }}
- --log-format={{ .Values.log.format }}
- --v={{ .Values.log.level }}
{{- end -}}

{{/* Host paths of the kubelet plugin on Linux nodes. */}}
{{- define "csi-smb-nfs.linuxPluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.linux.kubeletDir) .Values.driver.name -}}
{{- end -}}

{{/* Host paths of the kubelet plugin on Windows nodes (backslashes, no trailing one). */}}
{{- define "csi-smb-nfs.windowsKubeletDir" -}}
{{- trimSuffix "\\" .Values.windows.kubeletDir -}}
{{- end -}}

{{- define "csi-smb-nfs.windowsPluginDir" -}}
{{- printf "%s\\plugins\\%s" (include "csi-smb-nfs.windowsKubeletDir" .) .Values.driver.name -}}
{{- end -}}

{{- define "csi-smb-nfs.windowsSocket" -}}
{{- printf "%s\\csi.sock" (include "csi-smb-nfs.windowsPluginDir" .) -}}
{{- end -}}

{{/* "host:port", with brackets around an IPv6 host. Call with (list host port). */}}
{{- define "csi-smb-nfs.hostPort" -}}
{{- $host := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host $port -}}
{{- else -}}
{{- printf "%s:%v" $host $port -}}
{{- end -}}
{{- end -}}


{{/* The Linux driver image; its repository has no default (nobody publishes it). */}}
{{- define "csi-smb-nfs.driverImage" -}}
{{- include "csi-smb-nfs.image" (list .Values.image.driver .Chart.AppVersion "image.driver.repository is required: nobody publishes this driver's image yet. Build it with `make image` (deploy/Dockerfile), push it to a registry your nodes can pull from, and set --set image.driver.repository=<registry>/csi-driver-smb-nfs (see docs/helm.md).") -}}
{{- end -}}

{{- define "csi-smb-nfs.windowsDriverImage" -}}
{{- include "csi-smb-nfs.image" (list .Values.image.windowsDriver (printf "%s-windows-hostprocess" .Chart.AppVersion) "image.windowsDriver.repository is required with windows.enabled: build the HostProcess image from deploy/windows/Dockerfile (see deploy/windows/README.md), push it and set --set image.windowsDriver.repository=<registry>/csi-driver-smb-nfs.") -}}
{{- end -}}

{{/* A sidecar image (tags default in values.yaml). */}}
{{- define "csi-smb-nfs.sidecarImage" -}}
{{- include "csi-smb-nfs.image" (list . "" "a sidecar image needs a repository") -}}
{{- end -}}

{{/*
Address of an HTTP health endpoint. Host-network pods: 127.0.0.1, which
kubelet (in the host's network namespace) probes with httpGet.host. Pod-network
pods: the pod IP from the POD_IP env var, in brackets so IPv6 works (Go
accepts "[10.0.0.1]:port" too); kubelet's httpGet goes to the pod IP.
Call with (list $hostNetwork $port).
*/}}
{{- define "csi-smb-nfs.healthEndpoint" -}}
{{- if index . 0 -}}
{{- printf "127.0.0.1:%v" (index . 1) -}}
{{- else -}}
{{- printf "[$(POD_IP)]:%v" (index . 1) -}}
{{- end -}}
{{- end -}}
