#include "core/mapping_fault_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace pali::mapping_fault_guard {
namespace {

// Enough for every file of several loaded models; a slot is a few words.
constexpr int kSlots = 1024;

// A slot is live while `claimed`; the handler reads begin/end without locks
// (only atomics are safe in a signal handler), so begin is published last.
struct Slot {
  std::atomic<bool> claimed{false};
  std::atomic<uintptr_t> begin{0}, end{0};
  std::atomic<bool> faulted{false};
};
Slot slots[kSlots];

std::mutex install_mutex;
struct sigaction previous_action {};
// Set once a fault that is not ours has been handed back (see pass_on).
std::atomic<bool> passed_on{false};

void on_sigbus(int signal, siginfo_t* info, void* context);

bool installed_is_ours() {
  struct sigaction current {};
  sigaction(SIGBUS, nullptr, &current);
  return (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == &on_sigbus;
}

void install() {
  std::lock_guard<std::mutex> lock(install_mutex);
  // Someone (faulthandler, a sanitizer) may have installed theirs after ours:
  // put ours in front again, keeping theirs for the faults that are not ours.
  if (installed_is_ours()) return;
  struct sigaction action {};
  action.sa_sigaction = &on_sigbus;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGBUS, &action, &previous_action);
  passed_on.store(false);
}

// Hands a fault that is not ours back to whoever had SIGBUS before, the way
// faulthandler does: reinstall theirs and let the signal come again (a fault
// repeats when its instruction runs again; a sent signal is raised again). A
// handler that hands it back here (having saved this one as its previous) gets
// the default action on the second pass, so two handlers never ping-pong.
void pass_on(int signal, const siginfo_t* info) {
  if (passed_on.exchange(true)) {
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGBUS, &fallback, nullptr);
  } else {
    sigaction(SIGBUS, &previous_action, nullptr);
  }
  if (!info || info->si_code <= 0) raise(signal);
}

void on_sigbus(int signal, siginfo_t* info, void* /*context*/) {
  const auto address = reinterpret_cast<uintptr_t>(info ? info->si_addr : nullptr);
  if (info && info->si_code > 0) {  // raised by the kernel for an access, not sent by kill()
    for (Slot& slot : slots) {
      const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
      if (begin == 0 || address < begin || address >= slot.end.load(std::memory_order_relaxed)) continue;
      const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
      void* start = reinterpret_cast<void*>(address / page * page);
      if (mmap(start, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) break;
      slot.faulted.store(true, std::memory_order_relaxed);
      return;
    }
  }
  pass_on(signal, info);
}

}  // namespace

int watch(const void* begin, size_t size) {
  install();
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!slots[i].claimed.compare_exchange_strong(expected, true)) continue;
    slots[i].faulted.store(false);
    slots[i].end.store(reinterpret_cast<uintptr_t>(begin) + size);
    slots[i].begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return i;
  }
  return -1;
}

void unwatch(int slot) {
  if (slot < 0 || slot >= kSlots) return;
  slots[slot].begin.store(0, std::memory_order_release);
  slots[slot].end.store(0);
  slots[slot].claimed.store(false);
}

bool faulted(int slot) {
  return slot >= 0 && slot < kSlots && slots[slot].faulted.load(std::memory_order_relaxed);
}

}  // namespace pali::mapping_fault_guard
