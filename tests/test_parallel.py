"""The engine's thread pool (csrc/core/parallel.h) through its test bindings.

Why: every op splits its work with parallel_for or parallel_rows, so an item
visited twice or never, a chunk off its alignment, a nested call that fans out
again, or a pass that returns before all its rows are written would corrupt
results only sometimes; these check each directly, over many shapes,
thread counts and concurrent callers.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pali_engine._core import ops

SIZES = [(0, 0), (0, 1), (0, 2), (3, 4), (0, 7), (5, 38), (0, 63), (0, 64), (1, 1000), (0, 4097), (-9, 250)]
GRAINS = [1, 3, 16, 1 << 14]
ALIGNS = [1, 4, 8, 7]
THREADS = [1, 2, 3, 5, 8]


@pytest.mark.parametrize("threads", THREADS)
def test_parallel_for_visits_every_item_once(threads):
    for (begin, end), grain, align in itertools.product(SIZES, GRAINS, ALIGNS):
        visits, misaligned, _ = ops.parallel_for_visits(begin, end, grain, align, threads)
        assert visits.shape == (max(end - begin, 0),)
        assert (visits == 1).all(), (begin, end, grain, align, threads)
        assert misaligned == 0, (begin, end, grain, align, threads)


def test_nested_parallel_for_runs_serially():
    for threads in (2, 4):
        visits, _, nested_split = ops.parallel_for_visits(0, 1000, 1, 1, threads, nested=True)
        assert (visits == 1).all()
        assert nested_split == 0


def test_parallel_for_from_many_python_threads_at_once():
    def call(i):
        begin, end = -i, 997 + 13 * i
        visits, misaligned, _ = ops.parallel_for_visits(begin, end, 1 + i % 5, 1 + i % 4, 1 + i % 4)
        return bool((visits == 1).all()) and misaligned == 0

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(200)))


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7])
def test_parallel_rows_passes_cover_every_row_in_order(threads):
    for n, min_rows, passes in [(1, 1, 3), (7, 1, 2), (64, 16, 4), (65, 1, 5), (300, 16, 6), (33, 40, 2)]:
        visits, wrong, small = ops.parallel_rows_check(n, min_rows, threads, passes)
        assert visits.shape == (passes, n)
        assert (visits == 1).all(), (n, min_rows, threads)
        assert wrong == 0, (n, min_rows, threads, passes)
        assert small == 0, (n, min_rows, threads)


def test_parallel_rows_from_many_python_threads_at_once():
    # A call that finds the pool busy runs on its caller alone; every pass is complete and ordered.
    def call(i):
        visits, wrong, _ = ops.parallel_rows_check(97 + i, 1, 2 + i % 3, 3)
        return bool((visits == 1).all()) and wrong == 0

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(call, range(120)))


def test_mixed_calls_at_once_give_the_same_ops_results():
    # The same op from several threads, each with its own thread count, gives the serial bits.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 96)).astype(np.float32)
    w = ops.prepare_linear(rng.standard_normal((160, 96)).astype(np.float32), None)
    ops.set_threads(1)
    try:
        expected = ops.linear(x, w, None, False)
    finally:
        ops.set_threads(0)

    def call(i):
        ops.set_threads(1 + i % 4)
        try:
            return np.array_equal(ops.linear(x, w, None, False), expected)
        finally:
            ops.set_threads(0)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(call, range(60)))
