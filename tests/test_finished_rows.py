"""Batches whose answers end at different steps, on "pali" and "paligemma" models.

The search drops a row from the decoder's session once it has finished (and
a beam search request once it is done), so the rows left are no longer the
batch's in a fixed layout: every request of the batch must still get what it
gets alone (the same tokens, the scores within float rounding), for greedy
search and beam search with returned sequences, and the streamed tokens must
name the request they belong to. The models' answers are made to end early
and unevenly: a random tiny PaLI, and tiny PaliGemma 1 and 2 whose eos logit
is scaled up.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from batching_fixtures import case, images, search, tokenizer_path  # noqa: E402,F401 (fixtures)

OPTIONS = [
    {},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"num_beams": 3, "num_return_sequences": 2},
    {"num_beams": 2, "early_stopping": True},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "greedy")
def test_each_request_of_an_uneven_batch_gets_what_it_gets_alone(case, options):
    engine, prompts, max_new_tokens = case
    pictures = images(len(prompts))
    opts = dict(options, max_new_tokens=max_new_tokens)
    batch, streamed = search(engine, pictures, prompts, opts)
    lengths = [len(h.tokens) for per in batch for h in per]
    assert min(lengths) < max(lengths) <= max_new_tokens + 1  # rows did finish at different steps
    for i, prompt in enumerate(prompts):
        alone, _ = search(engine, pictures[i:i + 1], [prompt], opts)
        assert [h.tokens for h in batch[i]] == [h.tokens for h in alone[0]], (i, opts)
        np.testing.assert_allclose([h.score for h in batch[i]], [h.score for h in alone[0]], atol=1e-4)
    if options.get("num_beams", 1) == 1:
        for i, per in enumerate(batch):
            assert [t for r, t in streamed if r == i] == without_eos(engine, per[0].tokens), i


def without_eos(engine, tokens):
    eos = int(engine._backend.config["eos_token_id"])
    return [t for t in tokens if t != eos]


def test_a_request_stopped_by_its_callback_leaves_the_others_as_they_were(case):
    engine, prompts, max_new_tokens = case
    pictures = images(len(prompts))
    opts = {"max_new_tokens": max_new_tokens}
    whole, _ = search(engine, pictures, prompts, opts)
    stop_after = {1: 2, 4: 1}
    stopped, streamed = search(engine, pictures, prompts, opts, stop_after=stop_after)
    for i, (a, b) in enumerate(zip(whole, stopped)):
        expected = without_eos(engine, a[0].tokens)[: stop_after[i]] if i in stop_after else None
        if expected is not None and len(expected) == stop_after[i]:
            assert b[0].tokens == expected, i
        else:
            assert b[0].tokens == a[0].tokens, i
        assert [t for r, t in streamed if r == i] == without_eos(engine, b[0].tokens), i
