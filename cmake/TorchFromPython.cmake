# Locate the *installed* torch through the Python interpreter (never a different one):
# include dirs, library dir, the C++ ABI flag, whether that torch was built with CUDA, and (Linux)
# the libstdc++.so.6 that `import torch` maps into the process (TORCH_LIBSTDCXX, empty if none):
# CMakeLists.txt links it when the compiler would link libstdc++ statically.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
  "import torch, torch.utils.cpp_extension as c;\
print('|'.join(c.include_paths()));\
print(c.library_paths()[0]);\
print(int(torch._C._GLIBCXX_USE_CXX11_ABI));\
print(torch.version.cuda or 'none');\
print(torch.__version__);\
import os;\
maps = open('/proc/self/maps').read().split(chr(10)) if os.path.exists('/proc/self/maps') else [];\
print(next((l.split()[-1] for l in maps if 'libstdc++.so' in l), 'none'))"
  OUTPUT_VARIABLE _sbops_torch_info
  RESULT_VARIABLE _sbops_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _sbops_torch_rc EQUAL 0)
  message(FATAL_ERROR "sbops: could not import torch with ${Python_EXECUTABLE}. Install torch first "
                      "and build with --no-build-isolation.")
endif()
string(REPLACE "\n" ";" _sbops_torch_lines "${_sbops_torch_info}")
list(GET _sbops_torch_lines 0 _inc)
list(GET _sbops_torch_lines 1 TORCH_LIBRARY_DIR)
list(GET _sbops_torch_lines 2 TORCH_CXX11_ABI)
list(GET _sbops_torch_lines 3 TORCH_CUDA_VERSION)
list(GET _sbops_torch_lines 4 TORCH_VERSION)
list(GET _sbops_torch_lines 5 TORCH_LIBSTDCXX)
string(REPLACE "|" ";" TORCH_INCLUDE_DIRS "${_inc}")
if(TORCH_CUDA_VERSION STREQUAL "none")
  set(TORCH_CUDA_VERSION "")
endif()
if(TORCH_LIBSTDCXX STREQUAL "none")
  set(TORCH_LIBSTDCXX "")
endif()
message(STATUS "sbops: torch ${TORCH_VERSION} at ${TORCH_LIBRARY_DIR} (CUDA: '${TORCH_CUDA_VERSION}', "
               "CXX11 ABI ${TORCH_CXX11_ABI})")

