"""The error contract, on hostile model files and hostile arguments.

Bad input raises a ValueError that says, in one short line, what is wrong; a
fault of the model file raises ModelFileError naming the file (and the config
field); never RuntimeError, TypeError or RecursionError, and never silent
garbage (NaN pixels giving finite logits, a zero std or a NaN epsilon loading
and answering). Hostile files are the bundled model with its metadata
rewritten. After all of it, the same process still loads the bundled model and
captions the example image.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import pali_engine  # noqa: E402
from pali_engine import Engine, ModelFileError, model_spec  # noqa: E402

EXAMPLE_IMAGE = str(Path(__file__).resolve().parents[1] / "examples" / "shapes.png")
EXAMPLE_CAPTION = "a blue circle and a red star"
SHORT = 300

#: Every field of the bundled model's config and its JSON type, written out here
#: (not taken from model_spec) so that the test states the contract on its own.
FIELD_KINDS = {
    "architecture": "str", "image_size": "int", "patch_size": "int", "num_channels": "int",
    "image_mean": "floats", "image_std": "floats", "resample": "str", "vision_width": "int",
    "vision_depth": "int", "vision_heads": "int", "vision_mlp_dim": "int", "vision_layer_norm_eps": "float",
    "d_model": "int", "d_kv": "int", "num_heads": "int", "d_ff": "int", "encoder_layers": "int",
    "decoder_layers": "int", "feed_forward_proj": "str", "layer_norm_epsilon": "float",
    "relative_attention_num_buckets": "int", "relative_attention_max_distance": "int", "vocab_size": "int",
    "tie_word_embeddings": "bool", "pad_token_id": "int", "eos_token_id": "int", "unk_token_id": "int",
    "decoder_start_token_id": "int", "max_prompt_tokens": "int", "max_new_tokens": "int",
}
OPTIONAL_FIELDS = ("resample", "vision_layer_norm_eps", "layer_norm_epsilon", "unk_token_id")

WRONG_TYPES = {
    "int": ["64", 64.0, True, None],
    "float": ["1e-6", True, None, [1e-6]],
    "floats": [0.5, ["0.5", 0.5, 0.5], [True, 0.5, 0.5], None],
    "bool": ["false", 0, None],
    "str": [1, None, ["pali"]],
}

SIZE_FIELDS = ("image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "vision_mlp_dim",
               "d_model", "d_kv", "num_heads", "d_ff", "encoder_layers", "decoder_layers",
               "relative_attention_num_buckets", "relative_attention_max_distance", "vocab_size",
               "max_prompt_tokens", "max_new_tokens")
TOKEN_ID_FIELDS = ("pad_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id")
EPSILON_FIELDS = ("vision_layer_norm_eps", "layer_norm_epsilon")

#: (field, value) pairs of the right type but a value no model can have.
OUT_OF_RANGE = (
    [(name, value) for name in SIZE_FIELDS for value in (0, -1, 2**63)]
    + [(name, value) for name in TOKEN_ID_FIELDS for value in (-1, 1586, 2**63)]
    + [(name, value) for name in EPSILON_FIELDS
       for value in (math.nan, math.inf, -math.inf, -1e-6, 0.0, 1e-50, 1e300)]
    + [("num_channels", 1), ("num_channels", 4),
       ("image_mean", [math.nan, 0.5, 0.5]), ("image_mean", [0.5, math.inf, 0.5]), ("image_mean", [1e39, 0.5, 0.5]),
       ("image_mean", [0.5, 0.5]), ("image_mean", [0.5] * 4), ("image_mean", []),
       ("image_std", [0, 0.5, 0.5]), ("image_std", [0.5, -0.5, 0.5]), ("image_std", [0.5, 0.5, math.nan]),
       ("image_std", [1e-50, 0.5, 0.5]), ("image_std", [1e-40, 0.5, 0.5]), ("image_std", [0.5, 0.5]),
       ("architecture", "t5"), ("feed_forward_proj", "relu"), ("feed_forward_proj", "gated-relu"),
       ("resample", "box"),
       # relations between fields
       ("image_size", 60), ("vision_heads", 5), ("image_size", 65536),
       ("relative_attention_max_distance", 8), ("relative_attention_max_distance", 16),
       ("relative_attention_num_buckets", 3)]
)


@pytest.fixture(scope="module")
def bundled():
    """(the bundled model serialized without its metadata, its metadata, its config)."""
    model = onnx.load(pali_engine.default_model_path())
    metadata = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    return model.SerializeToString(), metadata, json.loads(metadata["pali.config"])


def write_model(bundled, path, **metadata):
    """The bundled model with metadata values replaced (a value of None removes the key)."""
    without_metadata, original, _ = bundled
    tail = onnx.ModelProto()
    for key, value in {**original, **metadata}.items():
        if value is not None:
            tail.metadata_props.add(key=key, value=value)
    # Concatenated protobuf messages parse as one: the weights are serialized once for every case.
    Path(path).write_bytes(without_metadata + tail.SerializeToString())
    return str(path)


def write_config(bundled, tmp_path, config):
    """The bundled model with ``config`` (a dict, or the JSON text itself) as its 'pali.config'."""
    text = config if isinstance(config, str) else json.dumps(config)
    return write_model(bundled, tmp_path / "hostile.onnx", **{"pali.config": text})


def assert_file_fault(path, *fragments, backend="native"):
    with pytest.raises(ValueError) as info:
        Engine.load(path, backend=backend)
    message = str(info.value)
    assert type(info.value) is ModelFileError, message
    assert path in message and len(message) < SHORT, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_bad_argument(call, *fragments):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert type(info.value) is ValueError, message
    assert len(message) < SHORT and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- the model file's config ----

def test_the_field_list_is_the_bundled_models_config(bundled):
    _, _, config = bundled
    assert set(FIELD_KINDS) == set(config) == {f.name for f in model_spec.CONFIG_FIELDS}


@pytest.mark.parametrize("name, value", [(name, value) for name, kind in FIELD_KINDS.items()
                                         for value in WRONG_TYPES[kind]])
def test_a_field_of_the_wrong_type_is_a_model_file_error(bundled, tmp_path, name, value):
    _, _, config = bundled
    path = write_config(bundled, tmp_path, {**config, name: value})
    assert_file_fault(path, f"'{name}'" if name != "architecture" else name)


def test_a_vocab_size_given_as_a_string_names_the_field(bundled, tmp_path):
    _, _, config = bundled
    path = write_config(bundled, tmp_path, {**config, "vocab_size": "1586"})
    assert_file_fault(path, "'pali.config' field 'vocab_size' must be an integer, got '1586'")


@pytest.mark.parametrize("name, value", OUT_OF_RANGE)
def test_a_field_out_of_range_is_a_model_file_error(bundled, tmp_path, name, value):
    _, _, config = bundled
    path = write_config(bundled, tmp_path, {**config, name: value})
    assert_file_fault(path, name)


@pytest.mark.parametrize("distance", [8, 16])
def test_position_buckets_must_be_defined(bundled, tmp_path, distance):
    # Loaded, then generate() failed on a bucket of -8 (a float-to-int cast of a negative log ratio).
    _, _, config = bundled
    path = write_config(bundled, tmp_path, {**config, "relative_attention_max_distance": distance})
    assert_file_fault(path, "relative_attention_max_distance", "relative_attention_num_buckets // 2 (16)")


@pytest.mark.parametrize("name", sorted(set(FIELD_KINDS) - set(OPTIONAL_FIELDS)))
def test_a_missing_required_field_is_named(bundled, tmp_path, name):
    _, _, config = bundled
    path = write_config(bundled, tmp_path, {k: v for k, v in config.items() if k != name})
    assert_file_fault(path, "lacks the field(s)", name)


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"image_mean": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("{", "not valid JSON"),
    ('{"vocab_size": ' + "7" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("null", "not a JSON object"),
])
def test_a_config_that_is_not_a_json_object_is_a_model_file_error(bundled, tmp_path, text, fragment):
    assert_file_fault(write_config(bundled, tmp_path, text), fragment)


def test_a_deep_value_inside_a_field_is_described_not_printed(bundled, tmp_path):
    _, _, config = bundled
    deep = json.loads("[" * 500 + "]" * 500)
    path = write_config(bundled, tmp_path, {**config, "image_mean": [deep, 0.5, 0.5]})
    assert_file_fault(path, "'image_mean'[0] must be a number")


def test_optional_fields_take_their_defaults_and_unknown_fields_are_ignored(bundled, tmp_path):
    # The native engine used to require unk_token_id, layer_norm_epsilon and vision_layer_norm_eps.
    _, _, config = bundled
    lean = {k: v for k, v in config.items() if k not in OPTIONAL_FIELDS}
    engine = Engine.load(write_config(bundled, tmp_path, {**lean, "a_future_field": [1, 2]}))
    assert engine.config == config
    assert engine.generate(EXAMPLE_IMAGE, "caption en").text == EXAMPLE_CAPTION


def test_a_tokenizer_larger_than_the_vocabulary_is_a_model_file_error(bundled, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    _, metadata, _ = bundled
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(base64.b64decode(metadata["pali.tokenizer"]))
    extra = proto.pieces.add()
    extra.piece, extra.score, extra.type = "zzqq", 0.0, sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    path = write_model(bundled, tmp_path / "big-tokenizer.onnx",
                       **{"pali.tokenizer": base64.b64encode(proto.SerializeToString()).decode("ascii")})
    assert_file_fault(path, "1587 pieces", "vocab_size (1586)")


def test_the_native_engines_own_config_check_names_the_file(bundled, tmp_path, monkeypatch):
    # The C++ PaliConfig::validate stands behind the Python check: its ValueError must name the file too.
    checked = model_spec.check_config
    monkeypatch.setattr(model_spec, "check_config", lambda config: {**checked(config), "feed_forward_proj": "relu"})
    path = write_model(bundled, tmp_path / "model.onnx")
    assert_file_fault(path, "feed_forward_proj")


# ---- arguments ----

@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("onnxruntime")
    return {"native": Engine.load(), "onnxruntime": Engine.load(backend="onnxruntime")}


@pytest.fixture(scope="module")
def inputs(engines):
    backend = engines["native"]._backend
    ids, mask = backend.encode_prompts(["caption en"])
    return backend.pixel_values([EXAMPLE_IMAGE]), ids, mask, np.zeros((1, 2), np.int64)


def _with(index, value):
    def change(px, ids, mask, dec):
        args = [px, ids, mask, dec]
        args[index] = value(*args) if callable(value) else value
        return args
    return change


def _nan_pixel(px, *_):
    out = px.copy()
    out[0, 1, 2, 3] = np.nan
    return out


BAD_LOGITS_INPUTS = {
    "nan pixel": (_with(0, _nan_pixel), "NaN or infinite"),
    "inf pixels": (_with(0, lambda px, *_: np.full_like(px, np.inf)), "NaN or infinite"),
    "float64 pixels beyond float32": (_with(0, lambda px, *_: px.astype(np.float64) * 1e300), "NaN or infinite"),
    "ragged pixel lists": (_with(0, [[[1.0, 2.0], [3.0]]]), "pixel_values must be an array"),
    "string pixels": (_with(0, "pixels"), "pixel_values must be an array"),
    "object pixels": (_with(0, lambda px, *_: px.astype(object)), "pixel_values must be an array"),
    "pixels of rank 3": (_with(0, lambda px, *_: px[0]), "4 dimensions"),
    "pixels of the wrong size": (_with(0, lambda px, *_: px[:, :, :32]), "pixel_values must have shape"),
    "empty batch": (lambda px, ids, mask, dec: (px[:0], ids[:0], mask[:0], dec[:0]), "batch >= 1"),
    "float input ids": (_with(1, lambda px, ids, *_: ids.astype(np.float64)), "input_ids must be an array"),
    "input id past the vocabulary": (_with(1, lambda px, ids, *_: ids + 1586), "[0, 1586)"),
    "negative input id": (_with(1, lambda px, ids, *_: ids - 3), "[0, 1586)"),
    "uint64 input ids": (_with(1, lambda px, ids, *_: np.full(ids.shape, 2**64 - 1, np.uint64)), "[0, 1586)"),
    "input ids of another batch": (_with(1, lambda px, ids, *_: np.repeat(ids, 2, 0)), "input_ids must have shape"),
    "prompt longer than the model takes": (lambda px, ids, mask, dec: (px, np.ones((1, 33), np.int64),
                                                                      np.ones((1, 33), np.int64), dec),
                                           "max_prompt_tokens"),
    "mask of 2s": (_with(2, lambda px, ids, mask, dec: mask * 2), "attention_mask must hold only 0"),
    "mask of another shape": (_with(2, lambda px, ids, mask, dec: mask[:, :1]), "attention_mask must have the shape"),
    "decoder id past the vocabulary": (_with(3, lambda *a: a[3] + 5000), "decoder_input_ids must be token ids"),
    "negative decoder id": (_with(3, lambda *a: a[3] - 1), "decoder_input_ids must be token ids"),
    "empty decoder ids": (_with(3, lambda *a: a[3][:, :0]), "decoder_input_ids must have shape"),
    "decoder ids as strings": (_with(3, [["0", "1"]]), "decoder_input_ids must be an array"),
}


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("case", sorted(BAD_LOGITS_INPUTS))
def test_bad_logits_inputs_are_one_line_value_errors(engines, inputs, backend, case):
    change, fragment = BAD_LOGITS_INPUTS[case]
    args = change(*inputs)
    assert_bad_argument(lambda: engines[backend].logits(*args), fragment)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_logits_take_nested_lists_and_masks_of_bools(engines, inputs, backend):
    px, ids, mask, dec = inputs
    expected = engines[backend].logits(px, ids, mask, dec)
    assert np.isfinite(expected).all()
    as_lists = engines[backend].logits(px.tolist(), ids.tolist(), mask.astype(bool), dec.tolist())
    np.testing.assert_array_equal(as_lists, expected)


BAD_OPTIONS = [
    ({"top_k": 2**63}, "top_k must be between 0 and 2147483647"),
    ({"top_k": 10**5000}, "top_k must be between 0 and 2147483647, got an integer of"),
    ({"max_new_tokens": 2**63}, "max_new_tokens must be between 1 and"),
    ({"min_new_tokens": 2**63}, "min_new_tokens must be between 0 and"),
    ({"num_beams": 2**31}, "num_beams must be between 1 and 2147483647"),
    ({"num_return_sequences": 2**40, "do_sample": True}, "num_return_sequences must be between 1 and"),
    ({"no_repeat_ngram_size": 2**63}, "no_repeat_ngram_size must be between 0 and"),
    ({"seed": 2**64}, "seed must be between 0 and 18446744073709551615"),
    ({"seed": -1}, "seed must be between 0 and"),
    ({"temperature": 1e300, "do_sample": True}, "temperature must be a finite number (float32)"),
    ({"length_penalty": -1e39, "num_beams": 2}, "length_penalty must be a finite number (float32)"),
]


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("options, fragment", BAD_OPTIONS)
def test_options_out_of_the_engines_range_give_the_range(engines, backend, options, fragment):
    assert_bad_argument(lambda: engines[backend].generate(EXAMPLE_IMAGE, "caption en", **options), fragment)


def test_the_largest_seed_is_taken(engines):
    result = engines["native"].generate(EXAMPLE_IMAGE, "caption en", do_sample=True, seed=2**64 - 1,
                                        max_new_tokens=3)
    assert len(result.tokens) <= 3


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("prompts, index", [
    ("caption \ud800 en", 0),
    (["caption en", "caption \udfff"], 1),
    (["\udc80"], 0),
])
def test_a_prompt_that_is_not_text_names_its_index(engines, backend, prompts, index):
    images = EXAMPLE_IMAGE if isinstance(prompts, str) else [EXAMPLE_IMAGE] * len(prompts)
    assert_bad_argument(lambda: engines[backend].generate(images, prompts, max_new_tokens=2),
                        f"prompt {index}", "lone surrogate")


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("threads", [2**40, 2**63, 4097, 0, -1, True, 2.0, "4"])
def test_threads_out_of_range_is_a_short_value_error(backend, threads):
    assert_bad_argument(lambda: Engine.load(backend=backend, threads=threads), "threads must be an integer between 1")


# ---- and the process is still healthy ----

@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_after_all_the_errors_the_bundled_model_still_captions(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    engine = Engine.load(backend=backend)
    assert engine.generate(EXAMPLE_IMAGE, "caption en").text == EXAMPLE_CAPTION
