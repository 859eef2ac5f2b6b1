#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests use if missing (nats-server,
# the Python Delta readers, hledger, chromium: scripts/tools.sh), then the whole
# workspace test suite (unit, property and integration tests against a real nats-server).
# Extra arguments go to `cargo test`.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
need_test_tools
echo "nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
# The test build compiles in the named fault points of the commit path (torture tests).
cargo test --workspace --features meterflow/fault-injection "$@"
