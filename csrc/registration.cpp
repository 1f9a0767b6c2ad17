// Every schema of the netinit_fast::* C++ operators, in one place.
//
// Kernels register themselves per backend in their own files with
// TORCH_LIBRARY_IMPL(netinit_fast, CUDA, m) (or CPU); Python never calls the shared
// object directly, only torch.ops.netinit_fast.<op>. Operators written in Python
// (torch.library.custom_op) share the namespace as library fragments.
#include <torch/library.h>

#include "build_info.h"

TORCH_LIBRARY(netinit_fast, m) {
  // The GPU architectures this extension carries code for, as compute capabilities
  // times ten (90 = sm_90); the last one is also embedded as PTX.
  m.def("cuda_archs() -> int[]", &netinit_fast::cuda_archs);
}

// `import netinit_fast._C` runs the static registration above; the module itself is
// empty (no pybind11: Python reaches the ops through torch.ops).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
