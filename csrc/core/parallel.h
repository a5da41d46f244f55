// parallel_for over OpenMP, with the thread count set by the caller.
//
// The engine is called from several Python threads at once (each with the GIL
// released), so the thread count is not global: it is a thread-local setting of
// the calling thread, set for the length of a call with ScopedOpThreads. Each
// calling thread gets its own OpenMP team. Nested calls (from inside a parallel
// region) run serially on the calling worker.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pali {

namespace detail {
inline thread_local int op_threads_setting = 0;
}  // namespace detail

// Threads that ops called from this thread use; 0 (the default) means OpenMP's
// default (omp_get_max_threads(): OMP_NUM_THREADS or the number of cores).
inline int op_threads() {
  int n = detail::op_threads_setting;
#ifdef _OPENMP
  if (n <= 0) n = omp_get_max_threads();
#else
  n = 1;
#endif
  return std::max(n, 1);
}
inline void set_op_threads(int n) { detail::op_threads_setting = n < 0 ? 0 : n; }

// Sets this thread's op thread count for the scope, restoring the previous one after.
class ScopedOpThreads {
 public:
  explicit ScopedOpThreads(int n) : previous_(detail::op_threads_setting) { set_op_threads(n); }
  ~ScopedOpThreads() { detail::op_threads_setting = previous_; }
  ScopedOpThreads(const ScopedOpThreads&) = delete;
  ScopedOpThreads& operator=(const ScopedOpThreads&) = delete;

 private:
  int previous_;
};

inline bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// Calls fn(chunk_begin, chunk_end) over [begin, end) split into at most
// op_threads() contiguous chunks of at least `grain` items each (one chunk per
// thread, sizes differing by at most one grain-rounded item). fn must not throw.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(op_threads(), max_chunks));
  if (threads <= 1 || in_parallel_region()) {
    fn(begin, end);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t b = begin + n * t / nt;
    const int64_t e = begin + n * (t + 1) / nt;
    if (b < e) fn(b, e);
  }
#else
  fn(begin, end);
#endif
}

// Below this many rows per thread, a row-split op runs on fewer threads.
constexpr int64_t kMinRowsPerThread = 16;

// A model layer whose weights take at most this many bytes runs as one
// parallel_rows pass, each thread reading all of them (cheap while they fit a
// core's L2); larger layers run op by op, each op splitting its own work.
constexpr size_t kOnePassMaxLayerBytes = size_t{1} << 20;

// Runs fn(begin, end, sync) on every thread of one team, each with its own
// contiguous chunk of rows [0, n) (at least min_rows rows each); sync() is a
// barrier of the team. Why: a transformer block is a dozen ops, and one fork
// and join per op, with each op's output split differently from the next op's
// input, costs more than the work of a small model; here a thread keeps its
// rows in its own core's caches from op to op and meets the others only where
// it must (before attention reads every row's keys and values). Ops called
// inside run on their calling thread. Every thread must call sync() equally
// often, and fn must not throw (a thread that left would leave the others
// waiting at the barrier).
template <typename F>
void parallel_rows(int64_t n, int64_t min_rows, F&& fn) {
  const int64_t most = n / std::max<int64_t>(min_rows, 1);
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(op_threads(), most)));
  const auto no_sync = [] {};
  if (threads <= 1 || in_parallel_region()) {
    fn(int64_t{0}, n, no_sync);
    return;
  }
#ifdef _OPENMP
  const auto barrier = [] {
#pragma omp barrier
  };
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    fn(n * t / nt, n * (t + 1) / nt, barrier);
  }
#endif
}

// min_rows for a parallel_rows pass over `rows` rows of layers of at most
// `layer_bytes` of weights each: a team when they fit kOnePassMaxLayerBytes,
// else one thread (the caller), whose ops then split their own work.
inline int64_t layer_pass_min_rows(size_t layer_bytes, int64_t rows) {
  return layer_bytes <= kOnePassMaxLayerBytes ? kMinRowsPerThread : std::max<int64_t>(rows, 1);
}

// Like parallel_for, but chunk boundaries fall on multiples of `align` items
// from `begin` (e.g. whole weight panels), the last chunk taking the remainder.
template <typename F>
void parallel_for_aligned(int64_t begin, int64_t end, int64_t align, int64_t grain, F&& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  align = std::max<int64_t>(align, 1);
  const int64_t units = (n + align - 1) / align;
  parallel_for(0, units, std::max<int64_t>(1, (grain + align - 1) / align),
               [&](int64_t ub, int64_t ue) {
                 fn(begin + ub * align, std::min(end, begin + ue * align));
               });
}

}  // namespace pali
