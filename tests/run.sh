#!/usr/bin/env bash
# Installs everything the tests need into .venv and runs the whole suite: lint, types, layers, tests.
# This is the README's test command, and all that .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# kubectl drives the real-client tests. Debian's kubernetes-client package provides it.
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
  else
    echo "kubectl is missing: install Debian's kubernetes-client package (sudo apt-get install kubernetes-client)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
