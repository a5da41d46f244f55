"""The onnxruntime backend of "paligemma" files, the oracle of the native one, and the backend table.

The NumPy search with initial sequences (a decoder-only model's padded prompt)
on a fixed table; then tiny random PaliGemma 1 and 2 checkpoints built offline
by transformers (tests/paligemma_fixtures.py), converted, and loaded with
``backend="onnxruntime"``: greedy search, the repetition penalty with no-repeat
n-grams and beam search give transformers' generate() and the native backend's
tokens and scores, a left-padded batch gives what each request alone gives,
logits equal the native backend's, and bad arguments give the native backend's
errors. Last, the backend table of ``Engine.load``.
"""

from __future__ import annotations

import numpy as np
import pytest

from pali_engine import generation
from pali_engine.generation import parse_options

CONFIG = {"max_new_tokens": 8}


# --------------------------------------------------------------------------
# the search from initial sequences (no model)

def test_rows_start_from_their_inputs_initial_sequence():
    # The next token is the last one + 1 (eos = 1 after 5); the step sees each input's prompt first.
    V = 7
    seen = []

    def step(sequences):
        seen.append(sequences.copy())
        scores = np.full((len(sequences), V), -5.0)
        last = sequences[:, -1]
        scores[np.arange(len(sequences)), np.where(last >= 5, 1, last + 1)] = 0.0
        return scores

    prompts = np.array([[0, 2, 3], [6, 6, 4]])
    opts = parse_options({"max_new_tokens": 4}, CONFIG)
    (a,), (b,) = generation.generate(step, 2, opts, eos_id=1, pad_id=0, initial_sequences=prompts)
    assert a.tokens == [4, 5, 1] and b.tokens == [5, 1]
    assert seen[0].tolist() == prompts.tolist()
    assert seen[1].tolist() == [[0, 2, 3, 4], [6, 6, 4, 5]]
    beams = generation.generate(step, 2, parse_options({"max_new_tokens": 4, "num_beams": 2}, CONFIG),
                                eos_id=1, pad_id=0, initial_sequences=prompts)
    assert [h[0].tokens for h in beams] == [[4, 5, 1], [5, 1]]
    assert all(s.shape[0] == 4 and (s[:2, :3] == prompts[0]).all() for s in seen[-2:])
    with pytest.raises(ValueError, match="initial_sequences"):
        generation.generate(step, 3, opts, eos_id=1, pad_id=0, initial_sequences=prompts)


def test_processors_see_the_initial_sequence():
    # Token 2 is always best, token 3 second; a prompt holding 2 penalises it, and the bigram (0, 2) of
    # a prompt bans 2 after 0.
    V = 5
    table = np.full((V, V), -4.0)
    table[:, 2], table[:, 3] = 1.0, 0.8

    def step(sequences):
        return table[sequences[:, -1]]

    def first_token(prompt, **options):
        opts = parse_options({"max_new_tokens": 1, **options}, CONFIG)
        ((h,),) = generation.generate(step, 1, opts, eos_id=1, pad_id=0, initial_sequences=[prompt])
        return h.tokens[0]

    assert first_token([4, 4]) == 2
    assert first_token([4, 2], repetition_penalty=2.0) == 3
    assert first_token([0, 2, 0], no_repeat_ngram_size=2) == 3
    assert first_token([0, 2, 4], no_repeat_ngram_size=2) == 2


# --------------------------------------------------------------------------
# tiny converted checkpoints

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)
from PIL import Image  # noqa: E402

from pali_engine import Engine, ModelFileError  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402

PROMPTS = ["caption en", "answer en how many circles are there?"]
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma1", "paligemma2"])
def converted(request, tmp_path_factory, tokenizer_path):
    """(transformers' model, transformers' processor, the converted file, native engine, onnxruntime engine)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp(f"ort{request.param}")
    model, processor = build_checkpoint(request.param, str(root / "hf"), tokenizer_path)
    path = str(root / "paligemma.onnx")
    convert(str(root / "hf"), path, validate=False)
    native = Engine.load(path, threads=1)
    ort = Engine.load(path, backend="onnxruntime", threads=1)
    return model, processor, path, native, ort


def _images(seed=5):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in range(2)]


def _hf_generate(model, processor, images, prompts, options):
    """transformers' generate(**processor(...)): (tokens with eos, score) per returned sequence."""
    import warnings

    inputs = processor(images=images, text=prompts, padding="longest", return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(**inputs, do_sample=False, return_dict_in_generate=True, output_scores=True,
                             output_logits=True, **options)
    length = inputs["input_ids"].shape[1]
    sequences = []
    for row in out.sequences[:, length:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t == 1), len(row))
        sequences.append(row[:cut])
    if options.get("num_beams", 1) > 1:
        return list(zip(sequences, out.sequences_scores.tolist()))
    steps = model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    return [(q, float(s[: len(q)].sum())) for s, q in zip(steps, sequences)]


def _flat(results):
    """Engine results (a list per input when several are returned) -> [(tokens, score)]."""
    out = []
    for result in results:
        for r in result if isinstance(result, list) else [result]:
            out.append((r.tokens, r.score))
    return out


def _assert_same(ours, theirs, context):
    assert [t for t, _ in ours] == [t for t, _ in theirs], context
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=2e-4, err_msg=str(context))


GENERATE_OPTIONS = [
    {},
    {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
    {"num_beams": 3},
    {"num_beams": 3, "length_penalty": 0.5, "num_return_sequences": 2},
    {"num_beams": 2, "early_stopping": True, "min_new_tokens": 3},
]


@pytest.mark.parametrize("options", GENERATE_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "greedy")
def test_generation_equals_transformers_and_the_native_backend(converted, options):
    # A left-padded batch of two prompts of different lengths, and each request alone. (transformers'
    # batch equals its single requests: tests/test_paligemma_native.py.)
    model, processor, _, native, ort = converted
    images = _images()
    opts = dict(options, max_new_tokens=MAX_NEW_TOKENS)
    batch = _flat(ort.generate(images, PROMPTS, **opts))
    _assert_same(batch, _hf_generate(model, processor, images, PROMPTS, opts), ("transformers", opts))
    _assert_same(batch, _flat(native.generate(images, PROMPTS, **opts)), ("native", opts))
    per_input = len(batch) // 2
    for i in range(2):
        alone = _flat(ort.generate(images[i:i + 1], PROMPTS[i:i + 1], **opts))
        _assert_same(batch[i * per_input:(i + 1) * per_input], alone, ("batch row", i, opts))
    assert any(len(tokens) > 2 for tokens, _ in batch)  # more than an immediate eos


def test_logits_equal_the_native_backends(converted):
    _, processor, _, native, ort = converted
    inputs = processor(images=_images(), text=PROMPTS, suffix=["a photo of a cat", "two"], padding="longest",
                       return_tensors="np")
    args = [inputs[name] for name in ("pixel_values", "input_ids", "attention_mask", "token_type_ids")]
    ours, theirs = ort.logits(*args), native.logits(*args)
    real = inputs["attention_mask"].astype(bool)
    assert ours.shape == theirs.shape and ours.shape[:2] == real.shape
    assert (inputs["attention_mask"] == 0).any() and (inputs["token_type_ids"] == 1).any()
    assert np.abs(ours - theirs)[real].max() <= 1e-4
    as_lists = ort.logits(*(a.tolist() for a in args))
    np.testing.assert_array_equal(as_lists, ours)


def test_stream_results_and_sampling(converted):
    _, _, _, native, ort = converted
    image = _images(seed=8)[0]
    greedy = ort.generate(image, "detect cat", max_new_tokens=MAX_NEW_TOKENS)
    assert greedy.text == ort.tokenizer.decode(greedy.tokens) == native.generate(
        image, "detect cat", max_new_tokens=MAX_NEW_TOKENS).text
    assert "".join(ort.stream(image, "detect cat", max_new_tokens=MAX_NEW_TOKENS)) == greedy.text
    assert greedy.image_size == (41, 30) and isinstance(greedy.objects, list)
    assert greedy.timings["steps"] == min(len(greedy.tokens), MAX_NEW_TOKENS)
    beams = ort.generate(image, "ocr", max_new_tokens=4, num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and beams[0].score >= beams[1].score
    assert "".join(ort.stream(image, "ocr", max_new_tokens=4, num_beams=2)) == \
        ort.generate(image, "ocr", max_new_tokens=4, num_beams=2).text
    a, b = (ort.generate(image, "ocr", do_sample=True, seed=3, max_new_tokens=4, num_return_sequences=2)
            for _ in range(2))
    assert [r.tokens for r in a] == [r.tokens for r in b]


def _message(call):
    with pytest.raises(ValueError) as info:
        call()
    return type(info.value), str(info.value)


def test_bad_arguments_give_the_native_backends_errors(converted):
    model, processor, path, native, ort = converted
    image = _images()[0]
    inputs = processor(images=[image], text=PROMPTS[:1], suffix=["a cat"], return_tensors="np")
    px, ids, mask, types = (inputs[n] for n in ("pixel_values", "input_ids", "attention_mask", "token_type_ids"))
    bos_as_image = np.where(ids == 2, model.config.image_token_index, ids)  # one <image> more than the features
    cases = [
        lambda e: e.generate(image, "ocr", beam_size=2),
        lambda e: e.generate(image, "ocr", max_new_tokens=0),
        lambda e: e.generate(image, "ocr", num_return_sequences=2),
        lambda e: e.generate(image, 42),
        lambda e: e.generate(image, "a <image> in the middle"),
        lambda e: e.generate(image, "caption \ud800"),
        lambda e: e.generate([image, image], ["a", "b", "c"]),
        lambda e: e.generate(np.zeros((4, 4, 3), np.float32), "ocr"),
        lambda e: e.stream([image], "ocr"),
        lambda e: e.logits(px[:, :, :3], ids, mask, types),
        lambda e: e.logits(np.full_like(px, np.nan), ids, mask, types),
        lambda e: e.logits(px, ids + 10**6, mask, types),
        lambda e: e.logits(px, ids, mask * 2, types),
        lambda e: e.logits(px, ids, mask[:, 1:], types),
        lambda e: e.logits(px, ids, mask, 1 - types),
        lambda e: e.logits(px, bos_as_image, mask, types),
    ]
    for index, case in enumerate(cases):
        expected = _message(lambda: case(native))
        assert _message(lambda: case(ort)) == expected, index
        assert expected[0] is ValueError and "\n" not in expected[1], (index, expected)
    for dtype in ("float16", "int8"):
        with pytest.raises(ValueError, match="dtype must be 'float32'"):
            Engine.load(path, backend="onnxruntime", dtype=dtype)
    for backend in ("native", "onnxruntime"):
        with pytest.raises(ValueError, match="resize='stretch'"):
            Engine.load(path, backend=backend, resize="pad")
        assert _message(lambda: Engine.load(path, backend=backend, threads=0)) == \
            _message(lambda: Engine.load(path, threads=0))


# --------------------------------------------------------------------------
# the backend table

def test_engine_load_picks_the_class_for_the_architecture_and_backend(converted, monkeypatch):
    from pali_engine import backends, model_file
    from pali_engine.ort_backend import PaliGemmaOrtBackend
    from pali_engine.paligemma_backend import PaliGemmaBackend

    _, _, path, native, ort = converted
    assert type(native._backend) is PaliGemmaBackend and type(ort._backend) is PaliGemmaOrtBackend
    with pytest.raises(ValueError, match=r"backend must be one of native, onnxruntime for 'paligemma' files, "
                                         r"got 'foo'"):
        Engine.load(path, backend="foo")
    with pytest.raises(ValueError, match="got \\['native'\\]"):
        Engine.load(path, backend=["native"])
    for (architecture, name) in backends.BACKENDS:
        cls = backends.backend_class(architecture, name)
        assert isinstance(cls, type) and name in backends.backend_names(architecture)
    with pytest.raises(ValueError, match="architectures: pali, paligemma"):
        backends.backend_class("llama", "native")
    assert backends.file_architecture("f.onnx", {}) == "pali"
    assert backends.file_architecture("f.onnx", {"pali.config": '{"architecture": 7}'}) == "pali"
    with pytest.raises(ModelFileError, match="f.onnx: .*'llama'.*pali, paligemma"):
        backends.file_architecture("f.onnx", {"pali.config": '{"architecture": "llama"}'})
    # The file's metadata and tensor table are read once per load.
    reads = []
    original = model_file.inspect
    monkeypatch.setattr(model_file, "inspect", lambda p: reads.append(p) or original(p))
    for backend in ("native", "onnxruntime"):
        reads.clear()
        Engine.load(path, backend=backend, threads=1)
        assert reads == [path], backend
