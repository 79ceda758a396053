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

{{- define "csi-smb-nfs.labels" -}}
{{ include "csi-smb-nfs.selectorLabels" . }}
helm.sh/chart: {{ include "csi-smb-nfs.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: csi-driver-smb-nfs
{{- end -}}

{{- define "csi-smb-nfs.controllerServiceAccount" -}}
{{- default (printf "%s-controller" (include "csi-smb-nfs.fullname" .)) .Values.serviceAccount.controllerName -}}
{{- end -}}

{{- define "csi-smb-nfs.nodeServiceAccount" -}}
{{- default (printf "%s-node" (include "csi-smb-nfs.fullname" .)) .Values.serviceAccount.nodeName -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: "repo@digest" when a digest
is given, else "repo:tag". Call with (list $image $defaultTag).
*/}}
{{- define "csi-smb-nfs.image" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
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
- --grace-period={{ .Values.driver.gracePeriod }}
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
