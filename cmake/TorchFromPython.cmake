# Locate the *installed* torch through the Python interpreter (never a different one):
# include dirs, library dir, the C++ ABI flag, and whether that torch was built with CUDA.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
  "import torch, torch.utils.cpp_extension as c;\
print('|'.join(c.include_paths()));\
print(c.library_paths()[0]);\
print(int(torch._C._GLIBCXX_USE_CXX11_ABI));\
print(torch.version.cuda or 'none');\
print(torch.__version__)"
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
string(REPLACE "|" ";" TORCH_INCLUDE_DIRS "${_inc}")
if(TORCH_CUDA_VERSION STREQUAL "none")
  set(TORCH_CUDA_VERSION "")
endif()
message(STATUS "sbops: torch ${TORCH_VERSION} at ${TORCH_LIBRARY_DIR} (CUDA: '${TORCH_CUDA_VERSION}', "
               "CXX11 ABI ${TORCH_CXX11_ABI})")

# The C++ runtime the installed torch runs against (Linux): the libstdc++.so.6 that `import torch`
# maps into the process.  Used below when the compiler has no shared libstdc++ of its own.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
  "import torch\n\
try:\n\
    print(next(l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++.so' in l))\n\
except Exception:\n\
    print('')"
  OUTPUT_VARIABLE TORCH_LIBSTDCXX
  RESULT_VARIABLE _sbops_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
