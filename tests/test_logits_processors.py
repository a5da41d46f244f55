"""The native logits processors against transformers' own, on fresh random scores.

Every processor an option turns on (repetition penalty, no-repeat n-grams,
minimum new tokens; temperature, top-k, top-p when sampling) is applied by the
engine's chain (``generate/logits_processors.h``) and by transformers'
``LogitsProcessorList`` in the order ``generate()`` builds it, to the same
scores and sequences, with odd vocabulary sizes. Sampling cannot be compared
token for token (the random generators differ), so this is where temperature,
top_k and top_p meet transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pali_engine import _native  # noqa: E402

ops = _native._core.ops
EOS = 1

OPTIONS = [
    {"repetition_penalty": 1.7},
    {"repetition_penalty": 0.6},
    {"no_repeat_ngram_size": 2},
    {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2},
    {"min_new_tokens": 5},
    {"do_sample": True, "temperature": 0.7},
    {"do_sample": True, "top_k": 7},
    {"do_sample": True, "top_k": 0, "top_p": 0.8},
    {"do_sample": True, "temperature": 1.6, "top_k": 11, "top_p": 0.55},
    {"do_sample": True, "temperature": 0.3, "top_k": 1000},
    {"do_sample": True, "repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "min_new_tokens": 9,
     "temperature": 0.9, "top_k": 20, "top_p": 0.9},
]


def transformers_processors(options, prompt_length):
    from transformers.generation import logits_process as lp

    out = lp.LogitsProcessorList()
    if options.get("repetition_penalty", 1.0) != 1.0:
        out.append(lp.RepetitionPenaltyLogitsProcessor(options["repetition_penalty"]))
    if options.get("no_repeat_ngram_size", 0) > 0:
        out.append(lp.NoRepeatNGramLogitsProcessor(options["no_repeat_ngram_size"]))
    if options.get("min_new_tokens", 0) > 0:
        out.append(lp.MinNewTokensLengthLogitsProcessor(prompt_length, options["min_new_tokens"], EOS))
    if options.get("do_sample"):
        if options.get("temperature", 1.0) != 1.0:
            out.append(lp.TemperatureLogitsWarper(options["temperature"]))
        if options.get("top_k", 50) != 0:
            out.append(lp.TopKLogitsWarper(options.get("top_k", 50)))
        if options.get("top_p", 1.0) < 1.0:
            out.append(lp.TopPLogitsWarper(options["top_p"]))
    return out


@pytest.mark.parametrize("vocab", [37, 1001])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_the_processor_chain_is_transformers(options, vocab):
    rng = np.random.default_rng(vocab + len(options))
    rows, prompt_length = 5, 3
    for generated in (0, 4, 12):
        # Short alphabets so that n-grams and repeated tokens occur.
        sequences = rng.integers(0, min(vocab, 9), (rows, prompt_length + generated))
        scores = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
        ours = ops.process_logits(scores, sequences.tolist(), generated, dict(options), EOS)
        theirs = transformers_processors(options, prompt_length)(torch.from_numpy(sequences),
                                                                 torch.from_numpy(scores.copy())).numpy()
        masked = np.isneginf(theirs)
        np.testing.assert_array_equal(np.isneginf(ours), masked)
        np.testing.assert_allclose(ours[~masked], theirs[~masked], rtol=1e-6, atol=1e-6)
