#!/usr/bin/env bash
# Install (if needed) kgl with its docs extra and build the HTML documentation into docs/_build/html.
# The tutorial notebooks are executed during the build in their small, CI-sized mode (KGL_SMALL=1);
# any warning or failing notebook fails the build (-W). KGL_DOCS_EXECUTE=off skips executing them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
python -m pip install -qq -e ".[docs]"
export KGL_SMALL="${KGL_SMALL:-1}"
unset MPLBACKEND      # _env.sh sets Agg; the notebooks' kernels need ipykernel's inline backend for figures
rm -rf docs/generated # autosummary stubs: regenerated from the rooms' __all__ on every build
# the tutorials run on the shared data: without it, build the pages unexecuted (as tests skip) and say so
if [ -z "${KGL_DOCS_EXECUTE:-}" ] && ! python -c "from kgl import settings; settings.find_data('glomeruli-pas-tiles'); settings.find_data('glomeruli-multistain')" 2>/dev/null; then
  echo "docs: shared data not found (KGL_DATA_DIR / ../shared/data): the tutorials are NOT executed"
  export KGL_DOCS_EXECUTE=off
fi
start=$SECONDS
python -m sphinx -E -W --keep-going -b html docs docs/_build/html "$@"  # -E: re-read (and re-execute) everything
echo "docs: built docs/_build/html/index.html in $((SECONDS - start)) s"
