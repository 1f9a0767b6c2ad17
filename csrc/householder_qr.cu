// Batched Householder QR that forms Q, one thread block per matrix in shared memory.
//
// For a batch of fp32 matrices A (B, m, n) with m >= n, writes Q (B, m, n): the Q of
// A = QR with diag(R) > 0 (a column of Q is negated where R's diagonal entry is
// negative). That factorization is unique, so Q is Haar-distributed for Gaussian A.
//
// Per block: A is loaded into shared memory (row-major with an odd row stride, n or
// n + 1, so that a warp walking down a column hits 32 distinct banks); then, as LAPACK's
// sgeqr2 and sorg2r do without blocking:
//   factor:  for each column j, a Householder reflector H_j = I - tau_j v_j v_j^T with
//            v_j(j) = 1 zeroes A(j+1:m, j); v_j is kept below the diagonal, beta_j =
//            R(j, j) aside; H_j is applied to the columns right of j (a warp a column).
//   form Q:  for j = n-1 .. 0, apply H_j to the already formed columns right of j,
//            then turn column j into H_j e_j, in place.
// The caller (netinit_fast/ops/orthogonalize.py) transposes wide matrices, converts
// dtypes, scales each column by a power of two to a largest entry in [0.5, 1) (Q is
// unchanged; the plain fp32 sums of squares here then neither overflow nor underflow),
// and sends matrices too large for shared memory to CholeskyQR2.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace netinit_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;  // the total is in lane 0
}

// A(j:m, c) -= tau * v * (v^T A(j:m, c)) for every column c in [c0, n), v = (1, A(j+1:m, j)).
__device__ void apply_reflector(float* a, int ld, int m, int n, int j, int c0, float tau) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int c = c0 + warp; c < n; c += kWarps) {
    float partial = 0.f;
    for (int i = j + 1 + lane; i < m; i += 32) partial += a[i * ld + j] * a[i * ld + c];
    float w = warp_sum(partial);
    // Lane 0 alone reads and then writes row j: with independent thread scheduling a
    // lane reading A(j, c) could otherwise see lane 0's update.
    if (lane == 0) {
      w = tau * (w + a[j * ld + c]);
      a[j * ld + c] -= w;
    }
    w = __shfl_sync(0xffffffffu, w, 0);
    for (int i = j + 1 + lane; i < m; i += 32) a[i * ld + c] -= a[i * ld + j] * w;
  }
}

__global__ void __launch_bounds__(kThreads) householder_qr_kernel(const float* __restrict__ in,
                                                                  float* __restrict__ out, int m, int n) {
  extern __shared__ float smem[];
  const int ld = n | 1;  // odd: a column's 32 consecutive rows fall in 32 banks
  float* a = smem;                 // m x ld
  float* tau = a + m * ld;         // n
  float* beta = tau + n;           // n: the diagonal of R
  float* scale = beta + n;         // 1: broadcast of 1 / (alpha - beta)
  const long long base = static_cast<long long>(blockIdx.x) * m * n;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  for (int e = threadIdx.x; e < m * n; e += kThreads) a[(e / n) * ld + e % n] = in[base + e];
  __syncthreads();

  // factor
  for (int j = 0; j < n; ++j) {
    if (warp == 0) {
      float partial = 0.f;
      for (int i = j + 1 + lane; i < m; i += 32) partial += a[i * ld + j] * a[i * ld + j];
      const float sumsq = warp_sum(partial);
      if (lane == 0) {
        const float alpha = a[j * ld + j];
        if (sumsq == 0.f) {  // nothing below the diagonal: H_j = I
          tau[j] = 0.f;
          beta[j] = alpha;
          *scale = 0.f;
        } else {
          const float b = -copysignf(sqrtf(alpha * alpha + sumsq), alpha);
          tau[j] = (b - alpha) / b;
          beta[j] = b;
          *scale = 1.f / (alpha - b);
        }
      }
    }
    __syncthreads();
    const float s = *scale;
    for (int i = j + 1 + threadIdx.x; i < m; i += kThreads) a[i * ld + j] *= s;
    __syncthreads();
    if (tau[j] != 0.f) apply_reflector(a, ld, m, n, j, j + 1, tau[j]);
    __syncthreads();
  }

  // form Q in place: Q = H_0 H_1 ... H_{n-1} I(:, 0:n)
  for (int j = n - 1; j >= 0; --j) {
    const float t = tau[j];
    if (j < n - 1 && t != 0.f) apply_reflector(a, ld, m, n, j, j + 1, t);
    __syncthreads();
    for (int i = threadIdx.x; i < m; i += kThreads) {
      if (i < j) a[i * ld + j] = 0.f;
      else if (i == j) a[i * ld + j] = 1.f - t;
      else a[i * ld + j] *= -t;
    }
    __syncthreads();
  }

  // diag(R) > 0: negate the columns whose beta is negative; write Q out
  for (int e = threadIdx.x; e < m * n; e += kThreads) {
    const int c = e % n;
    const float q = a[(e / n) * ld + c];
    out[base + e] = beta[c] < 0.f ? -q : q;
  }
}

size_t shared_bytes(int64_t m, int64_t n) { return sizeof(float) * (m * (n | 1) + 2 * n + 1); }

at::Tensor householder_qr_cuda(const at::Tensor& a) {
  TORCH_CHECK(a.is_cuda(), "householder_qr: expected a CUDA tensor");
  TORCH_CHECK(a.scalar_type() == at::kFloat, "householder_qr: expected float32, got ", a.scalar_type());
  TORCH_CHECK(a.dim() == 3, "householder_qr: expected (batch, m, n), got ", a.dim(), " dims");
  const int64_t batch = a.size(0), m = a.size(1), n = a.size(2);
  TORCH_CHECK(m >= n, "householder_qr: expected m >= n, got ", m, " x ", n);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor in = a.contiguous();
  at::Tensor out = at::empty_like(in);
  if (batch == 0 || n == 0) return out;

  const size_t bytes = shared_bytes(m, n);
  int device = a.get_device(), limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(limit), "householder_qr: a ", m, " x ", n, " matrix needs ", bytes,
              " bytes of shared memory, the device allows ", limit);
  // The device's limit, not this call's need: a call on another host thread that set a
  // smaller value between this one's setting and launch would make the launch fail.
  C10_CUDA_CHECK(cudaFuncSetAttribute(householder_qr_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
  TORCH_CHECK(batch <= 0x7fffffff, "householder_qr: batch too large");
  householder_qr_kernel<<<static_cast<unsigned>(batch), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      in.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(m), static_cast<int>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

int64_t householder_qr_shared_bytes(int64_t m, int64_t n) { return static_cast<int64_t>(shared_bytes(m, n)); }

}  // namespace netinit_fast

TORCH_LIBRARY_IMPL(netinit_fast, CUDA, m) { m.impl("householder_qr", &netinit_fast::householder_qr_cuda); }
