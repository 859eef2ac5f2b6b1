#!/usr/bin/env bash
# Runs the demo on a fresh machine: installs nats-server if missing, builds, and runs
# `meterflow demo` (a local JetStream server, a realistic workload, the pipeline until drained,
# totals checked against the workload's oracle). Extra arguments go to `meterflow demo`.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
cargo build --bin meterflow
exec "$CARGO_TARGET_DIR/debug/meterflow" demo "$@"
