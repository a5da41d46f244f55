"""The config and generation-option tables defined once in C++, as Python sees them.

The strict JSON reader that reads every file's ``pali.config`` is checked
against Python's ``json`` on fresh random documents and on the inputs where the
two deliberately differ (duplicate keys, lone surrogates, integers of more
than 4300 digits, nesting past 1000 levels); the architectures' tables against
the files the exporter and converter write; the generation options' defaults
against transformers' ``GenerationConfig``.
"""

from __future__ import annotations

import json
import math
import random

import pytest

import pali_engine
from pali_engine import _native, generation, model_spec

core = _native._core


def random_document(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 6 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 7, 2**62, -(2**63), rng.randrange(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e-300, 3.4e38, rng.uniform(-1e6, 1e6), math.ldexp(rng.random(), -1074)])
    if kind == 4:
        alphabet = "ab \"\\/\b\f\n\r\t\u00e9\u4e2d\U0001f600\x01"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))
    if kind in (5, 6):
        return [random_document(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}{rng.choice('xyz')}": random_document(rng, depth + 1) for i in range(rng.randrange(4))}


@pytest.mark.parametrize("seed", range(5))
def test_the_json_reader_reads_what_python_writes(seed):
    rng = random.Random(seed)
    for _ in range(200):
        document = random_document(rng)
        for text in (json.dumps(document), json.dumps(document, ensure_ascii=False, indent=rng.randrange(3))):
            assert core.parse_json(text) == json.loads(text), text


def test_the_json_reader_keeps_pythons_conventions():
    assert math.isnan(core.parse_json("NaN"))
    assert core.parse_json("[Infinity, -Infinity]") == [math.inf, -math.inf]
    assert core.parse_json("1e400") == math.inf and core.parse_json("-1e-400") == 0.0
    assert core.parse_json("[1.0, 1, -0]") == [1.0, 1, 0] and type(core.parse_json("1.0")) is float
    big = core.parse_json(str(2**63))  # beyond int64: held as a number so that range checks can name it
    assert big == float(2**63)


@pytest.mark.parametrize("text, fragment", [
    ('{"a": 1, "a": 2}', "appears twice"),
    ('"\\ud800"', "lone surrogate"),
    ('"\\udc00x"', "lone surrogate"),
    ('"\\ud800\\u0041"', "lone surrogate"),
    ("7" * 4301, "more than 4300 digits"),
    ("[" * 1001 + "]" * 1001, "nested too deeply"),
    ("[1, 2", "',' or ']' was expected"),
    ("{} x", "extra data"),
    ('"a\nb"', "control character"),
    ("01", "extra data"),
    ("-", "a digit was expected"),
    ("1.", "a digit was expected after '.'"),
    ('"\\x"', "unknown escape"),
    ("", "the text ends"),
    ("nul", "a value was expected"),
])
def test_the_json_reader_refuses_malformed_text_naming_the_fault(text, fragment):
    with pytest.raises(ValueError, match="is not valid JSON|is nested too deeply") as caught:
        core.parse_json(text)
    assert fragment in str(caught.value)


def test_the_pali_table_is_the_bundled_models_config():
    config = core.check_config(pali_engine.inspect(pali_engine.default_model_path())["metadata"]["pali.config"])
    fields = model_spec.config_fields("pali")
    assert [f.name for f in fields] == list(config)
    optional = {f.name: f.default for f in fields if f.default is not model_spec.REQUIRED}
    assert optional == {"resample": "bilinear", "vision_layer_norm_eps": 1e-6, "layer_norm_epsilon": 1e-6,
                        "unk_token_id": 2}
    assert model_spec.architectures().keys() == {"pali", "paligemma"}


def test_the_paligemma_table_has_its_sections_and_fills_defaults():
    fields = {f.name: f for f in model_spec.config_fields("paligemma")}
    assert fields["text_config"].kind == "object" and fields["vision_config"].kind == "object"
    text = {f.name: f for f in fields["text_config"].fields}
    assert text["model_type"].choices == ("gemma", "gemma2")
    assert text["sliding_window"].nullable and text["rope_theta"].default == 10000.0
    with pytest.raises(ValueError, match=r"lacks the field\(s\) .*text_config\.head_dim"):
        core.check_config({"architecture": "paligemma", "text_config": {"model_type": "gemma"}, "vision_config": {}})


def test_an_unknown_architecture_lists_those_this_build_reads():
    with pytest.raises(ValueError, match="architecture 't5' is not supported by this version "
                                         r"\(it reads 'pali', 'paligemma'\)"):
        core.check_config('{"architecture": "t5"}')
    with pytest.raises(ValueError, match=r"lacks the field\(s\) architecture"):
        core.check_config("{}")


def test_the_expected_tensors_come_from_the_model_code():
    config = core.check_config(pali_engine.inspect(pali_engine.default_model_path())["metadata"]["pali.config"])
    tensors = pali_engine.inspect(pali_engine.default_model_path())["tensors"]
    expected = model_spec.expected_parameter_shapes(config)
    assert expected == {name: tuple(shape) for name, (_, shape) in tensors.items()}
    untied = dict(config, tie_word_embeddings=not config["tie_word_embeddings"])
    assert set(model_spec.expected_parameter_shapes(untied)) ^ set(expected) == {"lm_head.weight"}


def test_generation_option_defaults_are_transformers():
    from transformers import GenerationConfig

    # transformers 5 leaves unset options None and resolves them from this table at generate().
    theirs = dict(GenerationConfig._get_default_generation_params(), min_new_tokens=0)
    defaults = generation.GenerationOptions()
    for name in generation.OPTION_NAMES:
        if name in ("max_new_tokens", "seed"):
            continue  # the model's default length; transformers has no seed option
        assert getattr(defaults, name) == theirs[name], name
    assert [spec["name"] for spec in core.generation_options()] == list(generation.OPTION_NAMES)


def test_the_native_binding_and_python_parse_options_alike():
    parsed = generation.parse_options({"num_beams": 3, "early_stopping": "never"}, {"max_new_tokens": 7})
    assert parsed.max_new_tokens == 7 and parsed.early_stopping == "never" and parsed.top_k == 50
    with pytest.raises(ValueError, match="num_return_sequences \\(4\\) must be <= num_beams \\(3\\)"):
        core.parse_generation_options({"num_beams": 3, "num_return_sequences": 4}, 7)
