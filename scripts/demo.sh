#!/usr/bin/env bash
# Install (if needed) and run the main job end to end on the shared data: kgl demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
kgl demo --out kgl-demo "$@"
