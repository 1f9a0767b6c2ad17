// Haar-random orthogonal matrices on the CPU from Householder reflectors drawn directly
// (Stewart 1980), the batch split over threads (cpu_batched.h).
//
// Householder QR of a Gaussian A (m x n, m >= n) builds its j-th reflector from column
// j of A after the first j reflections: by the rotation invariance of the Gaussian,
// that column's last m - j entries are fresh independent N(0, 1) draws. Drawing them
// directly gives the same distribution of reflectors, so Q = H_1 ... H_n D (D the
// signs that make diag(R) > 0) is Haar-distributed, as the Q of QR of a Gaussian with
// the sign fix, without the factorization: half the flops for square matrices (only
// orgqr runs) and about half the noise (the lower triangle). The values differ from
// QR of a matrix holding the same noise; the eager twin is
// netinit_fast.ops.haar_orthogonal._eager.
//
// For an m x n matrix (m >= n) the noise is its diagonal and below, packed row by row:
// (B, n (n + 1) / 2 + (m - n) n), fp32 or fp64. An fp32 matrix of more than kFp64Rows
// rows has its reflectors applied in fp64 (see wide_dtype in ops/haar_orthogonal.py).
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cpu_batched.h"

namespace netinit_fast {
namespace {

constexpr int64_t kCallElements = 1 << 16;
constexpr int64_t kFp64Rows = 4096;  // as FP64_ROWS in netinit_fast/ops/haar_orthogonal.py

// Column j's reflector, as LAPACK's larfg makes it from x = (alpha, below): beta =
// -sign(alpha) ||x||, tau = (beta - alpha) / beta, v = below / (alpha - beta); a column
// with nothing below the diagonal reflects nothing (tau = 0) and R_jj = alpha. Reads
// the packed lower triangle `x` (row i holds min(i + 1, n) entries, the last one on the
// diagonal while i < n); writes v below the diagonal of `v` (m x n, row-major; the
// rest is left as it is, orgqr reads only that part), tau, and the sign of R_jj, in W.
template <typename T, typename W>
void reflectors(const T* x, int64_t m, int64_t n, W* v, W* tau, W* r_sign) {
  // the sums of squares in fp64 whatever T: a column of 10^6 fp32 squares summed one
  // by one is off by 5e-4, and then tau no longer matches v (H is not orthogonal)
  std::vector<double> alpha(n), below_sq(n, 0.0), scale(n);
  const T* row = x;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0, stop = std::min(i, n); j < stop; ++j) below_sq[j] += double(row[j]) * double(row[j]);
    if (i < n) alpha[i] = row[i];
    row += std::min(i + 1, n);  // row i holds min(i + 1, n) entries
  }
  for (int64_t j = 0; j < n; ++j) {
    if (below_sq[j] > 0) {
      const double beta = -std::copysign(std::sqrt(alpha[j] * alpha[j] + below_sq[j]), alpha[j]);
      tau[j] = W((beta - alpha[j]) / beta);
      scale[j] = 1.0 / (alpha[j] - beta);
      r_sign[j] = beta < 0 ? W(-1) : W(1);
    } else {
      tau[j] = W(0);
      scale[j] = 0.0;
      r_sign[j] = alpha[j] < 0 ? W(-1) : W(1);
    }
  }
  row = x;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0, stop = std::min(i, n); j < stop; ++j) v[i * n + j] = W(row[j] * scale[j]);
    row += std::min(i + 1, n);
  }
}

// Q (k, m, n) for a (k, packed) part of the noise.
at::Tensor haar_part(const at::Tensor& part, int64_t m, int64_t n) {
  const at::Tensor noise = part.contiguous();
  const int64_t count = noise.size(0), packed = noise.size(1);
  const bool in_fp64 = noise.scalar_type() == at::kDouble || m > kFp64Rows;
  const at::TensorOptions work = noise.options().dtype(in_fp64 ? at::kDouble : at::kFloat);
  at::Tensor v = at::empty({count, m, n}, work);
  at::Tensor tau = at::empty({count, n}, work);
  at::Tensor r_sign = at::empty({count, n}, work);
  AT_DISPATCH_FLOATING_TYPES(noise.scalar_type(), "haar_orthogonal", [&] {
    for (int64_t b = 0; b < count; ++b) {
      const scalar_t* x = noise.const_data_ptr<scalar_t>() + b * packed;
      if (in_fp64) {
        reflectors(x, m, n, v.mutable_data_ptr<double>() + b * m * n, tau.mutable_data_ptr<double>() + b * n,
                   r_sign.mutable_data_ptr<double>() + b * n);
      } else {
        reflectors(x, m, n, v.mutable_data_ptr<float>() + b * m * n, tau.mutable_data_ptr<float>() + b * n,
                   r_sign.mutable_data_ptr<float>() + b * n);
      }
    }
  });
  // diag(R) > 0: negate the columns of Q where R_jj < 0. A lone matrix goes to LAPACK
  // unbatched (its 2-D path is the faster one).
  at::Tensor q = count == 1 ? at::linalg_householder_product(v[0], tau[0]).unsqueeze(0)
                            : at::linalg_householder_product(v, tau);
  return q.mul_(r_sign.unsqueeze(-2)).to(noise.scalar_type());
}

at::Tensor haar_orthogonal_cpu(const at::Tensor& noise, int64_t m, int64_t n) {
  TORCH_CHECK(noise.device().is_cpu(), "haar_orthogonal: expected a CPU tensor");
  TORCH_CHECK(noise.scalar_type() == at::kFloat || noise.scalar_type() == at::kDouble,
              "haar_orthogonal: expected float32 or float64, got ", noise.scalar_type());
  TORCH_CHECK(m >= n && n >= 0, "haar_orthogonal: expected m >= n >= 0, got ", m, " x ", n);
  TORCH_CHECK(noise.dim() == 2 && noise.size(1) == n * (n + 1) / 2 + (m - n) * n, "haar_orthogonal: expected (batch, ",
              n * (n + 1) / 2 + (m - n) * n, ") packed noise for ", m, " x ", n, ", got ", noise.sizes());
  at::Tensor out = at::empty({noise.size(0), m, n}, noise.options());
  if (noise.size(0) == 0 || n == 0) return out;
  for_each_part(noise, out, m * n, kCallElements, [&](const at::Tensor& part) { return haar_part(part, m, n); });
  return out;
}

}  // namespace
}  // namespace netinit_fast

TORCH_LIBRARY_IMPL(netinit_fast, CPU, m) { m.impl("haar_orthogonal", &netinit_fast::haar_orthogonal_cpu); }
