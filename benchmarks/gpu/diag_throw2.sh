#!/usr/bin/env bash
# Device call 2 of the throw crash (issue 3).  Call 1 showed the SIGSEGV inside sbops/_C.so, in
# c10::str formatting a long (std::ostream::_M_insert<long>, near libstdc++ symbols such as
# codecvt<char16_t>::do_unshift that should live in libstdc++.so, not in our module).  Find where
# those symbols come from and whether building the C++ sources as C++20 (what torch's own
# extension builder uses) changes it; then re-run the failing tests with full logs.  All logs go
# into one tarball ($OUT/diag2.tgz).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT"; L=/tmp/diag2; mkdir -p $L
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
{ c++ --version | head -1; nvcc --version | tail -1; cmake --version | head -1; ninja --version;
  python3 -c "import torch; print(torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI)"; ldconfig -p | grep stdc++; } 2>&1 | tee $L/tools.txt
gcc -shared -fPIC -O1 -o /tmp/segv_trace.so benchmarks/gpu/segv_trace.c -ldl 2>/dev/null
cat > /tmp/probe.py <<'PY'
import torch, sbops
def expect(name, f):
    try:
        f()
    except Exception as e:
        print("  RAISED", name, type(e).__name__, str(e).splitlines()[0][:90])
    else:
        print("  NO ERROR", name)
expect("cpu_binding_str", lambda: torch.ops.sbops.spike_expand(torch.tensor([1], dtype=torch.int32), "nonsense", 2))
expect("cpu_binding_long", lambda: torch.ops.sbops.spike_expand(torch.tensor([1, -1], dtype=torch.int32), "binary", 2))
expect("cuda_binding_long", lambda: torch.ops.sbops.spike_expand(torch.tensor([1, -1], device="cuda", dtype=torch.int32), "binary", 2))
PY
for std in 17 20; do
  stamp "build C++$std"
  SBOPS_BUILD_DIR=/tmp/b$std SBOPS_CMAKE_ARGS="-DCMAKE_CXX_STANDARD=$std" SBOPS_TARGET=cuda SBOPS_CUDA_ARCHS=90a MAX_JOBS=16 \
    python3 -m pip install -q --no-build-isolation --no-deps . > $L/build$std.log 2>&1 || { tail -30 $L/build$std.log; }
  so=$(python3 -c "import sbops._C as c; print(c.__file__)")
  { echo "== $so"; readelf -d $so | grep -E "NEEDED|RPATH|RUNPATH"; echo "== defined libstdc++-ish symbols in the module";
    nm -C --defined-only $so | grep -E "ostream::_M_insert|codecvt|locale::|num_put" | head -20
    echo "== objects defining _M_insert<long> or codecvt"
    for o in $(find /tmp/b$std -name "*.o"); do n=$(nm --defined-only $o 2>/dev/null | grep -c -E "_ZNSo9_M_insertIlEERSoT_|codecvt"); [ "$n" != 0 ] && echo "$o $n"; done
    echo "== link rule"; grep -n -A3 -E "^build .*_C.*\.so" /tmp/b$std/build.ninja | head -12; grep -E "LINK_FLAGS|LINK_LIBRARIES" /tmp/b$std/build.ninja | head -4
    grep -E "^CMAKE_(CXX|CUDA)_(COMPILER|IMPLICIT_LINK_LIBRARIES|IMPLICIT_LINK_DIRECTORIES|HOST_LINK_LAUNCHER)" /tmp/b$std/CMakeFiles/*/CMake*Compiler.cmake | cut -c1-400
    grep -E "_C.*\.o|std=" /tmp/b$std/compile_commands.json 2>/dev/null | head -3 | cut -c1-600
  } > $L/so$std.txt 2>&1
  head -30 $L/so$std.txt
  LD_PRELOAD=/tmp/segv_trace.so timeout 60 python3 /tmp/probe.py > $L/probe$std.log 2>&1; echo "probe C++$std rc=$?"
  grep -a -E "RAISED|NO ERROR|faulting|^  #[0-6] " $L/probe$std.log | head -12
done
stamp "failing tests, full logs (C++20 build installed)"
(cd tests
 timeout 90 python3 -m pytest -q -p no:cacheprovider -x test_triton_linear_attn.py -k "varlen_strong" > $L/t_gla.log 2>&1; echo "gla rc=$?"
 SBOPS_TRITON_TUNING=maca timeout 90 python3 -m pytest -q -p no:cacheprovider test_maca_gpu.py -k "swa" > $L/t_maca.log 2>&1; echo "maca rc=$?"
 LD_PRELOAD=/tmp/segv_trace.so timeout 150 python3 -X faulthandler -m pytest -v -p no:cacheprovider test_opcheck.py -k "cuda or gpu" > $L/t_opcheck.log 2>&1; echo "opcheck rc=$?"
 LD_PRELOAD=/tmp/segv_trace.so timeout 120 python3 -X faulthandler -m pytest -q -p no:cacheprovider test_gpu_cuda_ops.py > $L/t_cudaops.log 2>&1; echo "cudaops rc=$?")
for f in $L/t_*.log; do echo "-- $f"; grep -a -E "^FAILED|^E  |passed|failed|faulting|Fatal" $f | head -14; done
tar czf $OUT/diag2.tgz -C /tmp diag2
stamp done
