# Shared settings for scripts/demo.sh, scripts/test.sh and .ci/run (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One persistent build folder outside the clone, so fresh clones and CI runs on the same
# machine reuse the (slow, ~30 min cold) build of deltalake and DataFusion.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meterflow/target}"
# Two cores: keep parallel rustc jobs (and their memory) in check.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. "$ROOT/scripts/tools.sh"
