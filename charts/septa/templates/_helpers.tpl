{{/*
The DaemonSet's name is fixed, not derived from the release: the agent finds it by
--daemonset (to tell an uninstall from a restart) and the Role names it in resourceNames.
*/}}
{{- define "septa.agentName" -}}septa-agent{{- end -}}

{{- define "septa.daemonset" -}}{{ .Release.Namespace }}/{{ include "septa.agentName" . }}{{- end -}}

{{- define "septa.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "septa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: septa
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "septa.selectorLabels" . }}
{{- end -}}

{{- define "septa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "septa.agentName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The port of node.healthAddr (`0.0.0.0:9876`, `[::]:9876`). */}}
{{- define "septa.healthPort" -}}
{{ regexReplaceAll "^.*:" .Values.node.healthAddr "" }}
{{- end -}}

{{/* Where the node's CNI directories appear inside the containers. */}}
{{- define "septa.cniConfMount" -}}/host/etc/cni/net.d{{- end -}}
{{- define "septa.cniBinMount" -}}/host/opt/cni/bin{{- end -}}
{{- define "septa.ownFileDir" -}}/etc/septa-cni{{- end -}}

{{/*
The agent's --config file. Every key of the option groups whose value is set (not null,
not false, not an empty list) becomes the flag of the same name; values the chart must
decide (the source, the paths as the container sees them, the DaemonSet) are set here.
*/}}
{{- define "septa.agentConfig" -}}
{{- $c := dict -}}
{{- range $group := list "node" "source" "maps" "flows" "export" "dns" "feeds" -}}
{{- range $k, $v := index $.Values $group -}}
{{- $unset := or (kindIs "invalid" $v) (and (kindIs "bool" $v) (not $v)) (and (kindIs "slice" $v) (eq (len $v) 0)) -}}
{{- if not $unset -}}
{{- $_ := set $c (kebabcase $k) $v -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $cni := .Values.cni -}}
{{- range $k := list "network" "fileName" "socketWait" -}}
{{- $v := index $cni $k -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $c (printf "cni-%s" (kebabcase $k)) $v -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "source" "kubernetes" -}}
{{- $_ := set $c "daemonset" (include "septa.daemonset" .) -}}
{{- $_ := set $c "cni-mode" $cni.mode -}}
{{- $_ := set $c "cni-conf-dir" (include "septa.cniConfMount" .) -}}
{{- $_ := set $c "cni-bin-dir" (include "septa.cniBinMount" .) -}}
{{- if eq $cni.mode "own-file" -}}
{{- $_ := set $c "cni-own-file" (printf "%s/conflist.json" (include "septa.ownFileDir" .)) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The security context of every container that is not privileged. */}}
{{- define "septa.securityContext" -}}
privileged: false
readOnlyRootFilesystem: true
runAsUser: 0
runAsGroup: 0
capabilities:
  drop:
    - ALL
  {{- with .Values.agent.securityContext.capabilities }}
  add:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{ include "septa.confinement" . }}
{{- end -}}

{{- define "septa.confinement" -}}
{{- with .Values.agent.securityContext.seLinuxType -}}
seLinuxOptions:
  type: {{ . }}
  level: s0
{{ end -}}
appArmorProfile:
  type: {{ .Values.agent.securityContext.appArmorProfile }}
{{- end -}}
