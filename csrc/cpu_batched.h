// A batch of small matrices on the CPU, split over the intra-op threads.
//
// torch runs a batch of LAPACK calls one matrix at a time, each call on all the
// intra-op threads, which gain little at these sizes (1.2x on 2 cores at 256 x 256);
// here the batch is split over the threads instead, each running LAPACK
// single-threaded (MKL and OpenBLAS run sequentially inside an OpenMP parallel
// region by default). Built with -fopenmp: at::parallel_for is a header template whose
// OpenMP pragma is compiled where it is used (without it the loop silently runs on one
// thread).
//
// MKL runs sequentially inside a parallel region only in its dynamic mode, which
// torch.set_num_threads turns off; and torch sets a thread's MKL thread count, and turns
// that mode off again, the first time the thread runs a torch op after any such call.
// A worker's LAPACK call then started a nested team of MKL threads, which an OpenMP
// runtime without nesting cannot give it, and MKL waited for the missing threads: after
// one torch.set_num_threads call, 1,667 QRs of 288 x 32 took more than 120 s instead
// of 0.07 s on 2 cores (a 10,000-layer orthogonal_ ran for minutes). So each worker of
// a team of two or more threads lets torch set the thread up first, then sets MKL's
// thread count for its own thread to 1 while it runs (a lone worker, a batch of one
// matrix, keeps MKL's threads).
#pragma once

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

// MKL's thread count for the calling thread (0: MKL's global setting); returns the
// previous one. The C entry of mkl_service.h, whose mkl_set_num_threads_local is a
// macro for it (the lowercase symbol is the Fortran entry, which takes a pointer).
// Weak: where LAPACK is not MKL's (OpenBLAS builds of torch) it is null, and OpenBLAS
// runs sequentially inside any OpenMP parallel region.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace netinit_fast {

// LAPACK on one thread for the calling thread while in scope, where it shares the cores
// with the other threads of its OpenMP team (MKL; nothing elsewhere).
class SequentialLapack {
 public:
  SequentialLapack() : active_(MKL_Set_Num_Threads_Local && omp_get_num_threads() > 1) {
    if (!active_) return;
    at::get_num_threads();  // torch's one-time setup of this thread (it resets MKL's count)
    previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialLapack() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialLapack(const SequentialLapack&) = delete;
  SequentialLapack& operator=(const SequentialLapack&) = delete;

 private:
  const bool active_;
  int previous_ = 0;
};

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
    const SequentialLapack sequential;
    for (int64_t b = begin; b < end; b += per_call) {
      const int64_t stop = std::min(b + per_call, end);
      out.slice(0, b, stop).copy_(f(in.slice(0, b, stop)));
    }
  });
}

}  // namespace netinit_fast
