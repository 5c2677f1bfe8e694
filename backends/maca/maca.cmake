# MetaX MACA toolchain for sbops._C (SBOPS_TARGET=maca, or auto with MACA_PATH set and a '+metax'
# torch).  Included by CMakeLists.txt BEFORE cmake/cuda.cmake, which then compiles the same
# backends/cuda/kernels/*.cu and bindings with the compiler chosen here.
#
# What is assumed about a MACA installation (MetaX's public build scripts and docs; not verified
# on MetaX hardware by this repository -- see backends/maca/README.md):
#   * MACA_PATH (environment or -DMACA_PATH=...; default /opt/maca) is the SDK root.
#   * cu-bridge lives in $MACA_PATH/tools/cu-bridge: bin/ holds its CUDA-compatible compiler driver
#     `cucc`, also installed as `nvcc`; the directory itself is laid out like a CUDA toolkit (MetaX's
#     scripts export CUDA_PATH=$MACA_PATH/tools/cu-bridge), so CMake's CUDA language support and
#     find_package(CUDAToolkit) work against it.  If your installation only provides the bridge
#     through `pre_make` / `cmake_maca`, run CMake through those wrappers instead.
#   * cu-bridge accepts the CUDA spellings (cuda_runtime.h, cudaStream_t, __shfl_xor_sync ...) and
#     maps them to the MACA runtime; device passes define __MACA_ARCH__.
#   * The MACA runtime is $MACA_PATH/lib/libmcruntime.so (+ cu-bridge's libruntime_cu.so), headers
#     in $MACA_PATH/include (mc_runtime.h); the compiler's LLVM in $MACA_PATH/mxgpu_llvm.
#   * MetaX PyTorch provides c10_cuda / torch_cuda (its devices are `cuda`), linked by cuda.cmake.
#   * GPU architectures: C500-class parts report themselves like sm_80, so the default
#     SBOPS_CUDA_ARCHS for MACA is "80" (cu-bridge maps the gencode flags to its own targets).

if(NOT DEFINED MACA_PATH)
  if(DEFINED ENV{MACA_PATH})
    set(MACA_PATH "$ENV{MACA_PATH}")
  else()
    set(MACA_PATH "/opt/maca")
  endif()
endif()
set(MACA_PATH "${MACA_PATH}" CACHE PATH "MetaX MACA SDK root")
set(SBOPS_CU_BRIDGE "${MACA_PATH}/tools/cu-bridge")

if(NOT EXISTS "${MACA_PATH}")
  message(FATAL_ERROR "sbops (maca): MACA_PATH='${MACA_PATH}' does not exist; set MACA_PATH to the MACA SDK root")
endif()

# cu-bridge's compiler driver: `nvcc` (the name CMake's CUDA support expects), else `cucc`.
if(NOT CMAKE_CUDA_COMPILER)
  find_program(SBOPS_CU_BRIDGE_NVCC NAMES nvcc cucc PATHS "${SBOPS_CU_BRIDGE}/bin" NO_DEFAULT_PATH)
  if(NOT SBOPS_CU_BRIDGE_NVCC)
    message(FATAL_ERROR "sbops (maca): no cu-bridge compiler (nvcc or cucc) in ${SBOPS_CU_BRIDGE}/bin")
  endif()
  set(CMAKE_CUDA_COMPILER "${SBOPS_CU_BRIDGE_NVCC}" CACHE FILEPATH "cu-bridge CUDA compiler" FORCE)
endif()
# find_package(CUDAToolkit) in cuda.cmake: the cu-bridge tree stands in for the CUDA toolkit.
set(CUDAToolkit_ROOT "${SBOPS_CU_BRIDGE}")
set(ENV{CUDA_PATH} "${SBOPS_CU_BRIDGE}")

# C500 reports itself like sm_80; other gencode values are not meaningful for cu-bridge.
if(SBOPS_CUDA_ARCHS STREQUAL "80;90a")
  set(SBOPS_CUDA_ARCHS "80" CACHE STRING "CUDA architectures (gencode) to build" FORCE)
endif()

# USE_MACA: the MACA code paths (64-lane warps, 64-bit lane masks, no PTX; csrc/include/sbops/warp.cuh).
# SBOPS_WITH_MACA: the build is for MetaX (cuda.cmake reads the CMake variable; the macro is for C++).
set(SBOPS_WITH_MACA ON)
add_compile_definitions(USE_MACA=1 SBOPS_WITH_MACA=1)

# MACA runtime headers and libraries (every target created after this point).
include_directories(SYSTEM "${MACA_PATH}/include" "${SBOPS_CU_BRIDGE}/include")
link_directories("${MACA_PATH}/lib" "${SBOPS_CU_BRIDGE}/lib")
link_libraries(mcruntime)
# At run time $MACA_PATH/lib must be on LD_LIBRARY_PATH (MetaX's environment scripts put it there).

message(STATUS "sbops (maca): MACA_PATH=${MACA_PATH}, compiler ${CMAKE_CUDA_COMPILER}, archs ${SBOPS_CUDA_ARCHS}")
