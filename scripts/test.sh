#!/usr/bin/env bash
# Install (if needed) and run ruff + the test suite (slow tests are deselected unless KGL_SLOW=1),
# then build the docs (scripts/docs.sh; KGL_DOCS=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
export KGL_CACHE_DIR="${KGL_CACHE_DIR:-$PWD/.kgl-cache}"
ruff check src tests benchmarks scripts
markers=(-m "not slow")
[ "${KGL_SLOW:-0}" = 1 ] && markers=()
python -m pytest -n 2 "${markers[@]}" "$@"
# then the documentation, which executes the tutorial notebooks (KGL_DOCS=0 skips it)
[ "${KGL_DOCS:-1}" = 0 ] || bash scripts/docs.sh
