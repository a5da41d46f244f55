"""Keeps threads out of native libraries that release the GIL while Python shuts down.

Why: once the interpreter finalizes, CPython ends any thread that asks for the
GIL back with pthread_exit, which unwinds the thread's stack; inside a C++
extension that released the GIL (SentencePiece's tokenizer, onnxruntime's
session) the unwinding meets a noexcept frame and calls std::terminate, and the
whole process aborts at exit. The engine's own module retakes the GIL safely
(csrc/bindings/gil.h); for the others, calls go through ``native_call``: a lock
that an exit handler takes and never gives back, so that from the moment exit
begins, a daemon thread that wants to enter one of them waits instead, with
the GIL released, until the process is gone. Calls already inside finish first.
One lock per library, so that a long onnxruntime run does not hold up tokenizing.
"""

from __future__ import annotations

import atexit
import threading
from contextlib import contextmanager

_gates: dict = {}
_gates_lock = threading.Lock()


def _gate(library: str) -> threading.Lock:
    with _gates_lock:
        gate = _gates.get(library)
        if gate is None:
            gate = _gates[library] = threading.Lock()
            atexit.register(gate.acquire)
        return gate


@contextmanager
def native_call(library: str):
    """Wraps one call into a GIL-releasing C++ library; calls into the same library serialize on it."""
    with _gate(library):
        yield
