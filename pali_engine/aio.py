"""The engine from asyncio: ``agenerate`` and ``astream`` (also ``Engine.agenerate``, ``Engine.astream``).

Why: ``generate`` and ``stream`` are blocking C++ calls (they release the GIL
but hold their thread until the answer is done); a coroutine that called them
directly would stall its whole event loop, a web server's included. Here they
run in a worker thread (the loop's default executor, or one the caller gives,
which then bounds how many run at once) and the coroutine awaits them:

    result = await engine.agenerate(image, "caption en")
    async with engine.astream(image, "caption en") as pieces:
        async for piece in pieces:
            print(piece, end="")

Leaving an ``astream`` early (``break``, ``aclose``, a cancelled task) stops
the generation at its next token, as closing ``stream``'s iterator does: the
worker thread sees the stop after each piece and closes the engine's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from concurrent.futures import Executor
from typing import Any, Optional

_PIECE, _END, _ERROR = "piece", "end", "error"


async def agenerate(engine, image, prompt, *, executor: Optional[Executor] = None, **options) -> Any:
    """``engine.generate(image, prompt, **options)`` run in ``executor`` (default: the loop's).

    A cancelled await returns at once; the engine's call itself runs to its end in its thread
    (a non-streaming generation cannot be interrupted).
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(engine.generate, image, prompt, **options))


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


def astream(engine, image, prompt, *, executor: Optional[Executor] = None, **options) -> AsyncTextStream:
    """The pieces of ``engine.stream(image, prompt, **options)``, awaited one by one; call it
    inside a running event loop. Errors of the engine (a bad option, an unreadable image)
    are raised by the first ``__anext__``."""
    return AsyncTextStream(engine, image, prompt, executor, options)

