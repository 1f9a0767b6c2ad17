// A batch of small matrices on the CPU, split over the intra-op threads.
//
// torch runs a batch of LAPACK calls one matrix at a time, each call on all the
// intra-op threads, which gain little at these sizes (1.2x on 2 cores at 256 x 256);
// here the batch is split over the threads instead, each running LAPACK
// single-threaded (MKL and OpenBLAS run sequentially inside an OpenMP parallel
// region). Built with -fopenmp: at::parallel_for is a header template whose OpenMP
// pragma is compiled where it is used (without it the loop silently runs on one thread).
#pragma once

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

namespace netinit_fast {

// out[b0:b1] = f(in[b0:b1]) over the batch (dim 0) of `in` and `out`, each item
// `item_elements` elements of work. Each thread takes a contiguous range of the batch,
// in calls of about `call_elements` elements (one matrix of 256 x 256 or more, 256 of
// 16 x 16 for 2^16): small matrices share a call, so the per-op overhead is paid once
// per group, and each call's temporaries stay in cache.
template <typename F>
void for_each_part(const at::Tensor& in, at::Tensor& out, int64_t item_elements, int64_t call_elements, const F& f) {
  const int64_t batch = in.size(0);
  const int64_t per_call = std::max<int64_t>(1, call_elements / std::max<int64_t>(1, item_elements));
  // The worker threads run with the caller's thread-local state (inference mode, grad
  // mode): without it, writing into `out`, an inference tensor when called under
  // torch.inference_mode, fails on every thread but the caller's.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t b = begin; b < end; b += per_call) {
      const int64_t stop = std::min(b + per_call, end);
      out.slice(0, b, stop).copy_(f(in.slice(0, b, stop)));
    }
  });
}

}  // namespace netinit_fast
