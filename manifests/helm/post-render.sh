#!/bin/sh
# Helm post-renderer: wires discofilter into istiod as Helm installs it (Helm 3 --post-renderer).
#   helm upgrade --install istiod istio/istiod -n istio-system --post-renderer manifests/helm/post-render.sh
# DISCOFILTER_MODE=sidecar (default) adds the sidecar of manifests/sidecar; DISCOFILTER_MODE=standalone
# only points istiod at the standalone Deployment (manifests/standalone/istiod-client).
# Helm writes the rendered chart to stdin and applies what this prints. Needs kubectl (>= 1.14, for
# `kubectl kustomize`) or set KUSTOMIZE="kustomize build". Leaves nothing behind.
set -eu
case "${DISCOFILTER_MODE:-sidecar}" in
  sidecar) component=../../sidecar ;;
  standalone) component=../../standalone/istiod-client ;;
  *) echo "post-render.sh: DISCOFILTER_MODE must be sidecar or standalone" >&2; exit 2 ;;
esac
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# kustomize only loads components by relative path, so the scratch directory sits next to this script.
work=$(mktemp -d "$here/.render.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cat >"$work/helm-output.yaml"
cat >"$work/kustomization.yaml" <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - helm-output.yaml
components:
  - $component
KUSTOMIZATION
${KUSTOMIZE:-kubectl kustomize} "$work"
