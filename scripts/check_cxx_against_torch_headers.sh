#!/usr/bin/env bash
# Syntax-check every C++ source of the native library against another torch's headers, e.g. those of
# the oldest torch a wheel must load in (the stable-ABI headers differ between releases: torch 2.11's
# HeaderOnlyArrayRef has no operator==, 2.13's has).  No torch of that version needs to be installed:
# copy its site-packages/torch/include folder.
#
#   scripts/check_cxx_against_torch_headers.sh /path/to/torch/include     (default: the installed torch's)
set -uo pipefail
cd "$(dirname "$0")/.."
INC=${1:-$(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")}
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
fail=0
for f in csrc/ops.cpp backends/cpu/*.cpp backends/cuda/bindings/*.cpp; do
  extra=()
  case $f in backends/cuda/*) extra=(-DSBOPS_WITH_CUDA=1 "-I$CUDA_INC");; esac
  if g++ -std=c++20 -fsyntax-only -DTORCH_TARGET_VERSION=0x020a000000000000 -I"$INC" -Icsrc/include \
       -Ibackends/cuda/kernels -Ibackends/cpu "${extra[@]}" "$f" 2> /tmp/sbops_cxx_check.log; then
    echo "ok   $f"
  else
    echo "FAIL $f"; grep -m5 "error:" /tmp/sbops_cxx_check.log; fail=1
  fi
done
exit $fail
