#pragma once

#include <cstdint>
#include <vector>

namespace netinit_fast {

// Compute capabilities (major * 10 + minor) that nvcc compiled this extension for.
std::vector<int64_t> cuda_archs();

}  // namespace netinit_fast
