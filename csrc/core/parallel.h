// parallel_for and parallel_rows over the engine's own thread pool, with the
// thread count set by the caller.
//
// Why not OpenMP: every op forked a team that split its work statically, one
// chunk per thread, and waited at the join for the slowest; a thread that the
// OS descheduled (another busy process on the machine) stalled the whole
// request, and OpenMP's spinning waiters took the core it needed. Here the
// workers are created once per process and shared by every calling thread;
// the caller works too; work is handed out in more chunks than threads, so
// the threads that run take the share of one that does not, and nothing
// waits for a thread that holds no chunk; waiting threads spin for tens of
// microseconds and then sleep; and after a call waited long for a worker that
// the OS descheduled in its chunk (another process keeps a core busy), calls
// run on their callers alone for a while (core/thread_pool.h).
//
// The engine is called from several Python threads at once (each with the GIL
// released), so the thread count is not global: it is a thread-local setting of
// the calling thread, set for the length of a call with ScopedOpThreads. The
// pool runs one call at a time; a call that finds it busy runs on its calling
// thread alone, so concurrent calls never put more threads on the cores than
// one call asked for plus the callers themselves. Nested calls (from inside a
// parallel region) run serially on the calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>

#include "core/thread_pool.h"

namespace pali {

namespace detail {
inline thread_local int op_threads_setting = 0;
// When set, read at every op instead of op_threads_setting: another thread may change it while this one computes.
inline thread_local const std::atomic<int>* op_threads_source = nullptr;
}  // namespace detail

// Threads that ops called from this thread use; 0 (the default) means
// default_op_threads() (OMP_NUM_THREADS if set, else the cores this process may run on).
inline int op_threads() {
  const int n = detail::op_threads_source ? detail::op_threads_source->load(std::memory_order_relaxed)
                                          : detail::op_threads_setting;
  return n > 0 ? n : default_op_threads();
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

// For the scope, this thread's ops take their thread count from `source` at
// every op (the engine's scheduler lowers it while its other thread computes).
class ScopedOpThreadsSource {
 public:
  explicit ScopedOpThreadsSource(const std::atomic<int>& source) : previous_(detail::op_threads_source) {
    detail::op_threads_source = &source;
  }
  ~ScopedOpThreadsSource() { detail::op_threads_source = previous_; }
  ScopedOpThreadsSource(const ScopedOpThreadsSource&) = delete;
  ScopedOpThreadsSource& operator=(const ScopedOpThreadsSource&) = delete;

 private:
  const std::atomic<int>* previous_;
};

inline bool in_parallel_region() { return ThreadPool::in_parallel_region(); }

// Chunks per thread of a parallel_for: enough that the others take over the
// share of a thread the OS descheduled, few enough that claiming stays cheap.
constexpr int64_t kChunksPerThread = 4;

// Calls fn(chunk_begin, chunk_end) over [begin, end) split into contiguous
// chunks of `grain` items or more (the same number for every thread, at most
// kChunksPerThread, sizes differing by at most one item), each chunk once, on
// op_threads() threads at most, the caller among them. fn must not throw.
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
  // Equal shares: a thread with one chunk more than the others would keep them waiting.
  const int64_t chunks = threads * std::min<int64_t>(kChunksPerThread, max_chunks / threads);
  auto run_chunk = [&](int64_t c) {
    const int64_t b = begin + n * c / chunks;
    const int64_t e = begin + n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  };
  if (!ThreadPool::instance().run_chunks(threads, chunks, run_chunk)) fn(begin, end);
}

// Below this many rows per thread, a row-split op runs on fewer threads.
constexpr int64_t kMinRowsPerThread = 16;

// A model layer whose weights take at most this many bytes runs as
// parallel_rows passes, each thread reading all of them (cheap while they fit
// a core's L2); larger layers run op by op, each op splitting its own work.
constexpr size_t kOnePassMaxLayerBytes = size_t{1} << 20;

// Calls fn(begin, end) over the rows [0, n) in chunks of about min_rows rows
// or more, claimed by the threads as parallel_for's are. Why: a transformer
// layer is a dozen ops, and one parallel call per op, each splitting its own
// work, costs more than the work of a small model; a model instead runs a
// layer as a few such passes (ops called inside run on their calling thread),
// each thread taking the same rows from pass to pass while all run (so they
// stay in its core's caches), and passes meet only where they must (before
// attention reads every row's keys and values). A pass waits only for chunks
// in progress, never for a thread that has not come: the others take its rows.
template <typename F>
void parallel_rows(int64_t n, int64_t min_rows, F&& fn) {
  parallel_for(0, n, std::max<int64_t>(min_rows, 1), std::forward<F>(fn));
}

// min_rows for parallel_rows passes over `rows` rows of layers of at most
// `layer_bytes` of weights each: chunks of rows when they fit
// kOnePassMaxLayerBytes, else all rows on the caller, whose ops then split
// their own work.
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
