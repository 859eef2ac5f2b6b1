# Shared settings for scripts/demo.sh, scripts/test.sh and .ci/run (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One persistent build folder outside the clone, so fresh clones and CI runs on the same
# machine reuse the (slow, ~30 min cold) build of deltalake and DataFusion.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meterflow/target}"
# Two cores: keep parallel rustc jobs (and their memory) in check.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# Incremental caches of the workspace crates grow without bound in a persistent build folder
# (tens of GB over weeks of CI runs) for little gain on full builds: off unless asked for.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A full disk makes the linker die with a bus error half-way through a build. Below 15 GiB
# free, drop the build folder's incremental caches (the compiled dependencies stay).
free_kib="$(mkdir -p "$CARGO_TARGET_DIR" && df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print $4}')"
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((15 * 1024 * 1024)) ]; then
  echo "env: $((free_kib / 1024)) MiB free: removing incremental caches in $CARGO_TARGET_DIR" >&2
  rm -rf "$CARGO_TARGET_DIR"/*/incremental
fi
unset free_kib
. "$ROOT/scripts/tools.sh"
