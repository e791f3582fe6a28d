#!/usr/bin/env bash
# Installs the test ClickHouse (chdb-core and the shim's two helpers) into a virtual environment
# under target/, rebuilt only when requirements.txt changes, and prints its python's path.
# Used by tests/run.sh and bench/relay.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/chdb-venv
requirements=tests/clickhouse/requirements.txt

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "[clickhouse/setup.sh] installing chdb-core into $venv" >&2
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$venv/requirements.txt"
fi
"$venv/bin/python" -c 'import chdb, lz4.block, clickhouse_cityhash, jwt, cryptography, schemathesis, openapi_spec_validator, yaml, helm_python, kubernetes_validate, twilio.request_validator' \
  || { echo "[clickhouse/setup.sh] $venv is broken; delete it and run again" >&2; exit 1; }
echo "$PWD/$venv/bin/python"
