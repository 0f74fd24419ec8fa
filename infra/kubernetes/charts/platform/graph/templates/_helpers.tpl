{{/*
graph.externalSecret renders one ExternalSecret on ClusterSecretStore/ameide-vault.
Usage: include "graph.externalSecret" (dict "root" $ "es" .)
*/}}
{{- define "graph.externalSecret" -}}
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: {{ .es.name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    app.kubernetes.io/name: graph
    app.kubernetes.io/instance: {{ .root.Release.Name }}
spec:
  refreshInterval: {{ .root.Values.secretRefreshInterval | default "1h" }}
  secretStoreRef:
    kind: ClusterSecretStore
    name: ameide-vault
  target:
    name: {{ .es.target | default .es.name }}
    creationPolicy: Owner
  data:
    {{- range .es.data }}
    - secretKey: {{ .secretKey }}
      remoteRef:
        key: {{ .remoteRef.key }}
        property: {{ .remoteRef.property | default "value" }}
    {{- end }}
{{- end }}
