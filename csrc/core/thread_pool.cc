// The engine's thread pool and its spin-then-sleep waits (core/thread_pool.h).
#include "core/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace pali {
namespace {

// How long an idle worker spins for the next call before it sleeps: longer
// than the gaps between the ops of a decode step (a few to tens of
// microseconds), so that within a request the workers are awake for every op
// and a call costs no system call; short enough that between requests, or
// while a descheduled caller waits for its core, a worker gives its core
// back within a small fraction of a scheduler time slice.
constexpr int64_t kIdleSpinNs = 50000;

// How long a caller whose chunks are done spins for the workers still in
// the call: they finish their last chunk within microseconds unless the OS
// has descheduled one, and then the caller's core is better given to it.
constexpr int64_t kJoinSpinNs = 20000;

// A wait for the workers longer than this, and longer than a few of the
// caller's own chunks, means the OS descheduled a worker in its chunk (a
// time slice is a millisecond or more): calls then run on their callers
// alone for kAloneFactor times the wait, at most kMostAloneNs.
constexpr int64_t kStallNs = 500000;
constexpr int64_t kStallChunks = 4;
constexpr int64_t kAloneFactor = 20;
constexpr int64_t kMostAloneNs = 100000000;

thread_local bool in_region = false;

struct RegionFlag {
  RegionFlag() { in_region = true; }
  ~RegionFlag() { in_region = false; }
};

int count_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::atomic<ThreadPool*> process_pool{nullptr};
std::mutex process_pool_mutex;

// ThreadPool::state_: generation << 32 | wanted workers << 16 | joined workers << 1 | closed.
// Worker i joins only calls that want more than i workers, so joined <= wanted.
constexpr uint64_t kClosed = 1;
constexpr int kCountBits = 15;
constexpr uint64_t kCountMask = (uint64_t{1} << kCountBits) - 1;
inline uint32_t generation_of(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
inline int wanted_of(uint64_t state) { return static_cast<int>((state >> 16) & kCountMask); }
inline int joined_of(uint64_t state) { return static_cast<int>((state >> 1) & kCountMask); }

}  // namespace

int default_op_threads() {
  static const int threads = count_threads();
  return threads;
}

int64_t WaitWord::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void WaitWord::cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

template <typename Done>
bool WaitWord::spin_until(Done done, int64_t spin_ns) {
  if (done()) return true;
  const int64_t deadline = now_ns() + spin_ns;
  for (int i = 1;; ++i) {
    cpu_relax();
    if (done()) return true;
    if (i % 16 == 0 && now_ns() > deadline) return false;
  }
}

#if defined(__linux__)
void WaitWord::sleep_while(uint32_t seen) {
  // Returns at once when the word is no longer `seen`; spurious returns are re-checked by the caller.
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&value), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
}
void WaitWord::wake_all() {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&value), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}
#else
void WaitWord::sleep_while(uint32_t seen) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return value.load() != seen; });
}
void WaitWord::wake_all() {
  { std::lock_guard<std::mutex> lock(mutex_); }
  changed_.notify_all();
}
#endif

ThreadPool& ThreadPool::instance() {
  if (ThreadPool* pool = process_pool.load(std::memory_order_acquire)) return *pool;
  std::lock_guard<std::mutex> lock(process_pool_mutex);
  if (ThreadPool* pool = process_pool.load(std::memory_order_relaxed)) return *pool;
  static const bool fork_handler = [] {
    // The parent's pool (its workers, maybe a call in flight) is left behind in a child.
    pthread_atfork(nullptr, nullptr, [] { process_pool.store(nullptr); });
    return true;
  }();
  (void)fork_handler;
  // Never destroyed: workers sleep in it until the process ends.
  auto* pool = new ThreadPool();
  process_pool.store(pool, std::memory_order_release);
  return *pool;
}

bool ThreadPool::in_parallel_region() { return in_region; }

void ThreadPool::ensure_workers(int count) {
  for (; workers_started_ < count; ++workers_started_) {
    const int index = workers_started_;
    std::thread([this, index] { worker_loop(index); }).detach();
  }
}

bool ThreadPool::run(Call call, void* fn, int64_t chunks, int wanted_workers) {
  if (const int64_t until = alone_until_ns_.load(std::memory_order_relaxed)) {
    if (WaitWord::now_ns() < until) return false;
    alone_until_ns_.store(0, std::memory_order_relaxed);
  }
  if (busy_.exchange(true, std::memory_order_acquire)) return false;
  wanted_workers = std::min(wanted_workers, kMaxThreads - 1);
  ensure_workers(wanted_workers);
  call_ = call;
  fn_ = fn;
  threads_ = wanted_workers + 1;
  for (int t = 0; t < threads_; ++t) {
    shares_[t].next.store(chunks * t / threads_, std::memory_order_relaxed);
    shares_[t].end = chunks * (t + 1) / threads_;
  }
  workers_done_.value.store(0, std::memory_order_relaxed);
  const uint32_t generation = generation_of(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(uint64_t{generation} << 32 | static_cast<uint64_t>(wanted_workers) << 16);
  posted_.value.store(generation);
  posted_.wake();
  const int64_t start = WaitWord::now_ns();
  int64_t caller_chunks = 0;
  {
    RegionFlag region;
    caller_chunks = work_on_call(0);
  }
  const int64_t caller_ns = WaitWord::now_ns() - start;
  // Every chunk is claimed: close the call to latecomers, then wait for those
  // that joined, after which none touches it again.
  const uint32_t joined = static_cast<uint32_t>(joined_of(state_.fetch_or(kClosed)));
  wait_for_workers(joined, caller_chunks > 0 ? caller_ns / caller_chunks : caller_ns);
  busy_.store(false, std::memory_order_release);
  return true;
}

void ThreadPool::wait_for_workers(uint32_t joined, int64_t caller_chunk_ns) {
  const auto done = [&] { return workers_done_.value.load(std::memory_order_acquire) == joined; };
  if (WaitWord::spin_until(done, kJoinSpinNs)) return;
  const int64_t asleep = WaitWord::now_ns();
  workers_done_.sleep_until(done);
  const int64_t now = WaitWord::now_ns();
  const int64_t waited = now - asleep + kJoinSpinNs;
  if (waited > std::max(kStallNs, kStallChunks * caller_chunk_ns))
    alone_until_ns_.store(now + std::min(kMostAloneNs, kAloneFactor * waited), std::memory_order_relaxed);
}

// Runs chunks of the call until none is left; returns how many.
int64_t ThreadPool::work_on_call(int self) {
  int64_t done = 0;
  for (int k = 0; k < threads_; ++k) {
    Share& share = shares_[(self + k) % threads_];
    if (share.next.load(std::memory_order_relaxed) >= share.end) continue;
    for (;;) {
      const int64_t i = share.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= share.end) break;
      call_(fn_, i);
      ++done;
    }
  }
  return done;
}

bool ThreadPool::try_join(uint32_t generation, int index) {
  uint64_t state = state_.load();
  while (generation_of(state) == generation && !(state & kClosed) && index < wanted_of(state)) {
    if (state_.compare_exchange_weak(state, state + 2)) return true;
  }
  return false;
}

// Worker `index` is thread index + 1 of every call that wants that many.
void ThreadPool::worker_loop(int index) {
  in_region = true;  // ops a worker runs never fan out again
  uint32_t seen = 0;
  for (;;) {
    posted_.wait_until([&] { return posted_.value.load(std::memory_order_acquire) != seen; }, kIdleSpinNs);
    seen = posted_.value.load(std::memory_order_acquire);
    if (!try_join(seen, index)) continue;
    work_on_call(index + 1);
    // The last access to the call: its caller may return as soon as it counts this.
    workers_done_.value.fetch_add(1, std::memory_order_acq_rel);
    workers_done_.wake();
  }
}

}  // namespace pali
