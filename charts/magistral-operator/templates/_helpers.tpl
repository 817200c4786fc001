{{- define "magistral-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "magistral-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: magistral
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "magistral-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "magistral-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "magistral-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules on endpoints and their children: namespaced resources only, and only the
verbs the operator uses (tests/cluster/test_chart.py keeps the allowlist). No Secrets at all:
serving pods read the API key through secretKeyRef, the operator never does.
*/}}
{{- define "magistral-operator.rules" -}}
# Endpoints: watched; kopf keeps its bookkeeping in annotations (patch). The spec is never written.
- apiGroups: ["magistral.dev"]
  resources: ["magistralendpoints"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["magistral.dev"]
  resources: ["magistralendpoints/status"]
  verbs: ["patch"]
# Children carry blockOwnerDeletion owner references; clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) require this.
- apiGroups: ["magistral.dev"]
  resources: ["magistralendpoints/finalizers"]
  verbs: ["update"]
# The operator reads its children from watch-fed caches (docs/architecture.md, "Reads"): every
# kind it creates or observes is listed and watched, filtered by its managed-by label.
# One Deployment per usable pool: watched for status, pruned when a pool is no longer used.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ReplicaSets are read for rollbacks: the last healthy revision's pod template is restored
# from its ReplicaSet (docs/rollout.md). Never written.
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get", "list", "watch"]
# One immutable runtime ConfigMap per revision (docs/rollout.md): listed and deleted to prune
# the revisions no ReplicaSet of the endpoint mounts any more.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The other children are applied (server-side apply) and garbage-collected through owner
# references, so the operator never deletes them.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each endpoint's router pods find its engine pods through the API (vllm-router's service
# discovery): a ServiceAccount with a Role that reads the namespace's pods. The operator may
# grant only what it holds itself (it reads pods, below), so no escalate or bind verb.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Claims an endpoint names (weights, a shared cache) are checked to exist before its pods are
# created (docs/validation.md). Read only; Secrets are never read.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Serving pods: observed (scheduling, readiness, crash loops) for the endpoint's status.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events on endpoints, as `kubectl describe` shows them.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* The leader-election Lease (only with .Values.leaderElection.enabled): read, created by
the first replica, renewed and taken over with optimistic concurrency (update). */}}
{{- define "magistral-operator.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}
