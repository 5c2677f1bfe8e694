#!/usr/bin/env bash
# Build the sbops wheel against the torch already installed and install it into a fresh venv (.venv).
#   scripts/install.sh [test|bench]   extras to install alongside (pytest / rich+matplotlib)
# Torch is the user's: it is never upgraded or replaced. Only where no torch exists at all is the
# CPU build pinned here installed (torch==2.13.0), never an unpinned torch (that pulls GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=${1:-}

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "sbops: no torch found; installing the CPU build torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q "setuptools>=64" wheel
echo "sbops: building the wheel against torch $("$PY" -c 'import torch; print(torch.__version__)')"
rm -rf dist
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip wheel -q --no-build-isolation --no-deps -w dist .

# a fresh venv that sees the system torch but nothing of this source tree
rm -rf .venv
"$PY" -m venv --system-site-packages .venv
whl=$(ls dist/sbops-*.whl)
.venv/bin/python -m pip install -q --no-deps --force-reinstall "$whl"
if [ -n "$extra" ]; then  # the extras' own packages (sbops itself is already there; torch is never touched)
  .venv/bin/python -m pip install -q "$whl[$extra]"
fi
.venv/bin/python -c "import sbops, sbops._C as c; print('sbops', sbops.__version__, 'installed, native target:', c.build_target)"
