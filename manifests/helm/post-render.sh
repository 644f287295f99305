#!/bin/sh
# Helm post-renderer: wires discofilter into istiod as Helm installs it.
#   Helm 4: helm plugin install manifests/helm            (once; plugin.yaml beside this file)
#           helm upgrade --install istiod istio/istiod -n istio-system --post-renderer discofilter
#   Helm 3: helm upgrade --install istiod istio/istiod -n istio-system --post-renderer manifests/helm/post-render.sh
# DISCOFILTER_MODE=sidecar (default) adds the sidecar of manifests/sidecar; DISCOFILTER_MODE=standalone
# only points istiod at the standalone Deployment (manifests/standalone/istiod-client).
# The sidecar's image is manifests/image's `images:` entry, or DISCOFILTER_IMAGE (REGISTRY/NAME:TAG or
# REGISTRY/NAME@sha256:...) when set. Left as the placeholder, the render fails: a sidecar whose image
# cannot be pulled keeps istiod in Init.
# Helm writes the rendered chart to stdin and applies what this prints. Needs kubectl (>= 1.27, for
# kustomize 5 in `kubectl kustomize`) or set KUSTOMIZE="kustomize build". Leaves nothing behind.
set -eu

# Helm 4 keeps a post-renderer plugin's stderr to itself and says only 'plugin "discofilter" exited
# with error' (internal/plugin/runtime_subprocess.go, runPostrenderer): so the reason also goes to the
# terminal, when there is one.
fail() {
  echo "post-render.sh: $2" >&2
  if [ -n "${HELM_PLUGIN_NAME:-}" ]; then
    { echo "discofilter post-renderer: $2" >/dev/tty; } 2>/dev/null || true
  fi
  exit "$1"
}

case "${DISCOFILTER_MODE:-sidecar}" in
  sidecar) component=manifests/sidecar ;;
  standalone) component=manifests/standalone/istiod-client ;;
  *) fail 2 "DISCOFILTER_MODE must be sidecar or standalone, not '${DISCOFILTER_MODE}'" ;;
esac
if [ -n "${DISCOFILTER_IMAGE+set}" ]; then
  case "$DISCOFILTER_IMAGE" in
    '' | *[!A-Za-z0-9._/:@-]*) fail 2 "DISCOFILTER_IMAGE='${DISCOFILTER_IMAGE}' is not an image reference" ;;
  esac
fi

# -P: Helm installs a local plugin directory as a symlink; the manifests are next to its target.
here=$(CDPATH='' cd -P -- "$(dirname -- "$0")" && pwd -P)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM
# kustomize loads components by relative path only, so the render works on a copy of the manifests.
cp -R "$here/.." "$work/manifests"
if [ -n "${DISCOFILTER_IMAGE:-}" ]; then
  # manifests/image with DISCOFILTER_IMAGE as the image (newName may carry the tag or digest), the
  # placeholder guard kept.
  cat >"$work/manifests/image/kustomization.yaml" <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources:
  - image-guard.yaml
images:
  - name: discofilter
    newName: "$DISCOFILTER_IMAGE"
replacements:
  - path: placeholder-guard.yaml
KUSTOMIZATION
fi
mkdir "$work/render"
cat >"$work/render/helm-output.yaml"
cat >"$work/render/kustomization.yaml" <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - helm-output.yaml
components:
  - ../$component
KUSTOMIZATION
if ! ${KUSTOMIZE:-kubectl kustomize} "$work/render" >"$work/out.yaml" 2>"$work/err"; then
  if grep -q 'is still the placeholder' "$work/err"; then
    fail 2 "the discofilter image is still the placeholder registry.example.com/discofilter:0.1.0: set DISCOFILTER_IMAGE, or the images: entry of manifests/image/kustomization.yaml"
  fi
  fail 1 "kustomize failed: $(cat "$work/err")"
fi
cat "$work/out.yaml"
