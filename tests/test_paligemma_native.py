"""The "paligemma" architecture on the engine's own kernels against transformers.

Tiny random PaliGemma 1 (multi-query, head_dim 256) and PaliGemma 2 (grouped
query, a sliding window shorter than the sequence, both soft-caps, a
query_pre_attn_scalar other than head_dim) are built offline by transformers,
converted, and loaded by the native PaliGemmaModel: its teacher-forced logits
on a padded batch with suffixes must be transformers' (the real positions).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from paligemma_fixtures import build_checkpoint, train_tokenizer  # noqa: E402

from pali_engine import ModelFileError, _native, inspect  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402

PROMPTS = ["caption en", "answer en how many circles are there?"]
SUFFIXES = ["a photo of a cat", "the quick brown fox jumps"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")
    train_tokenizer(path)
    return path


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
    return core.PaliGemmaModel(core.OnnxFile(path), config, weight_format, 1)


def _batch(processor, rows=2, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)) for _ in range(rows)]
    return processor(images=images, text=PROMPTS[:rows], suffix=SUFFIXES[:rows], padding="longest",
                     return_tensors="np")


def _logits(model, inputs):
    names = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad():
        return model(**{k: torch.as_tensor(np.asarray(inputs[k])) for k in names}).logits.numpy()


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
        core.PaliGemmaModel(core.OnnxFile(path), config, "f32", 1)
    config["text_config"]["model_type"] = "gemma2"
    config["projection_dim"] = 7
    with pytest.raises((ValueError, ModelFileError), match="projection_dim"):
        core.PaliGemmaModel(core.OnnxFile(path), config, "f32", 1)
