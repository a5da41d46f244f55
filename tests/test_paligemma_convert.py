"""PaliGemma conversion: logits of the converted file against transformers, the file's contract,
the processor against transformers' PaliGemmaProcessor, and the converter's errors.

The checkpoints are tiny random PaliGemma 1 (Gemma, multi-query) and 2 (Gemma 2, grouped-query,
sliding window shorter than the sequences, soft-caps on) built by transformers offline
(tests/paligemma_fixtures.py); nothing is committed or downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import pali_engine  # noqa: E402
from pali_engine.export.paligemma import CheckpointError, convert, main  # noqa: E402
from pali_engine.paligemma_processor import PaliGemmaProcessor  # noqa: E402

from paligemma_fixtures import SHAPES, build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)
from PIL import Image  # noqa: E402

TOLERANCE = 1e-4
PROMPTS = ["caption en", "answer en how many circles are there?"]
SUFFIXES = ["a cat on the mat <loc0012><loc1023>", "two"]


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma1", "paligemma2"])
def converted(request, tmp_path_factory, tokenizer_path):
    """(version, HF directory, HF model, HF processor, converted file, report)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp(f"paligemma{request.param}")
    hf_dir = str(root / "hf")
    model, processor = build_checkpoint(request.param, hf_dir, tokenizer_path, shard=request.param == 2)
    path = str(root / "paligemma.onnx")
    report = convert(hf_dir, path)
    return request.param, hf_dir, model, processor, path, report


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))]


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _ort_logits(session, inputs):
    feeds = {name: np.asarray(inputs[name], dtype=np.float32 if name == "pixel_values" else np.int64)
             for name in ("pixel_values", "input_ids", "attention_mask", "token_type_ids")}
    return session.run(["logits"], feeds)[0]


def _hf_logits(model, inputs):
    with torch.no_grad():
        return model(**{k: torch.as_tensor(np.asarray(inputs[k])) for k in
                        ("pixel_values", "input_ids", "attention_mask", "token_type_ids")}).logits.numpy()


# ------------------------------------------------------------------ logits

def test_converted_logits_equal_transformers(converted):
    """A padded batch of two prompts of different lengths with suffixes of several tokens, and one row."""
    version, _, model, processor, path, report = converted
    assert report["max_abs_error"] <= TOLERANCE
    session = _session(path)
    images = _images()
    batch = processor(images=images, text=PROMPTS, suffix=SUFFIXES, padding="longest", return_tensors="np")
    single = processor(images=images[:1], text=PROMPTS[:1], suffix=SUFFIXES[:1], return_tensors="np")
    assert (batch["attention_mask"] == 0).any()  # padding is exercised
    if version == 2:  # the sliding window is shorter than the sequence
        assert batch["input_ids"].shape[1] > 2 * SHAPES[2]["text"]["sliding_window"]
    for inputs in (batch, single):
        real = np.asarray(inputs["attention_mask"]).astype(bool)
        ours, theirs = _ort_logits(session, inputs), _hf_logits(model, inputs)
        assert ours.shape == theirs.shape == real.shape + (model.config.text_config.vocab_size,)
        assert np.abs(ours - theirs)[real].max() <= TOLERANCE


def test_prefix_is_bidirectional_and_suffix_causal(converted):
    _, _, _, processor, path, _ = converted
    session = _session(path)
    inputs = processor(images=_images()[:1], text=PROMPTS[1:], suffix=["a cat on the mat"], return_tensors="np")
    types = inputs["token_type_ids"][0]
    first_suffix = int(np.argmax(types == 1))
    base = _ort_logits(session, inputs)[0]

    def changed(position):
        other = {k: np.array(v) for k, v in inputs.items()}
        other["input_ids"][0, position] = 5 if other["input_ids"][0, position] != 5 else 6
        return _ort_logits(session, other)[0]

    # a later suffix token changes nothing before it
    after = changed(first_suffix + 2)
    assert np.array_equal(after[:first_suffix + 2], base[:first_suffix + 2])
    # the last prompt token is seen by the first prefix positions (image tokens included)
    before = changed(first_suffix - 1)
    assert np.abs(before[:3] - base[:3]).max() > 1e-6


def test_file_holds_every_weight_once_under_its_hugging_face_name(converted):
    _, hf_dir, model, _, path, _ = converted
    info = pali_engine.inspect(path)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    assert sorted(info["tensors"]) == sorted(state)
    for name, value in state.items():
        assert np.array_equal(pali_engine.load_tensor(path, name), value.numpy()), name
    metadata = info["metadata"]
    assert metadata["pali.format"] == "1"
    config = json.loads(metadata["pali.config"])
    assert config["architecture"] == "paligemma"
    assert config["text_config"]["model_type"] == model.config.text_config.model_type
    assert config["image_token_index"] == model.config.image_token_id
    with open(os.path.join(hf_dir, "tokenizer.model"), "rb") as f:
        assert base64.b64decode(metadata["pali.tokenizer"]) == f.read()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_storage_keeps_names_and_computes_in_float32(converted, tmp_path, dtype):
    version, hf_dir, model, processor, _, _ = converted
    if (version, dtype) not in ((1, "float16"), (2, "bfloat16")):
        pytest.skip("one storage dtype per model keeps the test short")
    path = str(tmp_path / f"paligemma-{dtype}.onnx")
    report = convert(hf_dir, path, dtype=dtype)
    assert report["max_abs_error"] <= TOLERANCE  # against the module with rounded weights
    info = pali_engine.inspect(path)
    assert {d for d, _ in info["tensors"].values()} == {dtype}
    name = "model.language_model.embed_tokens.weight"
    want = model.state_dict()[name].to(getattr(torch, dtype)).float().numpy()
    assert np.array_equal(np.asarray(pali_engine.load_tensor(path, name), dtype=np.float32), want)
    inputs = processor(images=_images()[:1], text=PROMPTS[:1], suffix=SUFFIXES[:1], return_tensors="np")
    rounded = type(model)(model.config).eval()
    rounded.load_state_dict({k: v.to(getattr(torch, dtype)).float() for k, v in model.state_dict().items()})
    assert np.abs(_ort_logits(_session(path), inputs) - _hf_logits(rounded, inputs)).max() <= TOLERANCE


# ------------------------------------------------------------------ processor

def _test_images():
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (12, 20, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (17, 17, 3), dtype=np.uint8)).convert("P")
    return [
        Image.fromarray(rng.integers(0, 256, (50, 33, 3), dtype=np.uint8)),  # larger, not square
        Image.fromarray(rng.integers(0, 256, (5, 8), dtype=np.uint8)),  # grayscale, smaller
        Image.fromarray(rgba),  # transparency
        palette,
        rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),  # an array, already the model's size
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)),
    ]


def test_processor_equals_transformers(converted):
    _, _, _, hf, path, _ = converted
    ours = PaliGemmaProcessor.from_model_file(path)
    images = _test_images()
    prompts = ["caption en", "answer en  how many circles are there?", "detect cat ; dog", "ocr",
               "segment <seg012> the red car <loc0001>", "describe en Ünïcode 123"]
    suffixes = ["a cat", "two  dogs", "<loc0001><loc0002><loc0003><loc0004> cat", "", "x", "the lazy dog\n"]
    for kwargs in ({}, {"suffix": suffixes}):
        theirs = hf(images=images, text=prompts, padding="longest", return_tensors="np", **kwargs)
        mine = ours(images, prompts, kwargs.get("suffix"))
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert np.array_equal(mine[key], theirs[key]), key
        assert mine["pixel_values"].dtype == np.float32
        assert np.array_equal(mine["pixel_values"], theirs["pixel_values"])
    for image in images:  # one at a time too (no padding)
        assert np.array_equal(ours.preprocess_image(image),
                              hf.image_processor(image, return_tensors="np")["pixel_values"][0])


def test_processor_refuses_mismatched_batches(converted):
    ours = PaliGemmaProcessor.from_model_file(converted[4])
    with pytest.raises(ValueError, match="one image per prompt"):
        ours(_images(), ["caption en"])
    with pytest.raises(ValueError, match="uint8"):
        ours.preprocess_image(np.zeros((4, 4, 3), dtype=np.float32))


# ------------------------------------------------------------------ command line and errors

def test_command_line_writes_the_file(converted, tmp_path, capsys):
    _, hf_dir, _, _, _, _ = converted
    out = tmp_path / "cli.onnx"
    assert main([hf_dir, "-o", str(out), "--no-validate", "--quiet"]) == 0
    assert out.is_file() and "parameters" in capsys.readouterr().out


def _copy(hf_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(hf_dir, target)
    return target


def _edit_config(directory, edit):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_errors_name_the_missing_file_or_the_field(converted, tmp_path, capsys):
    version, hf_dir, _, _, _, _ = converted
    out = str(tmp_path / "never.onnx")
    d = _copy(hf_dir, tmp_path)
    weights = "model-00001-of-00005.safetensors" if version == 2 else "model.safetensors"
    os.rename(d / weights, d / "moved")
    with pytest.raises(CheckpointError, match=weights):
        convert(d, out)
    os.rename(d / "moved", d / weights)

    os.rename(d / "tokenizer.model", d / "moved")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        convert(d, out)
    os.rename(d / "moved", d / "tokenizer.model")

    _edit_config(d, lambda c: c["text_config"].update(model_type="llama"))
    with pytest.raises(CheckpointError, match=r"text_config\.model_type is 'llama'"):
        convert(d, out)
    assert main([str(d), "-o", out]) == 1
    assert "text_config.model_type" in capsys.readouterr().err

    _edit_config(d, lambda c: c["text_config"].update(model_type="gemma2" if version == 1 else "gemma"))
    with pytest.raises(CheckpointError, match="tensor"):  # the weights no longer fit the config
        convert(d, out)

    _edit_config(d, lambda c: c.update(model_type="llava"))
    with pytest.raises(CheckpointError, match="model_type is 'llava'"):
        convert(d, out)
    assert not os.path.exists(out)


def test_hub_layout_converts_to_the_same_file(converted, tmp_path):
    """transformers 4's tensor names, a config.json relying on the config classes' defaults and a
    separate preprocessor_config.json (as the released checkpoints have) give the same weights and logits."""
    from safetensors.torch import load_file, save_file

    version, hf_dir, _, processor, path, _ = converted
    if version != 1:
        pytest.skip("one layout check is enough")
    d = _copy(hf_dir, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    legacy = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
              for k, v in tensors.items()}
    assert any(k.startswith("language_model.model.") for k in legacy)
    save_file(legacy, str(d / "model.safetensors"), metadata={"format": "pt"})
    _edit_config(d, lambda c: [c["text_config"].pop(k) for k in ("head_dim", "rms_norm_eps", "hidden_act",
                                                                  "rope_parameters", "max_position_embeddings")])
    combined = json.loads((d / "processor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps(combined.pop("image_processor")))
    (d / "processor_config.json").write_text(json.dumps(combined))
    out = str(tmp_path / "hub.onnx")
    convert(d, out, validate=False)
    assert pali_engine.inspect(out)["tensors"] == pali_engine.inspect(path)["tensors"]
    inputs = processor(images=_images()[:1], text=PROMPTS[:1], suffix=SUFFIXES[:1], return_tensors="np")
    assert np.array_equal(_ort_logits(_session(out), inputs), _ort_logits(_session(path), inputs))
