# Sourced: offline ImageNet weights. If ../shared/weights exists and TORCH_HOME is not set, point
# TORCH_HOME at a project-local folder where torchvision finds the shared checkpoint unchanged.
if [ -z "${TORCH_HOME:-}" ] && [ -d ../shared/weights ]; then
  export TORCH_HOME="$PWD/.torch"
  mkdir -p "$TORCH_HOME/hub/checkpoints"
  for f in ../shared/weights/*.pth; do
    [ -e "$TORCH_HOME/hub/checkpoints/$(basename "$f")" ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$TORCH_HOME/hub/checkpoints/"
  done
fi
