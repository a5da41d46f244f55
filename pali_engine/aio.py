"""The engine from asyncio: ``agenerate`` and ``astream`` (also ``Engine.agenerate``, ``Engine.astream``).

Why: ``generate`` and ``stream`` are blocking C++ calls (they release the GIL
but hold their thread until the answer is done); a coroutine that called them
directly would stall its whole event loop, a web server's included. With the
native backends no thread waits at all: the request is prepared (small
in-memory images on the loop itself, anything else in ``executor``), queued on
the engine's scheduler, and the loop watches the request's file descriptor,
which the scheduler thread signals when tokens arrive or the request ends, so
that an answer costs no hop through a worker thread. Other backends (and event
loops that cannot watch a descriptor) run ``generate`` and ``stream`` in a
worker thread (the loop's default executor, or one the caller gives, which
then bounds how many run at once). Either way the coroutine awaits them:

    result = await engine.agenerate(image, "caption en")
    async with engine.astream(image, "caption en") as pieces:
        async for piece in pieces:
            print(piece, end="")

Leaving an ``astream`` early (``break``, ``aclose``, a cancelled task) stops
the generation at its next token, as closing ``stream``'s iterator does; so
does cancelling an ``agenerate`` on a native backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from concurrent.futures import Executor
from typing import Any, List, Optional

import numpy as np

_PIECE, _END, _ERROR = "piece", "end", "error"

#: Images of at most this many pixels, already in memory, are preprocessed on the event loop:
#: tens of microseconds, less than a hop to a worker thread and back. Larger ones, and paths
#: (a file to read), are prepared in the executor so that the loop is never held up for long.
INLINE_PREPARE_PIXELS = 256 * 256


def _cheap_to_prepare(image) -> bool:
    images = image if isinstance(image, (list, tuple)) else [image]
    pixels = 0
    for item in images:
        if isinstance(item, np.ndarray) and item.ndim >= 2:
            pixels += int(item.shape[0]) * int(item.shape[1])
        elif hasattr(item, "size") and hasattr(item, "mode") and isinstance(item.size, tuple):
            pixels += int(item.size[0]) * int(item.size[1])  # a PIL image
        else:
            return False
    return pixels <= INLINE_PREPARE_PIXELS


def _submitting_backend(engine):
    """The engine's backend when its calls can be queued without a thread waiting on them, else None."""
    backend = getattr(engine, "_backend", None)
    if not getattr(backend, "can_submit", False):
        return None
    # Windows' proactor loop cannot watch a descriptor: calls there take a worker thread.
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return None if proactor is not None and isinstance(asyncio.get_running_loop(), proactor) else backend


async def _prepare(backend, image, prompt, options: dict, executor: Optional[Executor]):
    if _cheap_to_prepare(image):
        return backend.prepare(image, prompt, options)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, backend.prepare, image, prompt, options)


class _Watch:
    """Calls ``on_ready`` on the loop whenever the pending request's descriptor is signalled."""

    def __init__(self, pending, on_ready):
        self._loop = asyncio.get_running_loop()
        self._fd = pending.fileno()
        self._loop.add_reader(self._fd, on_ready)

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None


async def _run_to_end(pending) -> None:
    """Starts the pending request and returns once it has ended; cancelling the wait cancels it."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def on_ready() -> None:
        if pending.poll()[1] and not ended.done():
            ended.set_result(None)

    # Everything the loop needs is in place before the scheduler starts computing.
    watch = _Watch(pending, on_ready)
    try:
        pending.start()
        await ended
    except BaseException:
        pending.cancel()
        raise
    finally:
        watch.close()


async def agenerate(engine, image, prompt, *, executor: Optional[Executor] = None, **options) -> Any:
    """``engine.generate(image, prompt, **options)``, awaited.

    Native backends: prepared on the loop (small in-memory images) or in ``executor``, then
    queued on the engine's scheduler with no thread waiting; a cancelled await cancels the
    request at its next step. Other backends: the whole call runs in ``executor`` (default:
    the loop's), and a cancelled await returns at once while the call runs to its end.
    """
    backend = _submitting_backend(engine)
    if backend is None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(engine.generate, image, prompt, **options))
    request = await _prepare(backend, image, prompt, options, executor)
    pending = backend.submit(request)
    await _run_to_end(pending)
    hypotheses, timings = backend.hypotheses(pending)
    return backend.results(request, hypotheses, timings)


class AsyncTextStream:
    """The pieces of ``engine.stream(image, prompt, **options)`` as an async iterator.

    The generation starts in ``executor`` when the stream is made. ``finished`` is an
    asyncio future that resolves once the worker thread has let go of the engine (after
    the last piece, an error, or a stop), for callers that count the engine's busy threads.
    """

    def __init__(self, engine, image, prompt, executor: Optional[Executor], options: dict):
        self._stop = threading.Event()
        self._done = False
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self.finished: asyncio.Future = self._loop.run_in_executor(
            executor, self._drive, engine, image, prompt, options)

    def _post(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _drive(self, engine, image, prompt, options: dict) -> None:
        """Runs in the worker thread: pulls the engine's pieces until the end or a stop."""
        if self._stop.is_set():
            return
        try:
            with contextlib.closing(engine.stream(image, prompt, **options)) as pieces:
                for piece in pieces:
                    if self._stop.is_set():
                        break
                    self._post(_PIECE, piece)
        except BaseException as error:  # re-raised in the consuming coroutine
            self._post(_ERROR, error)
        else:
            self._post(_END, None)

    def __aiter__(self) -> "AsyncTextStream":
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        try:
            kind, value = await self._items.get()
        except BaseException:
            self.stop()
            raise
        if kind == _PIECE:
            return value
        self._done = True
        if kind == _ERROR:
            raise value
        raise StopAsyncIteration

    def stop(self) -> None:
        """Asks the worker to stop at the engine's next piece (returns at once)."""
        self._done = True
        self._stop.set()

    async def aclose(self) -> None:
        """Stops the generation; returns without waiting for the worker (await ``finished`` for that)."""
        self.stop()

    async def __aenter__(self) -> "AsyncTextStream":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.stop()

    def __del__(self) -> None:
        # A stream dropped without aclose must not keep the engine generating.
        self._stop.set()


class SubmittedTextStream(AsyncTextStream):
    """``AsyncTextStream`` on a native backend: the request is queued on the engine's scheduler and
    its tokens are taken on the event loop as the scheduler signals them, with no worker thread.

    The text is cut into pieces as ``Backend.stream`` cuts it (text that ends inside a multi-byte
    character is held back; beam search gives its final text at the end).
    """

    def __init__(self, engine, image, prompt, executor: Optional[Executor], options: dict):
        self._backend = engine._backend
        self._stop = threading.Event()
        self._done = False
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self._pending = None
        self._watch: Optional[_Watch] = None
        self._tokens: List[int] = []
        self._shown = ""
        self.finished: asyncio.Future = self._loop.create_future()
        self._starting = self._loop.create_task(self._start(image, prompt, options, executor))

    async def _start(self, image, prompt, options: dict, executor: Optional[Executor]) -> None:
        backend = self._backend
        try:
            if isinstance(image, (list, tuple)) or isinstance(prompt, (list, tuple)):
                raise ValueError("stream takes one image and one prompt; use generate for lists")
            request = await _prepare(backend, image, prompt, options, executor)
            if request.options.num_return_sequences != 1:
                raise ValueError("stream returns one sequence; num_return_sequences must be 1")
            self._beams = request.options.num_beams > 1
            if self._stop.is_set():
                self._end()
                return
            self._pending = backend.submit(request, stream=not self._beams)
            self._watch = _Watch(self._pending, self._on_ready)
            self._pending.start()
        except BaseException as error:  # re-raised in the consuming coroutine
            self._items.put_nowait((_ERROR, error))
            self._end()

    def _on_ready(self) -> None:
        tokens, ended = self._pending.poll()
        if not self._stop.is_set():
            for _, token in tokens:  # a piece per token, as Backend.stream gives them
                self._tokens.append(token)
                self._show(self._backend.tokenizer.decode(self._tokens), final=False)
        if not ended:
            return
        if not self._stop.is_set():
            try:
                hypotheses, _ = self._backend.hypotheses(self._pending)
                if self._beams:
                    self._show(self._backend.tokenizer.decode(hypotheses[0][0].tokens), final=True)
                else:
                    self._show(self._backend.tokenizer.decode(self._tokens), final=True)
                self._items.put_nowait((_END, None))
            except BaseException as error:
                self._items.put_nowait((_ERROR, error))
        self._end()

    def _show(self, text: str, final: bool) -> None:
        # Hold back text that ends inside a multi-byte character, as Backend.stream does.
        if text.startswith(self._shown) and (final or not text.endswith("\ufffd")):
            if len(text) > len(self._shown):
                self._items.put_nowait((_PIECE, text[len(self._shown):]))
            self._shown = text

    def _end(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if not self.finished.done():
            self.finished.set_result(None)

    def stop(self) -> None:
        self._done = True
        self._stop.set()
        if self._pending is not None:
            self._pending.cancel()

    def __del__(self) -> None:
        self._stop.set()
        if self._pending is not None:
            self._pending.cancel()


def astream(engine, image, prompt, *, executor: Optional[Executor] = None, **options) -> AsyncTextStream:
    """The pieces of ``engine.stream(image, prompt, **options)``, awaited one by one; call it
    inside a running event loop. Errors of the engine (a bad option, an unreadable image)
    are raised by the first ``__anext__``."""
    if _submitting_backend(engine) is not None:
        return SubmittedTextStream(engine, image, prompt, executor, options)
    return AsyncTextStream(engine, image, prompt, executor, options)

