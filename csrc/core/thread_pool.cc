// The engine's thread pool and its spin-then-sleep waits (core/thread_pool.h).
#include "core/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace pali {
namespace {

// How long a waiting thread spins before it sleeps: long enough to cover the
// gap between two ops of one call (so a worker is awake for the next), short
// enough that a worker whose call ended, or one waiting for a descheduled
// thread, gives its core back at once.
constexpr auto kSpinTime = std::chrono::microseconds(5);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until done() or kSpinTime has passed; returns done().
template <typename Done>
bool spin_until(Done done) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kSpinTime) return done();
  }
}

// Spins, then sleeps on `woken` until done(). A waker makes done() true and
// then calls wake_sleepers with the same objects; the sequentially consistent
// sleepers count makes sure that either the waker sees a sleeper or the
// sleeper sees done().
template <typename Done>
void spin_then_sleep(Done done, std::mutex& mutex, std::condition_variable& woken, std::atomic<int>& sleepers) {
  if (spin_until(done)) return;
  std::unique_lock<std::mutex> lock(mutex);
  sleepers.fetch_add(1);
  woken.wait(lock, done);
  sleepers.fetch_sub(1);
}

void wake_sleepers(std::mutex& mutex, std::condition_variable& woken, std::atomic<int>& sleepers) {
  if (sleepers.load() == 0) return;
  { std::lock_guard<std::mutex> lock(mutex); }
  woken.notify_all();
}

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

}  // namespace

int default_op_threads() {
  static const int threads = count_threads();
  return threads;
}

void SpinSleepBarrier::wait() {
  const uint32_t round = round_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == parties_ - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    round_.store(round + 1);
    wake_sleepers(mutex_, woken_, sleepers_);
    return;
  }
  spin_then_sleep([&] { return round_.load() != round; }, mutex_, woken_, sleepers_);
}

ThreadPool& ThreadPool::instance() {
  if (ThreadPool* pool = process_pool.load(std::memory_order_acquire)) return *pool;
  std::lock_guard<std::mutex> lock(process_pool_mutex);
  if (ThreadPool* pool = process_pool.load(std::memory_order_relaxed)) return *pool;
  static const bool fork_handler = [] {
    // The parent's pool (its workers, maybe a held lock) is left behind in a child.
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
  std::lock_guard<std::mutex> lock(workers_mutex_);
  for (; workers_ < count; ++workers_) {
    const int index = workers_;
    std::thread([this, index] { worker_loop(index); }).detach();
  }
}

namespace {
// ThreadPool::state_: generation << 32 | wanted workers << 16 | joined workers << 1 | closed.
// Worker i joins only calls that want more than i workers, so joined <= wanted.
constexpr uint64_t kClosed = 1;
constexpr int kCountBits = 15;
constexpr uint64_t kCountMask = (uint64_t{1} << kCountBits) - 1;
inline uint64_t generation_of(uint64_t state) { return state >> 32; }
inline int wanted_of(uint64_t state) { return static_cast<int>((state >> 16) & kCountMask); }
inline int joined_of(uint64_t state) { return static_cast<int>((state >> 1) & kCountMask); }
}  // namespace

bool ThreadPool::run(Call call, void* fn, int64_t count, int wanted_workers, SpinSleepBarrier* barrier) {
  std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
  if (!busy.owns_lock()) return false;
  wanted_workers = std::min(wanted_workers, kMaxThreads - 1);
  ensure_workers(wanted_workers);
  call_ = call;
  fn_ = fn;
  threads_ = wanted_workers + 1;
  barrier_ = barrier;
  for (int t = 0; t < threads_; ++t) {
    shares_[t].next.store(count * t / threads_, std::memory_order_relaxed);
    shares_[t].end = count * (t + 1) / threads_;
  }
  workers_done_.store(0, std::memory_order_relaxed);
  const uint64_t generation = generation_of(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(generation << 32 | static_cast<uint64_t>(wanted_workers) << 16);
  wake_sleepers(idle_mutex_, work_posted_, idle_sleepers_);
  {
    RegionFlag region;
    work_on_job(0);
  }
  // Every chunk (or member) is claimed: close the call to latecomers, then
  // wait for those that joined, after which none touches it again.
  const int joined = joined_of(state_.fetch_or(kClosed));
  spin_then_sleep([&] { return workers_done_.load() == joined; }, caller_mutex_, caller_woken_, caller_sleepers_);
  return true;
}

void ThreadPool::work_on_job(int self) {
  for (int k = 0; k < threads_; ++k) {
    Share& share = shares_[(self + k) % threads_];
    for (;;) {
      const int64_t i = share.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= share.end) break;
      call_(fn_, i, barrier_);
    }
  }
}

bool ThreadPool::try_join(uint64_t generation, int index) {
  uint64_t state = state_.load();
  while (generation_of(state) == generation && !(state & kClosed) && index < wanted_of(state)) {
    if (state_.compare_exchange_weak(state, state + 2)) return true;
  }
  return false;
}

// Worker `index` is thread index + 1 of every call that wants that many.
void ThreadPool::worker_loop(int index) {
  in_region = true;  // ops a worker runs never fan out again
  uint64_t seen = 0;
  for (;;) {
    uint64_t generation = 0;
    const auto posted = [&] {
      generation = generation_of(state_.load());
      return generation != seen;
    };
    spin_then_sleep(posted, idle_mutex_, work_posted_, idle_sleepers_);
    seen = generation;
    if (!try_join(generation, index)) continue;
    work_on_job(index + 1);
    // The last access to the call: its caller may return as soon as it counts this.
    workers_done_.fetch_add(1);
    wake_sleepers(caller_mutex_, caller_woken_, caller_sleepers_);
  }
}

}  // namespace pali
