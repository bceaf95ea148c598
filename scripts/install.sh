#!/usr/bin/env bash
# Install clusterkit (editable) into the current Python environment.
#
#   scripts/install.sh          runtime only
#   scripts/install.sh --dev    + test tools, and Slurm/munge and Chromium (the report gallery
#                               test's headless browser) from apt when running as root
#
# torch goes first and pinned: the package accepts any torch >=2.3,<2.14, so pip keeps the
# one installed here instead of pulling a second, CUDA-sized build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    bash scripts/ensure-slurm.sh
    bash scripts/ensure-chromium.sh
else
    "$PY" -m pip install --quiet --disable-pip-version-check -e .
fi
"$PY" - <<'PY'
from importlib.metadata import distributions
torches = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"] in ("torch", "torch-cpu"))
assert torches == ["torch"], f"expected exactly one torch, found {torches}"
PY
