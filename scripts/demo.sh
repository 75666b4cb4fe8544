#!/usr/bin/env bash
# Install (if needed) and run the main job end to end on the shared data: kgl demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
. scripts/_offline_weights.sh
export KGL_DATA_DIR="${KGL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export MPLBACKEND=Agg
kgl demo --out kgl-demo "$@"
