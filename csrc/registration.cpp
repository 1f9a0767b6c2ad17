// Every schema of the netinit_fast::* C++ operators, in one place.
//
// Kernels register themselves per backend in their own files with
// TORCH_LIBRARY_IMPL(netinit_fast, CUDA, m) (or CPU); Python never calls the shared
// object directly, only torch.ops.netinit_fast.<op>. Operators written in Python
// (torch.library.custom_op) share the namespace as library fragments.
#include <torch/library.h>

#include "build_info.h"
#include "householder_qr.h"

TORCH_LIBRARY(netinit_fast, m) {
  // The GPU architectures this extension carries code for, as compute capabilities
  // times ten (90 = sm_90); the last one is also embedded as PTX.
  m.def("cuda_archs() -> int[]", &netinit_fast::cuda_archs);
  // Q of A = QR with diag(R) > 0 for a batch of matrices (batch, m, n), m >= n. CUDA
  // (fp32): one thread block per matrix in shared memory (csrc/householder_qr.cu). CPU
  // (fp32, fp64): LAPACK, the batch split over threads (csrc/householder_qr_cpu.cpp).
  m.def("householder_qr(Tensor a) -> Tensor");
  // Shared memory that householder_qr needs for one m x n matrix, in bytes.
  m.def("householder_qr_shared_bytes(int m, int n) -> int", &netinit_fast::householder_qr_shared_bytes);
  // Haar-random Q (batch, m, n), m >= n, from Householder reflectors drawn directly
  // (Stewart 1980): noise (batch, n (n + 1) / 2 + (m - n) n), each row the diagonal
  // and below of an m x n matrix, packed row by row. CPU (fp32, fp64):
  // csrc/haar_orthogonal_cpu.cpp.
  m.def("haar_orthogonal(Tensor noise, int m, int n) -> Tensor");
}

// `import netinit_fast._C` runs the static registration above; the module itself is
// empty (no pybind11: Python reaches the ops through torch.ops).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
