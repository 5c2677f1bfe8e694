# CUDA (and MACA through cu-bridge, whose compiler is installed as nvcc) sources of sbops._C.
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)

file(GLOB SBOPS_CUDA_KERNELS ${CMAKE_CURRENT_SOURCE_DIR}/backends/cuda/kernels/*.cu)
file(GLOB SBOPS_CUDA_BINDINGS ${CMAKE_CURRENT_SOURCE_DIR}/backends/cuda/bindings/*.cpp)

function(sbops_add_gpu_sources tgt)
  target_sources(${tgt} PRIVATE ${SBOPS_CUDA_KERNELS} ${SBOPS_CUDA_BINDINGS})
  set(_gencode "")
  foreach(a ${SBOPS_CUDA_ARCHS})
    list(APPEND _gencode "-gencode=arch=compute_${a},code=sm_${a}")
  endforeach()
  # Architectures come from SBOPS_CUDA_ARCHS as explicit gencode flags.
  set_target_properties(${tgt} PROPERTIES CUDA_ARCHITECTURES OFF)
  target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr ${_gencode}>)
  target_compile_definitions(${tgt} PRIVATE SBOPS_WITH_CUDA=1)
  if(SBOPS_MACA_SIM OR SBOPS_WITH_MACA)
    target_compile_definitions(${tgt} PRIVATE USE_MACA=1)
  endif()
  if(SBOPS_MACA_SIM)
    target_compile_definitions(${tgt} PRIVATE SBOPS_MACA_SIM=1)
  endif()
  target_include_directories(${tgt} PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  # share torch's CUDA runtime instead of linking a second, static one
  set_target_properties(${tgt} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  target_link_libraries(${tgt} PRIVATE c10_cuda torch_cuda CUDA::cudart)
endfunction()
