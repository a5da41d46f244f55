// Releasing and retaking the GIL around engine work, safely at interpreter exit.
//
// While Python finalizes, a thread that asks for the GIL is ended by CPython
// with pthread_exit, which unwinds the thread's stack with a "forced unwind"
// exception. Unwinding through a noexcept frame (any destructor, such as
// pybind11's gil_scoped_release) or swallowing it in catch (...) calls
// std::terminate and aborts the process. So here:
//  * the GIL is retaken in a plain function, not in a destructor;
//  * a thread that would retake it once finalization has begun never does: it
//    waits forever (the process is ending; nobody is left to get its result);
//  * callbacks into Python let the forced unwind pass through (rethrow it).
#pragma once

#include <Python.h>
#include <cxxabi.h>
#include <unistd.h>

#include <exception>
#include <type_traits>
#include <utility>

namespace pali::bindings {

inline bool python_is_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

[[noreturn]] inline void wait_for_process_exit() {
  for (;;) ::pause();
}

inline void retake_gil(PyThreadState* state) {
  if (python_is_finalizing()) wait_for_process_exit();
  PyEval_RestoreThread(state);
}

// Runs work() with the GIL released and returns its result; exceptions pass
// through with the GIL held again.
template <typename Work>
auto without_gil(Work&& work) -> decltype(work()) {
  PyThreadState* state = PyEval_SaveThread();
  try {
    if constexpr (std::is_void_v<decltype(work())>) {
      work();
      retake_gil(state);
    } else {
      auto result = work();
      retake_gil(state);
      return result;
    }
  } catch (abi::__forced_unwind&) {
    throw;  // the thread is being ended while it waits for the GIL: it holds none
  } catch (...) {
    retake_gil(state);
    throw;
  }
}

// Calls fn() holding the GIL, from a thread that released it with
// without_gil(). Returns false without calling fn when Python is finalizing
// (the caller should stop its work). Exceptions of fn propagate.
template <typename Fn>
bool with_gil(Fn&& fn) {
  if (python_is_finalizing()) return false;
  PyGILState_STATE gil = PyGILState_Ensure();
  try {
    fn();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    PyGILState_Release(gil);
    throw;
  }
  PyGILState_Release(gil);
  return true;
}

}  // namespace pali::bindings
