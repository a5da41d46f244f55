"""The native scheduler: concurrent calls on one engine, batched continuously.

Every call of the native backend goes through its model's scheduler, which
steps the rows of all running calls together and lets a new call's rows join
between two steps of the others (each row keeping its own history, positions
and prompt). So a call must get exactly what it gets alone, whatever runs
beside it and whenever it joins: checked here on "pali" and on PaliGemma 1
and 2 (PaliGemma 2's sliding window shorter than the sequences, so rows that
joined late read their prompt at their own distance), for greedy search,
logits processors, beam search and seeded sampling, with a long call that the
others join while it generates, and with calls prefilled together by the
prefill thread while the decode thread steps the others. Also: a dropped stream frees its rows, a full
queue refuses at once with EngineBusy, a bad call fails alone, the limits
are checked, and calls from asyncio (``agenerate``, ``astream``: queued on the
scheduler with no thread waiting, the event loop watching the request's
descriptor) get what ``generate`` and ``stream`` get, and free their rows
when cancelled.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from batching_fixtures import case, images, search, tokenizer_path  # noqa: E402,F401 (fixtures)

from pali_engine import Engine  # noqa: E402
from pali_engine.errors import EngineBusy  # noqa: E402

OPTIONS = [
    {},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"num_beams": 3, "num_return_sequences": 2},
    {"do_sample": True, "seed": 7, "top_k": 20},
    {"num_beams": 2, "early_stopping": True},
    {"do_sample": True, "seed": 3, "num_return_sequences": 2, "top_p": 0.9},
]


def alone(engine, picture, prompt, options):
    hypotheses, _ = search(engine, [picture], [prompt], options)
    return hypotheses[0]


#: Tokens of a call that holds its rows while a test queues others behind it, then cancels it: far more
#: than any machine decodes in the test's waits (the tiny model ran 4000 in 0.6 s on a fast one).
LONG_CALL = 200_000


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def test_concurrent_calls_get_what_they_get_alone(case):
    engine, prompts, max_new_tokens = case
    pictures = images(len(prompts))
    jobs = []
    for i, prompt in enumerate(prompts):
        opts = dict(OPTIONS[i % len(OPTIONS)], max_new_tokens=max_new_tokens - i % 3)
        jobs.append((pictures[i], prompt, opts))
    # A long call that the others join while it generates: forced past every eos, and long enough that
    # it still runs once the others' prefills, beside its decoding, are done.
    long_opts = {"max_new_tokens": 1500, "min_new_tokens": 1500}
    expected = [alone(engine, p, q, o) for p, q, o in jobs]
    expected_long = alone(engine, pictures[0], prompts[-1], long_opts)

    before = engine.scheduler_stats()
    got = [None] * len(jobs)
    errors = []
    started = threading.Event()

    def run(i):
        try:
            started.wait(30)
            got[i] = alone(engine, *jobs[i])
        except BaseException as error:  # re-raised below
            errors.append(error)

    def run_long():
        def on_token(request, token):
            started.set()
            return True

        backend = engine._backend
        ids, mask = backend.encode_prompts([prompts[-1]])
        from pali_engine import generation

        hypotheses, _ = backend._search(backend.pixel_values([pictures[0]]), ids, mask,
                                        generation.parse_options(long_opts, backend.config), on_token)
        got_long.append(hypotheses[0])

    got_long = []
    threads = [threading.Thread(target=run_long)] + [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # A call returns as soon as its own rows finish; the scheduler publishes its state after the step.
    assert wait_until(lambda: engine.scheduler_stats()["active_requests"] == 0)
    after = engine.scheduler_stats()
    for i, (want, have) in enumerate(zip(expected + [expected_long], got + got_long)):
        assert [h.tokens for h in have] == [h.tokens for h in want], (i, jobs[i][2] if i < len(jobs) else long_opts)
        np.testing.assert_allclose([h.score for h in have], [h.score for h in want], rtol=1e-5, atol=1e-4)
    # The calls really ran batched: some joined others already generating.
    assert after["joined_requests"] > before["joined_requests"]
    assert after["queued_requests"] == 0


def test_a_dropped_stream_frees_its_rows(case):
    engine, prompts, max_new_tokens = case
    picture = images(1)[0]
    pieces = engine.stream(picture, prompts[0], max_new_tokens=200, min_new_tokens=200)
    next(pieces)
    assert engine.scheduler_stats()["active_requests"] <= 1
    pieces.close()
    assert wait_until(lambda: engine.scheduler_stats()["active_requests"] == 0)
    # The engine goes on answering as before.
    assert engine.generate(picture, prompts[1], max_new_tokens=4).tokens == \
        engine.generate(picture, prompts[1], max_new_tokens=4).tokens


def test_a_bad_call_fails_alone(case):
    engine, prompts, max_new_tokens = case
    pictures = images(2)
    want = alone(engine, pictures[0], prompts[0], {"max_new_tokens": max_new_tokens})
    outcome = {}

    def bad():
        try:
            engine.generate(pictures[1], prompts[1], do_sample=True, temperature=1e-45, max_new_tokens=4)
        except ValueError as error:
            outcome["bad"] = error

    def good():
        outcome["good"] = alone(engine, pictures[0], prompts[0], {"max_new_tokens": max_new_tokens})

    threads = [threading.Thread(target=bad), threading.Thread(target=good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "temperature" in str(outcome["bad"])
    assert [h.tokens for h in outcome["good"]] == [h.tokens for h in want]


def test_a_full_queue_refuses_at_once_with_engine_busy(case):
    engine, prompts, _ = case
    engine = Engine.load(engine.path, threads=1, max_batch=1, max_queue=1)
    picture = images(1)[0]
    running = engine.stream(picture, prompts[0], max_new_tokens=LONG_CALL, min_new_tokens=LONG_CALL)
    next(running)  # the first call holds the only row
    queued = {}
    waiter = threading.Thread(target=lambda: queued.setdefault("result", engine.generate(picture, prompts[1],
                                                                                          max_new_tokens=3)))
    waiter.start()
    assert wait_until(lambda: engine.scheduler_stats()["queued_requests"] == 1)
    start = time.monotonic()
    with pytest.raises(EngineBusy, match="max_queue=1"):
        engine.generate(picture, prompts[2], max_new_tokens=3)
    assert time.monotonic() - start < 1.0
    running.close()
    waiter.join(60)
    assert len(queued["result"].tokens) <= 4
    stats = engine.scheduler_stats()
    assert (stats["max_batch"], stats["max_queue"]) == (1, 1)


@pytest.mark.parametrize("limits, message", [
    ({"max_batch": 0}, "max_batch must be an integer between 1"),
    ({"max_queue": -1}, "max_queue must be an integer between 0"),
    ({"max_batch": 2.5}, "max_batch"),
    ({"max_queue": True}, "max_queue"),
])
def test_bad_limits_are_refused(limits, message):
    with pytest.raises(ValueError, match=message):
        Engine.load(threads=1, **limits)


def test_limits_are_the_native_backends():
    with pytest.raises(ValueError, match="backend 'onnxruntime' has none"):
        Engine.load(backend="onnxruntime", max_batch=4)


def test_calls_that_arrive_while_others_decode_prefill_together(case):
    engine, prompts, max_new_tokens = case
    pictures = images(4)
    jobs = [(pictures[i % 4], prompts[i % len(prompts)]) for i in range(12)]
    want = [engine.generate(p, q, max_new_tokens=max_new_tokens).tokens for p, q in jobs]
    # Room for a long call and the jobs. While a gate call holds the jobs' rows, the jobs queue; when the gate is
    # cancelled its rows free at once, and the prefill thread takes every queued job into one prefill while the
    # long call goes on decoding. Only the long call's end is a race (a fast machine may reach its 4000 tokens
    # before the jobs join): then the round is run again. (LONG_CALL tokens on 12 rows ask the memory check
    # for more than a PaliGemma cache may take.)
    gated = Engine.load(engine.path, threads=2, max_batch=1 + len(jobs))
    backend = gated._backend
    long = {"max_new_tokens": 4000, "min_new_tokens": 4000}
    gate_request = backend.prepare([pictures[0]] * len(jobs), [prompts[0]] * len(jobs), long)
    for _ in range(3):
        prepared = [backend.prepare(p, q, {"max_new_tokens": max_new_tokens}) for p, q in jobs]
        running = gated.stream(pictures[0], prompts[0], **long)
        next(running)
        gate = backend.submit(gate_request)
        gate.start()
        assert wait_until(lambda: gated.scheduler_stats()["active_rows"] == 1 + len(jobs))
        before = gated.scheduler_stats()
        pending = [backend.submit(request) for request in prepared]
        for request in pending:
            request.start()
        assert wait_until(lambda: gated.scheduler_stats()["queued_requests"] == len(jobs))
        gate.cancel()
        for request in pending:
            while not request.poll()[1]:
                select.select([request.fileno()], [], [], 20)
        after = gated.scheduler_stats()
        running.close()
        got = [backend.results(r, *backend.hypotheses(p)).tokens for r, p in zip(prepared, pending)]
        assert got == want
        assert after["prefills"] - before["prefills"] == 1
        if after["active_requests"] == 1:  # the long call still decoding, so they joined it
            break
    assert after["active_requests"] == 1, "the long call ended before the jobs joined it, three times"
    assert after["joined_requests"] > before["joined_requests"]


def test_calls_from_asyncio_get_what_generate_gets(case):
    engine, prompts, max_new_tokens = case
    pictures = images(3)
    options = [{"max_new_tokens": max_new_tokens}, {"max_new_tokens": max_new_tokens, "num_beams": 2},
               {"max_new_tokens": max_new_tokens, "do_sample": True, "seed": 5}]
    want = [engine.generate(p, q, **o) for p, q, o in zip(pictures, prompts, options)]
    want_stream = "".join(engine.stream(pictures[0], prompts[0], max_new_tokens=max_new_tokens))

    async def run():
        got = await asyncio.gather(*[engine.agenerate(p, q, **o) for p, q, o in zip(pictures, prompts, options)])
        batch = await engine.agenerate(pictures[:2], prompts[:2], max_new_tokens=max_new_tokens)
        async with engine.astream(pictures[0], prompts[0], max_new_tokens=max_new_tokens) as stream:
            pieces = [piece async for piece in stream]
        return got, batch, pieces

    got, batch, pieces = asyncio.run(run())
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.tokens for r in batch] == [r.tokens for r in want[:1]] + [engine.generate(pictures[1], prompts[1],
                                                                         max_new_tokens=max_new_tokens).tokens]
    assert "".join(pieces) == want_stream
    assert wait_until(lambda: engine.scheduler_stats()["active_requests"] == 0)


def test_a_cancelled_agenerate_frees_its_rows(case):
    engine, prompts, _ = case
    picture = images(1)[0]

    async def run():
        task = asyncio.ensure_future(engine.agenerate(picture, prompts[0], max_new_tokens=LONG_CALL,
                                                    min_new_tokens=LONG_CALL))
        assert await asyncio.to_thread(wait_until, lambda: engine.scheduler_stats()["active_requests"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(run())
    # The call stops at its next step, far before its LONG_CALL tokens.
    assert wait_until(lambda: engine.scheduler_stats()["active_requests"] == 0, timeout=5)
    assert time.monotonic() - start < 10


def test_a_submitted_request_signals_its_descriptor(case):
    engine, prompts, max_new_tokens = case
    backend = engine._backend
    request = backend.prepare(images(1)[0], prompts[0], {"max_new_tokens": max_new_tokens})
    pending = backend.submit(request, stream=True)
    assert pending.poll() == ([], False) and not select.select([pending.fileno()], [], [], 0)[0]
    pending.start()
    tokens, ended = [], False
    while not ended:
        assert select.select([pending.fileno()], [], [], 20)[0], "the descriptor was never signalled"
        chosen, ended = pending.poll()
        tokens += [token for prompt, token in chosen if prompt == 0]
    hypotheses, timings = backend.hypotheses(pending)
    assert tokens == hypotheses[0][0].tokens[:len(tokens)] and len(tokens) >= len(hypotheses[0][0].tokens) - 1
    assert hypotheses[0][0].tokens == engine.generate(images(1)[0], prompts[0],
                                                      max_new_tokens=max_new_tokens).tokens
    assert timings["steps"] >= 1
