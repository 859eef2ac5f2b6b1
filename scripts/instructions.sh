#!/usr/bin/env bash
# Instructions per event of the core stages (decode, validate, enrich, extract, dedup, window,
# rate), counted by callgrind: repeatable on a shared machine where seconds are not. Counts only
# the stages (`meterflow_benches::core::run` and the dedup thread's loop), not the workload's
# generation. Usage: bash scripts/instructions.sh [EVENTS]   (default 50000 per batch size)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/env.sh" >/dev/null
set +e
command -v valgrind >/dev/null || { echo "instructions: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
events="${1:-50000}"
(cd "$ROOT" && cargo build --release -p meterflow-benches --bin meterflow-instructions) >&2 || exit 1
bin="$CARGO_TARGET_DIR/release/meterflow-instructions"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
printf '| events per message | events | instructions (Ir) | instructions per event |\n| ---: | ---: | ---: | ---: |\n'
for batch in 1 100; do
  log="$out/run-$batch.txt"
  valgrind --tool=callgrind --callgrind-out-file="$out/cg-$batch.%p" \
    --toggle-collect='meterflow_benches::core::run*' --toggle-collect='*shard_loop*' \
    "$bin" "$batch" "$events" >"$log" 2>"$out/valgrind-$batch.txt" || { cat "$out/valgrind-$batch.txt" >&2; exit 1; }
  counted="$(grep -h '^events=' "$log" | sed -E 's/^events=([0-9]+).*/\1/')"
  ir="$(cat "$out"/cg-"$batch".* | awk '/^summary:/ {s += $2} END {print s}')"
  awk -v b="$batch" -v e="$counted" -v ir="$ir" 'BEGIN { printf "| %d | %d | %d | %.0f |\n", b, e, ir, ir / e }'
done
