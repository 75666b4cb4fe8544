#!/usr/bin/env bash
# Install (if needed) and run the test suite; slow tests are deselected unless KGL_SLOW=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
. scripts/_offline_weights.sh
export KGL_DATA_DIR="${KGL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export KGL_CACHE_DIR="${KGL_CACHE_DIR:-$PWD/.kgl-cache}"
export MPLBACKEND=Agg
ruff check src tests
markers=(-m "not slow")
[ "${KGL_SLOW:-0}" = 1 ] && markers=()
python -m pytest -n 2 "${markers[@]}" "$@"
