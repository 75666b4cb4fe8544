#!/usr/bin/env bash
# Create .venv and install kgl with its test dependencies.
# torch/torchvision are pinned to the newest releases the package registry serves here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -qq --upgrade pip
python -m pip install -qq "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -qq -e ".[test]"
