# Sourced by test.sh and demo.sh, from the repository root: install if needed, activate .venv,
# and point kgl at the shared data and torchvision at the offline ImageNet weights.
bash scripts/install.sh
. .venv/bin/activate
# Offline weights: if ../shared/weights exists and TORCH_HOME is not set, use a project-local
# TORCH_HOME whose hub/checkpoints links the shared checkpoint (torchvision loads it unchanged).
if [ -z "${TORCH_HOME:-}" ] && [ -d ../shared/weights ]; then
  export TORCH_HOME="$PWD/.torch"
  mkdir -p "$TORCH_HOME/hub/checkpoints"
  for f in ../shared/weights/*.pth; do
    [ -e "$TORCH_HOME/hub/checkpoints/$(basename "$f")" ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$TORCH_HOME/hub/checkpoints/"
  done
fi
export KGL_DATA_DIR="${KGL_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export MPLBACKEND=Agg
