"""The native engine against the onnxruntime reference and PyTorch on the same files.

Random-weight models of several shapes (odd head sizes, gated-SiLU, tied
embeddings): teacher-forced logits within 1e-4 of both references, and greedy
and beam-search tokens identical to the onnxruntime backend's.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import pali_engine  # noqa: E402
from export_fixtures import export_tiny, tiny_model  # noqa: E402

PROMPTS = ["caption en", "two three", "ocr", "le cercle"]

SHAPES = {
    "tiny": {},
    "odd": dict(image_size=24, patch_size=8, vision_width=36, vision_heads=3, vision_mlp_dim=50, d_model=40,
                d_kv=12, num_heads=3, d_ff=37, encoder_layers=3, decoder_layers=2, vocab_size=71,
                relative_attention_num_buckets=10, relative_attention_max_distance=20),
    "silu_tied": dict(feed_forward_proj="gated-silu", tie_word_embeddings=True, d_kv=16, num_heads=2),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def exported(request, tmp_path_factory):
    model = tiny_model(seed=len(request.param), **SHAPES[request.param])
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_tiny(path, model=model, validate=False)
    return model, str(path)


@pytest.fixture(scope="module")
def engines(exported):
    model, path = exported
    return model, pali_engine.Engine.load(path), pali_engine.Engine.load(path, backend="onnxruntime")


def random_images(rng, n, size):
    return [rng.integers(0, 256, (size + int(rng.integers(0, 9)), size + 3, 3), dtype=np.uint8) for _ in range(n)]


def test_logits_match_onnxruntime_and_pytorch(engines):
    model, native, ort = engines
    rng = np.random.default_rng()
    c = native.config
    for batch, target_len in ((1, 1), (3, 7)):
        prompts = [PROMPTS[int(i)] for i in rng.integers(0, len(PROMPTS), batch)]
        ids, mask = native._backend.encode_prompts(prompts)
        pixels = rng.uniform(-1, 1, (batch, 3, c["image_size"], c["image_size"])).astype(np.float32)
        decoder_ids = rng.integers(0, c["vocab_size"], (batch, target_len))
        ours = native.logits(pixels, ids, mask, decoder_ids)
        reference = ort.logits(pixels, ids, mask, decoder_ids)
        with torch.no_grad():
            expected = model(torch.from_numpy(pixels), torch.from_numpy(ids), torch.from_numpy(mask),
                             torch.from_numpy(decoder_ids)).numpy()
        assert ours.shape == reference.shape == (batch, target_len, c["vocab_size"])
        assert np.abs(ours - reference).max() <= 1e-4
        assert np.abs(ours - expected).max() <= 1e-4


@pytest.mark.parametrize("options", [
    {},
    {"num_beams": 3},
    {"num_beams": 4, "length_penalty": 0.5, "num_return_sequences": 2},
    {"num_beams": 2, "early_stopping": True, "min_new_tokens": 4},
    {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
])
def test_tokens_match_onnxruntime(engines, options):
    _, native, ort = engines
    rng = np.random.default_rng()
    images = random_images(rng, 3, native.config["image_size"])
    prompts = PROMPTS[:3]
    ours = native.generate(images, prompts, max_new_tokens=7, **options)
    reference = ort.generate(images, prompts, max_new_tokens=7, **options)
    flatten = (lambda rs: [r for group in rs for r in group]) if options.get("num_return_sequences", 1) > 1 else list
    for a, b in zip(flatten(ours), flatten(reference)):
        assert a.tokens == b.tokens
        assert a.text == b.text
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_sampling_is_reproducible_with_a_seed(engines):
    _, native, _ = engines
    image = random_images(np.random.default_rng(), 1, native.config["image_size"])[0]
    options = dict(do_sample=True, top_k=5, top_p=0.9, temperature=1.5, seed=7, max_new_tokens=6)
    first = native.generate(image, "ocr", **options)
    assert native.generate(image, "ocr", **options).tokens == first.tokens
    several = native.generate(image, "ocr", num_return_sequences=3, **{k: v for k, v in options.items()})
    assert len(several) == 3


def test_stream_pieces_join_to_the_generated_text(engines):
    _, native, _ = engines
    image = random_images(np.random.default_rng(), 1, native.config["image_size"])[0]
    text = native.generate(image, "caption en", max_new_tokens=9).text
    assert "".join(native.stream(image, "caption en", max_new_tokens=9)) == text
    assert "".join(native.stream(image, "caption en", max_new_tokens=9, num_beams=2)) == \
        native.generate(image, "caption en", max_new_tokens=9, num_beams=2).text


def test_tokenizer_decodes_the_generated_tokens(engines):
    _, native, ort_engine = engines
    image = random_images(np.random.default_rng(), 1, native.config["image_size"])[0]
    r = native.generate(image, "caption en", max_new_tokens=9)
    assert native.tokenizer.decode(r.tokens) == r.text
    assert native.tokenizer.vocab_size <= native.config["vocab_size"]  # a model may pad its vocabulary
    assert ort_engine.tokenizer.encode("caption en") == native.tokenizer.encode("caption en")
    assert native.tokenizer.encode("caption en")[-1] == native.config["eos_token_id"]


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-2), ("int8", 0.25)])
def test_half_and_int8_weights_stay_close(exported, dtype, tolerance):
    """Relative to the logits' spread: f16 rounds weights to 11 bits, int8 to 8 bits per channel."""
    _, path = exported
    full = pali_engine.Engine.load(path)
    reduced = pali_engine.Engine.load(path, dtype=dtype)
    rng = np.random.default_rng()
    c = full.config
    ids, mask = full._backend.encode_prompts(PROMPTS[:2])
    pixels = rng.uniform(-1, 1, (2, 3, c["image_size"], c["image_size"])).astype(np.float32)
    decoder_ids = rng.integers(0, c["vocab_size"], (2, 5))
    a = full.logits(pixels, ids, mask, decoder_ids)
    b = reduced.logits(pixels, ids, mask, decoder_ids)
    assert np.abs(a - b).max() <= tolerance * a.std()


def test_int8_kernels_give_the_same_model_outputs(exported):
    """int8 runs W8A8: every integer kernel this CPU has computes the same sums, so the same logits."""
    from pali_engine._core import ops

    _, path = exported
    engine = pali_engine.Engine.load(path, dtype="int8")
    rng = np.random.default_rng()
    c = engine.config
    ids, mask = engine._backend.encode_prompts(PROMPTS[:2])
    pixels = rng.uniform(-1, 1, (2, 3, c["image_size"], c["image_size"])).astype(np.float32)
    decoder_ids = rng.integers(0, c["vocab_size"], (2, 5))
    images = random_images(rng, 2, c["image_size"])
    results = {}
    try:
        for kernel in ops.int8_kernels_available():
            ops.set_int8_kernel(kernel)
            results[kernel] = (engine.logits(pixels, ids, mask, decoder_ids),
                               engine.generate(images, PROMPTS[:2], max_new_tokens=6))
    finally:
        ops.set_int8_kernel("auto")
    first = next(iter(results.values()))
    for logits, generated in results.values():
        np.testing.assert_array_equal(logits, first[0])
        assert [r.tokens for r in generated] == [r.tokens for r in first[1]]


def test_concurrent_calls_give_the_same_results(engines):
    _, native, _ = engines
    rng = np.random.default_rng()
    images = random_images(rng, 4, native.config["image_size"])
    expected = [native.generate(im, "caption en", max_new_tokens=6).tokens for im in images]
    results = [None] * 8
    errors = []

    def work(i):
        try:
            results[i] = native.generate(images[i % 4], "caption en", max_new_tokens=6).tokens
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected[i % 4] for i in range(8)]


BAD_INPUTS = [
    (lambda: np.zeros((0, 0, 3), np.uint8), "caption en", {}, "empty|zero"),
    (lambda: np.zeros((8, 8, 5), np.uint8), "caption en", {}, "channel"),
    (lambda: np.full((8, 8, 3), np.nan, np.float32), "caption en", {}, "NaN|nan|uint8"),
    (lambda: "/nonexistent/image.png", "caption en", {}, "image|file|exist"),
    (lambda: object(), "caption en", {}, "image"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "caption en", {"max_new_tokens": 0}, "max_new_tokens"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "caption en", {"max_new_tokens": -3}, "max_new_tokens"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "caption en", {"num_beams": 0}, "num_beams"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "caption en", {"temperature": -1.0}, "temperature"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "caption en", {"beams": 2}, "unknown"),
    (lambda: np.zeros((8, 8, 3), np.uint8), "two three " * 20, {}, "at most"),
    (lambda: np.zeros((8, 8, 3), np.uint8), 42, {}, "str"),
]


@pytest.mark.parametrize("make_image, prompt, options, message", BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_the_engine_stays_usable(engines, make_image, prompt, options, message):
    _, native, _ = engines
    with pytest.raises(ValueError, match=message):
        native.generate(make_image(), prompt, **options)
    good = np.zeros((8, 8, 3), np.uint8)
    assert isinstance(native.generate(good, "ocr", max_new_tokens=2).text, str)


@pytest.mark.parametrize("options", [{"max_new_tokens": 10**12}, {"num_beams": 10**9}])
def test_a_request_larger_than_the_machine_is_refused_before_allocating(engines, options):
    _, native, _ = engines
    with pytest.raises(MemoryError, match="key/value caches .* GiB; this machine has"):
        native.generate(np.zeros((8, 8, 3), np.uint8), "caption en", **options)
    assert isinstance(native.generate(np.zeros((8, 8, 3), np.uint8), "ocr", max_new_tokens=2).text, str)


def test_bad_load_options(exported):
    _, path = exported
    with pytest.raises(ValueError, match="dtype"):
        pali_engine.Engine.load(path, dtype="float8")
    with pytest.raises(ValueError, match="threads"):
        pali_engine.Engine.load(path, threads=0)
    with pytest.raises(ValueError, match="backend"):
        pali_engine.Engine.load(path, backend="tensorflow")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_loaded_engine_does_not_keep_the_file_mapped(exported, tmp_path, dtype):
    # The model owns packed / float32 copies of its weights; holding the mapping
    # too would keep the whole file resident beside them.
    _, path = exported
    copy = tmp_path / f"unmapped-{dtype}.onnx"
    copy.write_bytes(open(path, "rb").read())
    engine = pali_engine.Engine.load(copy, dtype=dtype)
    with open("/proc/self/maps") as maps:
        assert str(copy) not in maps.read()
    image = np.zeros((8, 8, 3), np.uint8)
    assert engine.generate(image, "caption en", max_new_tokens=3).tokens


def test_native_model_names_a_misshapen_tensor(tmp_path):
    """The native loader's own check, behind the Python one: a config that lies about a shape."""
    import json

    from pali_engine import _core

    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_tiny(path, model=model, validate=False)
    config = dict(pali_engine.inspect(path)["metadata"])
    config = json.loads(config["pali.config"])
    config["d_ff"] += 1
    with pytest.raises(pali_engine.ModelFileError, match=r"'encoder\.blocks\.0\.ffn\.wi_0\.weight' has shape"):
        _core.load_model(_core.OnnxFile(str(path)), "f32", 1, config)
    config["d_ff"] -= 1
    config["decoder_layers"] -= 1
    with pytest.raises(pali_engine.ModelFileError, match="not used by the config"):
        _core.load_model(_core.OnnxFile(str(path)), "f32", 1, config)


def test_cli_run_prints_json_and_draws_boxes(exported, tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    _, path = exported
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng().integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "boxes.png"
    result = subprocess.run([sys.executable, "-m", "pali_engine.cli", "run", str(image), "ocr", "--model", path,
                             "--json", "--beams", "2", "--max-new-tokens", "4", "--draw", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"text", "tokens", "score", "timings"} and len(answer["tokens"]) <= 4
    assert Image.open(out).size[0] >= 40
    result = subprocess.run([sys.executable, "-m", "pali_engine.cli", "run", str(image), "ocr", "--model", path,
                             "--max-new-tokens", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1 and "max_new_tokens" in result.stderr and "Traceback" not in result.stderr


def test_detection_answers_parse_and_draw(tmp_path):
    from PIL import Image

    from pali_engine.detection import draw_detections, parse_detections

    text = "<loc0000><loc0512><loc1023><loc1023> red circle ; <loc0100><loc0200><loc0300><loc0400> star"
    boxes = parse_detections(text)
    assert [label for _, label in boxes] == ["red circle", "star"]
    assert boxes[0][0] == pytest.approx((512 / 1023, 0.0, 1.0, 1.0))
    image = np.zeros((64, 64, 3), np.uint8)
    assert draw_detections(image, text, str(tmp_path / "d.png")) == 2
    drawn = np.asarray(Image.open(tmp_path / "d.png"))
    assert drawn.shape == (256, 256, 3) and drawn.any()


@pytest.fixture(scope="module")
def default_engines():
    try:
        path = pali_engine.default_model_path()
    except FileNotFoundError:
        pytest.skip("this build has no bundled default model")
    return pali_engine.Engine.load(path), pali_engine.Engine.load(path, backend="onnxruntime")


def heldout_examples(per_task=1):
    from pali_engine.export import data

    world = data.ShapesWorld()
    return [e for task in data.TASKS for e in world.heldout(task, per_task)]


def test_default_model_logits_match_references(default_engines):
    native, ort = default_engines
    from pali_engine.export.model import Pali

    examples = heldout_examples()[:4]
    pixels = native._backend.pixel_values([e.image for e in examples])
    ids, mask = native._backend.encode_prompts([e.prompt for e in examples])
    decoder_ids = np.random.default_rng().integers(0, native.config["vocab_size"], (len(examples), 9))
    ours = native.logits(pixels, ids, mask, decoder_ids)
    assert np.abs(ours - ort.logits(pixels, ids, mask, decoder_ids)).max() <= 1e-4
    checkpoint = pali_engine.default_model_path().replace("models/pali-default.onnx", "export/default/pali-default.pt")
    if os.path.exists(checkpoint):
        model = Pali.load(checkpoint).double().eval()
        with torch.no_grad():
            exact = model(torch.from_numpy(pixels).double(), torch.from_numpy(ids), torch.from_numpy(mask),
                          torch.from_numpy(decoder_ids)).numpy()
        assert np.abs(ours - exact).max() <= 1e-4


@pytest.mark.parametrize("options", [{}, {"num_beams": 4}])
def test_default_model_tokens_match_onnxruntime_on_heldout_images(default_engines, options):
    native, ort = default_engines
    examples = heldout_examples()
    images, prompts = [e.image for e in examples], [e.prompt for e in examples]
    ours = native.generate(images, prompts, **options)
    reference = ort.generate(images, prompts, **options)
    assert [r.tokens for r in ours] == [r.tokens for r in reference]


def test_default_model_int8_scores_within_one_point_of_float32(default_engines):
    """The issue's bar for the reduced formats, on the held-out set the README reports (200 per task)."""
    from pali_engine.export import evaluate

    path = pali_engine.default_model_path()
    scores = {dtype: evaluate.evaluate(evaluate.make_backend("engine", path, dtype=dtype), n=200)
              for dtype in ("float32", "int8")}
    for task, full in scores["float32"].items():
        assert abs(scores["int8"][task]["score"] - full["score"]) <= 0.01, (task, scores["int8"][task], full)


def test_eval_runs_the_engine_in_each_weight_format(default_engines, capsys):
    import argparse
    import json

    from pali_engine.export import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    scores = {}
    for dtype in ("float32", "float16", "int8", "int4"):
        args = parser.parse_args(["--backend", "engine", "--dtype", dtype, "--n", "3", "--tasks", "caption_en,detect",
                                  "--json"])
        assert evaluate.run(args) == 0
        scores[dtype] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert set(scores[dtype]) == {"caption_en", "detect"} and scores[dtype]["detect"]["n"] == 3
    assert evaluate.run(parser.parse_args(["--backend", "torch", "--dtype", "int8", "--n", "1"])) == 2
    assert "--backend engine" in capsys.readouterr().err
