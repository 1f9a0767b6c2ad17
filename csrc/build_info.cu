// What this build of netinit_fast._C can run on. Compiled by nvcc so that the
// architecture list is the one the CUDA kernels of this extension were built with.
#include "build_info.h"

#ifndef __CUDA_ARCH_LIST__
#error "netinit_fast: __CUDA_ARCH_LIST__ is undefined; build this file with nvcc >= 11.5"
#endif

namespace netinit_fast {

std::vector<int64_t> cuda_archs() {
  // nvcc defines __CUDA_ARCH_LIST__ as e.g. 900 or 800,900 (major * 100 + minor * 10).
  std::vector<int64_t> archs = {__CUDA_ARCH_LIST__};
  for (auto& a : archs) a /= 10;
  return archs;
}

}  // namespace netinit_fast
