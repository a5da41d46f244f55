"""The "paligemma" architecture on the engine's own kernels against transformers.

Tiny random PaliGemma 1 (multi-query, head_dim 256) and PaliGemma 2 (grouped
query, a sliding window shorter than the sequence, both soft-caps, a
query_pre_attn_scalar other than head_dim) are built offline by transformers,
converted, and loaded by the native PaliGemmaModel: its teacher-forced logits
on a padded batch with suffixes must be transformers' (the real positions),
and its generation (greedy, processors, beam search with returned sequences)
transformers' generate(), token for token, score for score, alone and in a
left-padded batch.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)

from pali_engine import ModelFileError, _native, inspect  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402

PROMPTS = ["caption en", "answer en how many circles are there?"]
SUFFIXES = ["a photo of a cat", "the quick brown fox jumps"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma1", "paligemma2"])
def converted(request, tmp_path_factory, tokenizer_path):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp(f"native{request.param}")
    model, processor = build_checkpoint(request.param, str(root / "hf"), tokenizer_path)
    path = str(root / "paligemma.onnx")
    convert(str(root / "hf"), path)
    return model, processor, path


def _native_model(path, weight_format="f32"):
    config = json.loads(inspect(path)["metadata"]["pali.config"])
    core = _native._core
    return core.load_model(core.OnnxFile(path), weight_format, 1, config)


def _batch(processor, rows=2, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in range(rows)]
    return processor(images=images, text=PROMPTS[:rows], suffix=SUFFIXES[:rows], padding="longest",
                     return_tensors="np")


def _logits(model, inputs):
    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    dtype = next(model.parameters()).dtype
    args = {k: torch.as_tensor(np.asarray(inputs[k])) for k in names}
    args["pixel_values"] = args["pixel_values"].to(dtype)
    with torch.no_grad():
        return model(**args).logits.float().numpy()


@pytest.mark.parametrize("rows", [1, 2])
def test_native_logits_equal_transformers(converted, rows):
    model, processor, path = converted
    native = _native_model(path)
    inputs = _batch(processor, rows)
    ours = native.forward(np.asarray(inputs["pixel_values"], np.float32), inputs["input_ids"],
                          inputs["attention_mask"], inputs["token_type_ids"])
    theirs = _logits(model, inputs)
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    assert ours.shape == theirs.shape
    assert np.isfinite(ours).all()
    assert np.abs(ours - theirs)[real].max() <= TOLERANCE


def test_half_precision_weights_stay_close(converted):
    model, processor, path = converted
    inputs = _batch(processor)
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    theirs = _logits(model, inputs)
    args = (np.asarray(inputs["pixel_values"], np.float32), inputs["input_ids"], inputs["attention_mask"],
            inputs["token_type_ids"])
    f16 = _native_model(path, "f16").forward(*args)
    assert np.abs(f16 - theirs)[real].max() < 5e-2 * max(1.0, np.abs(theirs).max())


def test_a_bad_config_names_the_field(converted):
    _, _, path = converted
    config = json.loads(inspect(path)["metadata"]["pali.config"])
    config["text_config"]["model_type"] = "llama"
    core = _native._core
    with pytest.raises(ValueError, match="text_config.model_type"):
        core.load_model(core.OnnxFile(path), "f32", 1, config)
    config["text_config"]["model_type"] = "gemma2"
    config["projection_dim"] = 7
    with pytest.raises((ValueError, ModelFileError), match="projection_dim"):
        core.load_model(core.OnnxFile(path), "f32", 1, config)


GENERATE_OPTIONS = [
    {},
    {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
    {"num_beams": 3},
    {"num_beams": 4, "length_penalty": 0.5, "num_return_sequences": 2},
    {"num_beams": 2, "early_stopping": True, "min_new_tokens": 3},
]


def _hf_generate(model, inputs, options):
    import warnings

    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(**{k: torch.as_tensor(np.asarray(inputs[k])) for k in names}, do_sample=False,
                             return_dict_in_generate=True, output_scores=True, output_logits=True, **options)
    length = inputs["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    sequences = []
    for row in out.sequences[:, length:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        sequences.append(row[:cut])
    if options.get("num_beams", 1) > 1:
        return sequences, out.sequences_scores.tolist()
    steps = model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    return sequences, [float(s[: len(q)].sum()) for s, q in zip(steps, sequences)]


NATIVE_DEFAULTS = {"max_new_tokens": 9, "min_new_tokens": 0, "num_beams": 1, "length_penalty": 1.0,
                   "early_stopping": False, "num_return_sequences": 1, "no_repeat_ngram_size": 0,
                   "repetition_penalty": 1.0, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                   "seed": 0}


def _native_generate(native, inputs, options):
    results, _ = native.generate(np.asarray(inputs["pixel_values"], np.float32), inputs["input_ids"],
                                 inputs["attention_mask"], dict(NATIVE_DEFAULTS, **options))
    eos = 1
    return [([list(t) + ([eos] if finished else []) for t, _, finished in request], [s for _, s, _ in request])
            for request in results]


@pytest.mark.parametrize("options", GENERATE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "greedy")
def test_native_generation_equals_transformers(converted, options):
    # A left-padded batch of two and each request alone: tokens, order and scores
    # are transformers' generate(**processor(...)), and the batch's are the singles'.
    model, processor, path = converted
    native = _native_model(path)
    from PIL import Image

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in range(2)]
    opts = dict(options, max_new_tokens=9)
    batch = processor(images=images, text=PROMPTS, padding="longest", return_tensors="np")
    assert (batch["attention_mask"] == 0).any()
    hf_tokens, _ = _hf_generate(model, batch, opts)
    per_row = len(hf_tokens) // 2
    batched = _native_generate(native, batch, opts)
    for i in range(2):
        alone = processor(images=images[i:i + 1], text=PROMPTS[i:i + 1], return_tensors="np")
        tokens, scores = _hf_generate(model, alone, opts)
        assert hf_tokens[i * per_row:(i + 1) * per_row] == tokens
        for ours, ours_scores in (_native_generate(native, alone, opts)[0], batched[i]):
            assert ours == tokens, (i, opts)
            np.testing.assert_allclose(ours_scores, scores, atol=2e-4)


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_half_precision_files_load_and_equal_onnxruntime(converted, storage, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, processor, path = converted
    hf_dir = str(__import__("pathlib").Path(path).parent / "hf")
    half = str(tmp_path / f"{storage}.onnx")
    convert(hf_dir, half, dtype=storage, validate=False)
    inputs = _batch(processor)
    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    feeds = {n: np.asarray(inputs[n], np.float32 if n == "pixel_values" else np.int64) for n in names}
    session = ort.InferenceSession(half, providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], feeds)[0]
    ours = _native_model(half).forward(*(feeds[n] for n in names))
    real = feeds["attention_mask"].astype(bool)
    assert np.abs(ours - theirs)[real].max() <= TOLERANCE


def test_int8_generation_stays_close(converted):
    # int8 weights and activations: the logits move by a few hundredths.
    model, processor, path = converted
    inputs = _batch(processor)
    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    args = [np.asarray(inputs[n], np.float32 if n == "pixel_values" else np.int64) for n in names]
    exact = _native_model(path).forward(*args)
    int8 = _native_model(path, "i8").forward(*args)
    real = args[2].astype(bool)
    assert np.isfinite(int8).all()
    assert np.abs(int8 - exact)[real].max() < 0.1 * max(1.0, np.abs(exact).max())


def test_engine_loads_a_paligemma_file_and_answers_as_transformers(converted):
    from PIL import Image

    from pali_engine import Engine

    model, processor, path = converted
    engine = Engine.load(path)
    rng = np.random.default_rng(9)
    images = [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in range(2)]
    results = engine.generate(images, PROMPTS, max_new_tokens=7, num_beams=2)
    streamed = "".join(engine.stream(images[0], PROMPTS[0], max_new_tokens=7))
    for i, result in enumerate(results):
        alone = processor(images=images[i:i + 1], text=PROMPTS[i:i + 1], return_tensors="np")
        tokens, scores = _hf_generate(model, alone, {"max_new_tokens": 7, "num_beams": 2})
        assert result.tokens == tokens[0]
        assert result.score == pytest.approx(scores[0], abs=2e-4)
        assert result.text == processor.decode([t for t in tokens[0] if t != 1], skip_special_tokens=False)
    greedy = engine.generate(images[0], PROMPTS[0], max_new_tokens=7)
    assert streamed == greedy.text


def _rewrite_config(path, out, edit):
    import onnx

    model = onnx.load(path)
    for entry in model.metadata_props:
        if entry.key == "pali.config":
            config = json.loads(entry.value)
            edit(config)
            entry.value = json.dumps(config)
    onnx.save_model(model, out)
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["text_config"].pop("head_dim"), "text_config.head_dim"),
    (lambda c: c["text_config"].update(num_hidden_layers=9, layer_types=["full_attention"] * 9), "missing"),
    (lambda c: c["text_config"].update(model_type="llama"), "text_config.model_type"),
    (lambda c: c["vision_config"].update(hidden_act="relu"), "hidden_act"),
    (lambda c: c.update(num_image_tokens=3), "num_image_tokens"),
])
def test_a_broken_paligemma_file_is_refused_naming_it(converted, tmp_path, edit, match):
    from pali_engine import Engine

    _, _, path = converted
    bad = _rewrite_config(path, str(tmp_path / "bad.onnx"), edit)
    with pytest.raises(ModelFileError, match=match) as caught:
        Engine.load(bad)
    assert bad in str(caught.value)


def test_command_line_converts_runs_and_draws(converted, tmp_path, capsys):
    from pali_engine import cli
    from test_segmentation import random_params

    _, _, path = converted
    hf_dir = str(__import__("pathlib").Path(path).parent / "hf")
    out = str(tmp_path / "cli.onnx")
    assert cli.main(["convert", hf_dir, "-o", out, "--dtype", "bfloat16", "--no-validate", "--quiet"]) == 0
    image = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "shapes.png")
    vae = tmp_path / "vae-oid.npz"
    np.savez(vae, **random_params())
    drawn = tmp_path / "drawn.png"
    assert cli.main(["run", image, "segment cat", "--model", out, "--max-new-tokens", "6", "--draw", str(drawn),
                     "--vae", str(vae)]) == 0
    assert drawn.is_file()
    capsys.readouterr()


def test_draw_objects_marks_boxes_and_masks(tmp_path):
    from PIL import Image

    from pali_engine.segmentation import MaskDecoder, draw_objects
    from test_segmentation import random_params

    seg = "".join(f"<seg{c:03d}>" for c in range(16))
    image = np.zeros((100, 200, 3), np.uint8)
    out = tmp_path / "objects.png"
    assert draw_objects(image, f"<loc0256><loc0128><loc0768><loc0512>{seg} cat", str(out),
                        MaskDecoder(random_params())) == 1
    drawn = np.asarray(Image.open(out))
    assert drawn.shape == (100, 200, 3) and drawn[25:75, 25:100].any() and not drawn[:, 110:].any()


def test_paligemma_results_parse_their_objects(converted):
    from pali_engine.generation import GenerationResult
    from pali_engine.paligemma_backend import PaliGemmaBackend

    _, _, path = converted
    backend = PaliGemmaBackend(path)
    seg = "".join(f"<seg{c:03d}>" for c in range(16))
    result = GenerationResult(f"<loc0256><loc0128><loc0768><loc0512>{seg} cat", [], 0.0, {}, (200, 100),
                              backend.parse_objects)
    [cat] = result.objects
    assert cat.label == "cat" and cat.codes == list(range(16))
    assert cat.box == pytest.approx((25.0, 25.0, 100.0, 75.0))


@pytest.fixture(scope="module")
def converted_bf16(converted, tmp_path_factory):
    """The same checkpoint stored in bfloat16, as the released ones are."""
    model, processor, path = converted
    hf_dir = os.path.join(os.path.dirname(path), "hf")
    out = str(tmp_path_factory.mktemp("bf16") / "paligemma-bf16.onnx")
    convert(hf_dir, out, dtype="bfloat16")
    return processor, out


def _forward(path, weight_format, processor):
    inputs = _batch(processor)
    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    args = [np.asarray(inputs[n], np.float32 if n == "pixel_values" else np.int64) for n in names]
    return _native_model(path, weight_format).forward(*args), args[2].astype(bool)


def _rms(error, real):
    return float(np.sqrt(np.mean(np.square(error[real]))))


def _bfloat16_rounded(model):
    """A float32 copy of the model with its weights rounded to bfloat16, as the bfloat16 file holds them."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    return rounded


def test_bfloat16_weights_are_as_close_as_transformers_in_bfloat16(converted, converted_bf16):
    # bf16 holds the file's weights exactly; only the prefill on AVX-512 BF16
    # rounds activations to bfloat16 (each linear layer's input), which moves
    # the logits less than transformers computing all of it in bfloat16 does.
    model, _, _ = converted
    processor, path = converted_bf16
    inputs = _batch(processor)
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    reference = _bfloat16_rounded(model)
    exact = _logits(reference, inputs)
    theirs = _logits(reference.bfloat16(), inputs)
    ours, _ = _forward(path, "bf16", processor)
    ours_f32, _ = _forward(path, "f32", processor)
    assert np.abs(ours_f32 - exact)[real].max() < TOLERANCE * max(1.0, np.abs(exact).max())
    assert _rms(ours - exact, real) <= _rms(theirs - exact, real)


def _int4_like_the_engine(model, weight_format):
    """transformers' model with the engine's int4 weights: every linear layer (and
    the patch embedding) the engine quantizes holds the engine's effective
    weights, the output layer too, untied from the input embeddings, which keep
    bfloat16."""
    from pali_engine._core import ops

    quantized = _bfloat16_rounded(model)
    effective = lambda w: ops.prepare_linear(w.reshape(w.shape[0], -1), None, weight_format).effective_weight()
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not name.endswith("lm_head"):
                w = module.weight.detach().numpy()
                module.weight.copy_(torch.from_numpy(effective(w).reshape(w.shape)))
        table = quantized.get_input_embeddings().weight.detach().numpy()
        quantized.lm_head.weight = torch.nn.Parameter(torch.from_numpy(effective(table)))
    return quantized


@pytest.fixture
def exact_float_kernel():
    """The best float kernel whose products are exact float32 ones throughout the prefill: not
    avx512_bf16's or amx's bfloat16 pairs, nor the int8 activations of AVX-512's W4A8 prefill of int4."""
    from pali_engine._core import ops

    ops.set_linear_kernel([k for k in ops.linear_kernels_available()
                           if k not in ("avx512_bf16", "amx", "avx512")][0])
    yield
    ops.set_linear_kernel("auto")


@pytest.mark.parametrize("weight_format", ["i4", "i4_g64", "i4_g128"])
def test_int4_logits_equal_transformers_on_the_same_quantized_weights(converted, converted_bf16, weight_format,
                                                                    exact_float_kernel):
    model, _, _ = converted
    processor, path = converted_bf16
    inputs = _batch(processor)
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    theirs = _logits(_int4_like_the_engine(model, weight_format), inputs)
    ours, _ = _forward(path, weight_format, processor)
    assert np.abs(ours - theirs)[real].max() < TOLERANCE * max(1.0, np.abs(theirs).max())


@pytest.mark.parametrize("kernel, bound", [("amx", 1.0), ("avx512_bf16", 2.0), ("avx512", 2.0)])
def test_int4_prefill_is_about_as_close_as_transformers_in_bfloat16(converted, converted_bf16, kernel, bound):
    # With AMX the int4 prefill multiplies bfloat16 pairs: no further from the exact logits than
    # transformers in bfloat16. On AVX-512 without AMX it takes x in int8 blocks of 32 (W4A8), whose
    # steps of 1/254 of a block's largest |x| are about twice bfloat16's relative 1/512.
    from pali_engine._core import ops

    if kernel not in ops.linear_kernels_available():
        pytest.skip(f"this CPU has no {kernel} kernel")
    model, _, _ = converted
    processor, path = converted_bf16
    inputs = _batch(processor)
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    reference = _int4_like_the_engine(model, "i4")
    exact = _logits(reference, inputs)
    theirs = _logits(reference.bfloat16(), inputs)
    ops.set_linear_kernel(kernel)
    try:
        ours, _ = _forward(path, "i4", processor)
    finally:
        ops.set_linear_kernel("auto")
    assert _rms(ours - exact, real) <= bound * _rms(theirs - exact, real)
