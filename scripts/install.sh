#!/usr/bin/env bash
# Build sbops against the torch of the python you run, and install it into that python's environment
# (the active virtualenv / conda env, or the system python), as `pip install` would.
#
#   scripts/install.sh [test|bench ...]     extras: test = pytest numpy triton transformers safetensors,
#                                            bench = rich matplotlib numpy (listed in pyproject.toml)
#   PYTHON=/path/to/python scripts/install.sh ...   another interpreter (default: `python`, else `python3`)
#   MAX_JOBS=N                                       parallel compile jobs (default: all cores)
#
# It never creates an environment, never replaces your torch, and asks no package index about
# anything already installed: with every dependency present it runs offline.
#   - torch (>= 2.10): used as it is; only where none is importable is the CPU build
#     torch==2.13.0+cpu (Linux x86_64; elsewhere torch==2.13.0) installed from the PyTorch CPU
#     index (a GPU user installs their CUDA or MetaX torch first, then runs this).
#   - cmake >= 3.18: the one on PATH, else pip's.
#   - build tools (setuptools >= 77, cmake, ninja) and the extras' packages: installed only when
#     missing, under a constraint that pins the installed torch, so nothing can pull another torch.
#   - sbops itself: a wheel built with `pip wheel --no-build-isolation --no-deps` against that torch
#     into a temporary folder (dist/ is left alone), installed with --no-deps --force-reinstall.
set -euo pipefail

# the interpreter, resolved where the script was called from (a relative PYTHON=.venv/bin/python means
# the caller's .venv, not one in the source tree)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "sbops install: no python found (tried '$PY'); activate your environment or set PYTHON=/path/to/python" >&2
  exit 1
fi
case "$PY" in
  */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;   # a path: made absolute (symlinks kept: a venv's python is one)
  *) PY="$(command -v "$PY")" ;;
esac
cd "$(dirname "$0")/.."
for extra in "$@"; do
  case "$extra" in test|bench) ;; *) echo "sbops install: unknown extra '$extra'; expected test or bench" >&2; exit 2;; esac
done

T0=$SECONDS
N=6
stage() { echo "sbops install [$1/$N] $2  (${SECONDS}s)"; }
pip_() { "$PY" -m pip "$@"; }
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

# 1. the interpreter and its environment
where=$("$PY" - <<'EOF'
import os, sys, sysconfig
if sys.version_info < (3, 10):
    sys.exit(f"sbops needs Python >= 3.10; {sys.executable} is {sys.version.split()[0]}")
venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
conda = os.path.exists(os.path.join(sys.prefix, "conda-meta"))
kind = "virtualenv" if venv else "conda env" if conda else "system python"
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
if managed and not venv and not conda and not os.environ.get("PIP_BREAK_SYSTEM_PACKAGES"):
    sys.exit(f"{sys.executable} is an externally managed system python (PEP 668): create and activate an "
             "environment first (python3 -m venv .venv && . .venv/bin/activate), then run this again")
print(f"{sys.executable} (Python {sys.version.split()[0]}, {kind} at {sys.prefix})")
EOF
)
stage 1 "installing into $where"
if ! pip_ --version >/dev/null 2>&1; then
  echo "sbops install: $PY has no pip (python -m pip); install it (e.g. python -m ensurepip) and run this again" >&2
  exit 1
fi
# console scripts of this environment (a cmake or ninja installed below) come first on PATH
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

# 2. torch: the user's, as is
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
if "$PY" -W ignore -c "import torch" 2>/dev/null; then
  stage 2 "torch $("$PY" -W ignore -c 'import torch; print(torch.__version__)') found: used as it is"
elif has_module torch; then
  # installed but broken: never replace a torch (it may be the user's CUDA or MetaX build); show why
  echo "sbops install: $PY has torch installed, but importing it fails:" >&2
  "$PY" -W ignore -c "import torch" 2>&1 | tail -5 >&2 || true
  echo "sbops install: repair that torch (or uninstall it to get the CPU build), then run this again" >&2
  exit 1
else
  # the CPU index labels its Linux x86_64 wheels +cpu (PyPI's plain torch there is the CUDA build, several GB)
  torch_req=torch==2.13.0
  [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && torch_req=torch==2.13.0+cpu
  stage 2 "no torch found: installing the CPU build $torch_req"
  echo "sbops install: for a GPU, install your CUDA (or MetaX) torch into this environment first, then run this again"
  # the wheel itself from the PyTorch CPU index, then its dependencies from your usual index (the
  # installed torch already satisfies the pin, so only they are fetched)
  pip_ install -q --no-deps "$torch_req" --extra-index-url "$TORCH_CPU_INDEX"
  pip_ install -q "$torch_req"
fi
"$PY" -W ignore - <<'EOF'
import sys, torch
v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if v < (2, 10):
    sys.exit(f"sbops install: torch {torch.__version__} is older than 2.10, the stable-ABI floor sbops "
             "builds against; upgrade torch (e.g. pip install 'torch>=2.10') and run this again")
EOF
# everything installed below must leave that torch alone: pin it (pip then fails rather than replace it)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" - >"$CONSTRAINTS" <<'EOF'
try:
    from importlib.metadata import version
    v = version("torch")
except Exception:  # torch without distribution metadata (a source tree on sys.path)
    import torch
    v = torch.__version__
print(f"torch=={v}")
EOF

# 3. build tools, only those missing
need=()
"$PY" - <<'EOF' || need+=("setuptools>=77")
import sys
try:
    import setuptools
except ImportError:
    sys.exit(1)
sys.exit(int(setuptools.__version__.split(".")[0]) < 77)   # 77: the SPDX license in pyproject.toml (torch 2.13 needs it too)
EOF
# cmake >= 3.18 (CMakeLists.txt's minimum); an older one on PATH (Ubuntu 20.04's 3.16) is shadowed
# by pip's cmake, installed into this environment's scripts folder, which comes first on PATH
cmake_ok() {
  command -v cmake >/dev/null 2>&1 || return 1
  local v
  v=$(cmake --version 2>/dev/null | sed -nE '1s/^cmake version ([0-9]+)\.([0-9]+).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 3 ] || { [ "$1" -eq 3 ] && [ "$2" -ge 18 ]; }
}
cmake_ok || need+=("cmake>=3.18")
if [ ${#need[@]} -gt 0 ]; then
  stage 3 "build tools: installing ${need[*]}"
  pip_ install -q -c "$CONSTRAINTS" "${need[@]}"
else
  stage 3 "build tools: setuptools, cmake $(cmake --version | sed -nE '1s/^cmake version //p') present"
fi
if ! command -v ninja >/dev/null 2>&1; then  # optional: faster builds; make is used without it
  pip_ install -q -c "$CONSTRAINTS" ninja 2>/dev/null || echo "sbops install: ninja not installed; building with make"
fi

# 4. the wheel, against the installed torch
stage 4 "building the wheel against that torch (SBOPS_TARGET=${SBOPS_TARGET:-auto}; a few minutes)"
WHEELDIR=$(mktemp -d)
trap 'rm -f "$CONSTRAINTS"; rm -rf "$WHEELDIR"' EXIT
MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)} pip_ wheel -q --no-build-isolation --no-deps -w "$WHEELDIR" .
whl=$(ls "$WHEELDIR"/sbops-*.whl)

# 5. sbops itself, nothing else
stage 5 "installing $whl"
pip_ install -q --no-deps --force-reinstall "$whl"

# 6. the extras' packages, only those that do not import
if [ $# -gt 0 ]; then
  mapfile -t missing < <("$PY" scripts/extras_missing.py "$@")
  if [ ${#missing[@]} -gt 0 ]; then
    stage 6 "extras $*: installing ${missing[*]}"
    if ! pip_ install -q -c "$CONSTRAINTS" "${missing[@]}"; then
      # each is optional (what needs it is skipped, with the reason): install what can be, say what not
      echo "sbops install: installing them together failed; trying one at a time"
      failed=()
      for req in "${missing[@]}"; do pip_ install -q -c "$CONSTRAINTS" "$req" || failed+=("$req"); done
      if [ ${#failed[@]} -gt 0 ]; then
        echo "sbops install: WARNING: could not install ${failed[*]} (no network or no package index?);" \
             "what needs them is skipped (pytest -rs shows why) or runs without them" >&2
      fi
    fi
  else
    stage 6 "extras $*: every package already present"
  fi
else
  stage 6 "no extras asked for"
fi

"$PY" -c "import sbops, sbops._C as c; print('sbops', sbops.__version__, 'installed, native target:', c.build_target)"
echo "sbops install: done in $((SECONDS - T0))s, into $("$PY" -c 'import sys; print(sys.executable)')"
