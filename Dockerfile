# discofilter's image: build a wheel, install it into a venv, copy the venv onto a clean slim Python.
# The final stage has no compiler, no pip cache, no build tools and no source tree, and runs as a
# numeric non-root user (so Kubernetes' runAsNonRoot can verify it). Size: README.md, "The image".
#   docker build -t discofilter:0.1.0 .
#   docker run --rm -p 15080:15080 -p 15081:15081 -p 15082:15082 discofilter:0.1.0
# (outside a pod, give it a kubeconfig: -e KUBECONFIG=/path in a volume that uid 65532 can read).
# The dependencies come from requirements.lock (every version pinned, every file hashed), so two builds
# of one commit install the same packages. Regenerate it after changing pyproject's dependencies:
#   uv pip compile pyproject.toml --python-version 3.11 --python-platform linux --generate-hashes -o requirements.lock

# Same base in both stages: the venv's python is a symlink to the base's /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY discofilter ./discofilter
# Every dependency ships manylinux wheels for CPython 3.11 (amd64, arm64); --only-binary makes a
# missing one fail the build instead of silently needing a compiler. --require-hashes refuses any file
# whose hash the lock does not list, and any dependency the lock does not pin. discofilter's own wheel
# goes in with --no-deps: its dependencies are exactly the lock's, and pip check proves they suffice.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/discofilter \
 && pip --python /opt/discofilter/bin/python install --require-hashes --only-binary=:all: -r requirements.lock \
 && pip --python /opt/discofilter/bin/python install --no-deps /wheels/discofilter-*.whl \
 && pip --python /opt/discofilter/bin/python check

FROM ${PYTHON_IMAGE}
# Read-only root filesystem in the pod: no .pyc writes at run time (pip compiled them at install).
# The image's default `serve` listens on every address of the container, where EXPOSE says, so
# `docker run -p 15080:15080` reaches it (discofilter's own defaults are loopback, which a published
# port never reaches). Safe: on a non-loopback listener discofilter only forwards each client's own
# credentials, and refuses --upstream-credentials (the lending of its own). The Kubernetes manifests
# pass every listener as a flag, which wins over these variables: the sidecar's proxy stays on loopback.
ENV PATH=/opt/discofilter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DISCOFILTER_LISTEN=0.0.0.0:15080 \
    DISCOFILTER_HEALTH_LISTEN=0.0.0.0:15081 \
    DISCOFILTER_METRICS_LISTEN=0.0.0.0:15082
COPY --from=build /opt/discofilter /opt/discofilter
# 65532: the conventional "nonroot" uid/gid of distroless images; no entry in /etc/passwd is needed.
USER 65532:65532
# 15080 proxy (plain http), 15081 /healthz and /readyz, 15082 /metrics: what the default command serves.
# (The standalone Deployment's TLS listener, 15443, is its own --listen flag and containerPort.)
EXPOSE 15080 15081 15082
ENTRYPOINT ["discofilter"]
CMD ["serve"]
