# discofilter's image: build a wheel, install it into a venv, copy the venv onto a clean slim Python.
# The final stage has no compiler, no pip cache, no build tools and no source tree, and runs as a
# numeric non-root user (so Kubernetes' runAsNonRoot can verify it). Size: README.md, "The image".
#   docker build -t discofilter:0.1.0 .
#   docker run --rm discofilter:0.1.0 serve --help

# Same base in both stages: the venv's python is a symlink to the base's /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY discofilter ./discofilter
# Every dependency ships manylinux wheels for CPython 3.11 (amd64, arm64); --only-binary makes a
# missing one fail the build instead of silently needing a compiler.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/discofilter \
 && pip --python /opt/discofilter/bin/python install --only-binary=:all: /wheels/discofilter-*.whl

FROM ${PYTHON_IMAGE}
# Read-only root filesystem in the pod: no .pyc writes at run time (pip compiled them at install).
ENV PATH=/opt/discofilter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/discofilter /opt/discofilter
# 65532: the conventional "nonroot" uid/gid of distroless images; no entry in /etc/passwd is needed.
USER 65532:65532
# 15080 proxy (plain, loopback sidecar), 15443 proxy (TLS, standalone), 15081 /healthz and /readyz,
# 15082 /metrics.
EXPOSE 15080 15443 15081 15082
ENTRYPOINT ["discofilter"]
CMD ["serve"]
