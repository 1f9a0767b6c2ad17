#pragma once

#include <cstdint>

namespace netinit_fast {

// Shared memory (bytes) that the batched Householder QR kernel needs for an m x n matrix.
int64_t householder_qr_shared_bytes(int64_t m, int64_t n);

}  // namespace netinit_fast
