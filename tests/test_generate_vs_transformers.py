"""Generation options against transformers' ``generate()`` on the same weights.

A tiny random PaLI is exported and run by the engine (native and onnxruntime
backends); its text model, mapped onto transformers' T5ForConditionalGeneration
(``export/hf_t5.py``), generates from the same encoder input (the visual tokens
followed by the prompt's embeddings, as ``inputs_embeds``). Tokens, the order
of ``num_return_sequences`` and scores must be transformers' (beam scores are
its ``sequences_scores``; greedy scores the sum of the model's log-probs of
the chosen tokens, from its unprocessed ``output_logits``).
Random weights give long, uneven answers, where beam search's stopping rules
and the processors decide the outcome.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from export_fixtures import export_tiny, tiny_model  # noqa: E402

from pali_engine import Engine  # noqa: E402

PROMPTS = ("caption en", "ocr", "le cercle rouge", "two")

BEAM_OPTIONS = [
    {"num_beams": 2},
    {"num_beams": 3, "length_penalty": 0.0},
    {"num_beams": 4, "length_penalty": -0.5, "num_return_sequences": 3},
    {"num_beams": 3, "length_penalty": 2.0, "num_return_sequences": 2},
    {"num_beams": 2, "early_stopping": True},
    {"num_beams": 3, "early_stopping": "never", "length_penalty": 1.5},
    {"num_beams": 4, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    {"num_beams": 3, "min_new_tokens": 7},
]

GREEDY_OPTIONS = [
    {},
    {"repetition_penalty": 1.7},
    {"repetition_penalty": 0.6},
    {"no_repeat_ngram_size": 1},
    {"no_repeat_ngram_size": 3},
    {"min_new_tokens": 9},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pali_engine.export.hf_t5 import build_hf_t5

    torch.set_num_threads(1)
    model = tiny_model(seed=3)
    path = tmp_path_factory.mktemp("generate") / "tiny.onnx"
    export_tiny(path, model)
    hf = build_hf_t5(model.config, model.state_dict())
    engines = {"native": Engine.load(path, threads=1)}
    try:
        import onnxruntime  # noqa: F401

        engines["onnxruntime"] = Engine.load(path, backend="onnxruntime", threads=1)
    except ImportError:
        pass
    return model, hf, engines


def _inputs(model, engine, seed, prompt):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ids, mask = engine._backend.encode_prompts([prompt])
    pixels = engine._backend.pixel_values([image])
    with torch.no_grad():
        visual = model.projector(model.vision(torch.from_numpy(pixels)))
        embeds = torch.cat([visual, model.shared(torch.from_numpy(ids))], 1)
    mask = torch.cat([torch.ones(1, visual.shape[1], dtype=torch.int64), torch.from_numpy(mask)], 1)
    return image, embeds, mask


def _hf_generate(hf, embeds, mask, options):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                          output_scores=True, output_logits=True, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0, **options)
    sequences = []
    for row in out.sequences[:, 1:].tolist():
        sequences.append(row[: row.index(1) + 1] if 1 in row else [t for t in row if t != 0] or row)
    if options.get("num_beams", 1) > 1:
        scores = out.sequences_scores.tolist()
    else:
        # The engine's greedy score is the model's own log-probability of its answer:
        # the unprocessed logits (transformers' output_logits), not the processed scores.
        steps = hf.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
        scores = [float(s[: len(seq)].sum()) for s, seq in zip(steps, sequences)]
    return sequences, scores


def _check(setup, backend, options, max_new_tokens):
    model, hf, engines = setup
    if backend not in engines:
        pytest.skip("onnxruntime is not installed")
    engine = engines[backend]
    for case, prompt in enumerate(PROMPTS):
        image, embeds, mask = _inputs(model, engine, case, prompt)
        opts = dict(options, max_new_tokens=max_new_tokens)
        ours = engine.generate(image, prompt, **opts)
        ours = ours if isinstance(ours, list) else [ours]
        tokens, scores = _hf_generate(hf, embeds, mask, opts)
        assert [r.tokens for r in ours] == tokens, (prompt, opts)
        np.testing.assert_allclose([r.score for r in ours], scores, atol=2e-4, err_msg=f"{prompt} {opts}")


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("max_new_tokens", [5, 14])
@pytest.mark.parametrize("options", BEAM_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_beam_search_is_transformers(setup, backend, options, max_new_tokens):
    _check(setup, backend, options, max_new_tokens)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("options", GREEDY_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_greedy_search_and_processors_are_transformers(setup, backend, options):
    _check(setup, backend, options, 12)
