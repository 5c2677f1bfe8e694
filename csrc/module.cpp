// The Python module sbops._C.  It holds no functions: importing it loads this shared library,
// whose static initialisers register the op schemas (csrc/ops.cpp) and every compiled backend's
// kernels (TORCH_LIBRARY_IMPL blocks) with the PyTorch dispatcher.
#include <Python.h>

#ifndef SBOPS_BUILD_TARGET
#define SBOPS_BUILD_TARGET "cpu"
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {
      PyModuleDef_HEAD_INIT, "_C",
      "sbops native library: op schemas and compiled kernels, registered with torch.library on import.",
      -1, nullptr};
  PyObject* m = PyModule_Create(&def);
  if (m != nullptr) {
    PyModule_AddStringConstant(m, "build_target", SBOPS_BUILD_TARGET);
  }
  return m;
}
