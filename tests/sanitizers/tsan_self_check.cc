// Proves the ThreadSanitizer setup of `.ci/sanitized-tests thread` before it
// is trusted with the engine: loaded into python the same way as the engine's
// module (clang-instrumented, GCC's libtsan preloaded), a race between two
// std::threads is reported, and data handed over through an atomic's release
// and acquire is not, even when the reader slept on a futex in between (the
// engine's thread pool hands work over that way).
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <thread>

namespace {
int thread_counter = 0;
int handed_over = 0;
std::atomic<uint32_t> ready{0};
}  // namespace

// Two threads increment one int: a race.
extern "C" int race_between_threads() {
  std::thread a([] { ++thread_counter; }), b([] { ++thread_counter; });
  a.join();
  b.join();
  return thread_counter;
}

// One thread writes an int and then sets a flag (release); the other waits
// for the flag (acquire; asleep on a futex until it changes) and reads the
// int: ordered, so no race.
extern "C" int handover_through_an_atomic() {
  std::thread reader([] {
    while (ready.load(std::memory_order_acquire) == 0)
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&ready), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
    handed_over += 1;
  });
  std::thread writer([] {
    handed_over = 41;
    ready.store(1, std::memory_order_release);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&ready), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  });
  writer.join();
  reader.join();
  return handed_over;
}
