#!/bin/sh
# Helm post-renderer: adds discofilter to istiod as a sidecar (manifests/sidecar) as Helm installs it.
#   helm upgrade --install istiod istio/istiod -n istio-system --post-renderer manifests/helm/post-render.sh
# Helm writes the rendered chart to stdin and applies what this prints. Needs kubectl (>= 1.14, for
# `kubectl kustomize`) or set KUSTOMIZE="kustomize build". Leaves nothing behind.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# kustomize only loads components by relative path, so the scratch directory sits next to this script.
work=$(mktemp -d "$here/.render.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cat >"$work/helm-output.yaml"
cat >"$work/kustomization.yaml" <<'KUSTOMIZATION'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - helm-output.yaml
components:
  - ../../sidecar
KUSTOMIZATION
${KUSTOMIZE:-kubectl kustomize} "$work"
