"""Admission, queueing and batching of engine calls for the HTTP server.

Why: an engine call blocks a thread for as long as it generates, so the server
runs calls in a pool of ``parallel`` worker threads (``pali_engine.aio``) and
decides on the event loop which request runs next. At most ``parallel`` calls
run at once; at most ``max_queue`` requests wait for a slot; a request past
that is refused at once with 429 instead of piling up until clients time out.

Non-streaming requests that wait together and ask for the same deterministic
options (greedy or beam search: sampled requests keep their own seeds) are run
as one batch of up to ``max_batch`` inputs, one engine call for all of them. If
that call fails on one input's fault (a ``ValueError``), each input is run on
its own so that only the bad one gets the error. A streaming request takes a
slot of its own until the engine's worker lets go of it: until the answer ends
or the stream is stopped (a client that disconnects stops it).
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Hashable, List, Optional, Set, Tuple, Union

from .. import aio
from .errors import APIError


@dataclass
class _GenerateJob:
    image: Any
    prompt: str
    options: dict
    batch_key: Optional[Hashable]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    def abandoned(self) -> bool:
        return self.future.done()


@dataclass
class _StreamJob:
    granted: asyncio.Future

    def abandoned(self) -> bool:
        return self.granted.done()


@dataclass
class Generated:
    """What a non-streaming request got: the engine's result (a list of them with num_return_sequences > 1),
    how long it waited for a slot, and how many requests shared its engine call."""

    result: Any
    queue_wait_s: float
    batch_size: int


class Scheduler:
    def __init__(self, engine, *, parallel: int = 2, max_batch: int = 8, max_queue: int = 64,
                 on_batch: Optional[Callable[[int], None]] = None):
        if parallel < 1 or max_batch < 1 or max_queue < 0:
            raise ValueError("parallel and max_batch must be >= 1 and max_queue >= 0")
        self.engine = engine
        self.parallel = parallel
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size: None)
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pali-engine-worker")
        self._waiting: Deque[Union[_GenerateJob, _StreamJob]] = collections.deque()
        self._running = 0
        self._tasks: Set[asyncio.Task] = set()
        self._closed = False

    @property
    def active(self) -> int:
        """Engine calls running now."""
        return self._running

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for job in self._waiting if not job.abandoned())

    # ---- admission ----
    def _admit(self, job) -> None:
        if self._closed:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self._running >= self.parallel and self.queue_depth >= self.max_queue:
            raise APIError(429, f"the server is full: {self._running} requests running and {self.queue_depth} "
                           f"waiting (--parallel {self.parallel}, --max-queue {self.max_queue}); retry later",
                           code="server_full")
        self._waiting.append(job)
        self._dispatch()

    def _take_batch(self, first: _GenerateJob) -> List[_GenerateJob]:
        """``first`` and the waiting jobs that can share its engine call, in arrival order."""
        batch = [first]
        if first.batch_key is None or self.max_batch == 1:
            return batch
        left: Deque = collections.deque()
        for job in self._waiting:
            if (len(batch) < self.max_batch and isinstance(job, _GenerateJob) and not job.abandoned()
                    and job.batch_key == first.batch_key):
                batch.append(job)
            else:
                left.append(job)
        self._waiting = left
        return batch

    def _dispatch(self) -> None:
        while self._running < self.parallel and self._waiting:
            job = self._waiting.popleft()
            if job.abandoned():  # its client went away while it waited
                continue
            self._running += 1
            if isinstance(job, _StreamJob):
                job.granted.set_result(None)
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(self._take_batch(job)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _release(self) -> None:
        self._running -= 1
        if not self._closed:
            self._dispatch()

    # ---- running ----
    async def _run_one(self, job: _GenerateJob) -> Tuple[bool, Any]:
        try:
            return True, await aio.agenerate(self.engine, job.image, job.prompt, executor=self._pool, **job.options)
        except (ValueError, MemoryError) as error:
            return False, error

    async def _run_batch(self, batch: List[_GenerateJob]) -> None:
        started = time.perf_counter()
        try:
            self.on_batch(len(batch))
            if len(batch) == 1:
                outcomes = [await self._run_one(batch[0])]
            else:
                try:
                    results = await aio.agenerate(self.engine, [j.image for j in batch], [j.prompt for j in batch],
                                                  executor=self._pool, **batch[0].options)
                    outcomes = [(True, r) for r in results]
                except (ValueError, MemoryError):
                    # One input's fault must not fail its batch mates: each runs alone for its own answer.
                    outcomes = [await self._run_one(job) for job in batch]
            for job, (ok, value) in zip(batch, outcomes):
                if job.future.done():
                    continue
                if ok:
                    job.future.set_result(Generated(value, started - job.arrived, len(batch)))
                else:
                    job.future.set_exception(value)
        except Exception as error:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
        except BaseException:  # cancelled: the server is stopping
            for job in batch:
                job.future.cancel()
            raise
        finally:
            self._release()

    async def generate(self, image, prompt: str, options: dict, batch_key: Optional[Hashable]) -> Generated:
        """Runs ``engine.generate`` when a slot is free (with the batch mates of ``batch_key``, None: alone)."""
        job = _GenerateJob(image, prompt, options, batch_key, asyncio.get_running_loop().create_future())
        self._admit(job)
        return await job.future

    async def stream(self, image, prompt: str, options: dict) -> Tuple[aio.AsyncTextStream, float]:
        """Waits for a slot and starts ``engine.stream`` in it: (the stream, seconds waited).

        The slot is freed when the engine's worker lets go of it; stopping the stream frees it
        at the next token.
        """
        arrived = time.perf_counter()
        granted = asyncio.get_running_loop().create_future()
        self._admit(_StreamJob(granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()
            raise
        try:
            stream = aio.astream(self.engine, image, prompt, executor=self._pool, **options)
        except BaseException:
            self._release()
            raise
        stream.finished.add_done_callback(lambda _: self._release())
        return stream, time.perf_counter() - arrived

    def close(self) -> None:
        """Refuses new requests, fails the waiting ones, and lets the pool's threads end."""
        self._closed = True
        while self._waiting:
            job = self._waiting.popleft()
            future = job.future if isinstance(job, _GenerateJob) else job.granted
            if not future.done():
                future.set_exception(APIError(503, "the server is shutting down", code="shutting_down"))
        self._pool.shutdown(wait=False, cancel_futures=True)
