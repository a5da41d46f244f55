"""The onnxruntime backend and the NumPy search: tokens equal to the PyTorch model's generate,
the Engine API contract, bad options, and broken model files."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from pali_engine import generation
from pali_engine.generation import Hypothesis, parse_options

from export_fixtures import export_tiny, tiny_model, tiny_tokenizer_bytes  # noqa: E402

CONFIG = {"max_new_tokens": 8}


# --------------------------------------------------------------------------
# the search on its own (no model): a fixed table of next-token log-probs

def markov_step(table):
    """step() whose next-token scores depend only on the last token."""
    table = np.asarray(table, dtype=np.float64)

    def step(seqs):
        return table[seqs[:, -1]]

    return step


def test_parse_options_names_unknown_and_bad_values():
    with pytest.raises(ValueError, match="num_beam.*max_tokens|max_tokens.*num_beam"):
        parse_options({"num_beam": 2, "max_tokens": 3}, CONFIG)
    for bad, word in [({"max_new_tokens": 0}, "max_new_tokens"), ({"num_beams": 0}, "num_beams"),
                      ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                      ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
                      ({"num_return_sequences": 2}, "num_return_sequences"),
                      ({"do_sample": True, "temperature": 0.0}, "temperature"),
                      ({"early_stopping": "sometimes"}, "early_stopping"),
                      ({"max_new_tokens": 2.5}, "max_new_tokens"), ({"min_new_tokens": -1}, "min_new_tokens"),
                      ({"do_sample": True, "num_beams": 2}, "beam")]:
        with pytest.raises(ValueError, match=word):
            parse_options(bad, CONFIG)
    o = parse_options({}, CONFIG)
    assert o.max_new_tokens == 8 and o.num_beams == 1 and o.top_k == 50 and not o.do_sample


def test_greedy_and_min_new_tokens_on_a_table():
    # 0=start/pad, 1=eos; from 0 go to 2 (or eos), from 2 to 3, from 3 to eos
    V = 5
    t = np.full((V, V), -10.0)
    t[0, 1], t[0, 2] = 0.0, -0.5
    t[2, 3], t[3, 1], t[4, 1] = 0.0, 0.0, 0.0
    t[1, 1] = 0.0
    kw = dict(start_id=0, eos_id=1, pad_id=0)
    (h,), = generation.generate(markov_step(t), 1, parse_options({}, CONFIG), **kw)
    assert h.tokens == [1]
    (h,), = generation.generate(markov_step(t), 1, parse_options({"min_new_tokens": 2}, CONFIG), **kw)
    assert h.tokens == [2, 3, 1]
    logp = generation.log_softmax(t)
    assert h.score == pytest.approx(logp[0, 2] + logp[2, 3] + logp[3, 1])
    (h,), = generation.generate(markov_step(t), 1, parse_options({"min_new_tokens": 5, "max_new_tokens": 4}, CONFIG), **kw)
    assert len(h.tokens) == 4 and 1 not in h.tokens


def test_beam_search_finds_the_better_path_and_returns_sorted_sequences():
    # greedy takes 2 (p .6) then a poor continuation; beam finds 3 -> eos
    V = 5
    t = np.log(np.full((V, V), 1e-6))
    t[0, 2], t[0, 3] = np.log(0.6), np.log(0.4)
    t[2, 4], t[2, 1] = np.log(0.3), np.log(0.3)
    t[3, 1] = np.log(0.99)
    t[4, 1] = np.log(0.99)
    kw = dict(start_id=0, eos_id=1, pad_id=0)
    (g,), = generation.generate(markov_step(t), 1, parse_options({}, CONFIG), **kw)
    assert g.tokens[0] == 2
    opts = {"num_beams": 3, "num_return_sequences": 3, "length_penalty": 0.0}
    hyps, = generation.generate(markov_step(t), 1, parse_options(opts, CONFIG), **kw)
    assert hyps[0].tokens == [3, 1]
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[0].score == pytest.approx(np.log(0.4), abs=1e-4)
    # with length_penalty 1 the longer [2, 4, 1] wins: log(0.6 * 0.5) / 3 > log(0.4) / 2
    hyps, = generation.generate(markov_step(t), 1, parse_options({"num_beams": 3}, CONFIG), **kw)
    assert hyps[0].tokens == [2, 4, 1]
    assert hyps[0].score == pytest.approx(np.log(0.3) / 3, rel=1e-4)
    for early in (True, False, "never"):
        opts = {"num_beams": 2, "early_stopping": early, "length_penalty": 0.0}
        hyps, = generation.generate(markov_step(t), 1, parse_options(opts, CONFIG), **kw)
        assert hyps[0].tokens == [3, 1]


def test_no_repeat_ngram_and_repetition_penalty():
    assert generation.banned_ngram_tokens([0, 5, 6, 5], 2) == [6]
    assert generation.banned_ngram_tokens([0, 5, 6, 5, 6], 3) == [5]
    assert generation.banned_ngram_tokens([0, 5], 3) == []
    V = 4
    t = np.full((V, V), -5.0)
    t[:, 2] = 0.0  # always 2: 2 2 2 2 ...
    t[:, 3] = -1.0
    kw = dict(start_id=0, eos_id=1, pad_id=0)
    (h,), = generation.generate(markov_step(t), 1, parse_options({"max_new_tokens": 4}, CONFIG), **kw)
    assert h.tokens == [2, 2, 2, 2]
    (h,), = generation.generate(markov_step(t), 1, parse_options({"max_new_tokens": 4, "no_repeat_ngram_size": 2}, CONFIG), **kw)
    assert h.tokens == [2, 2, 3, 2]  # the bigram (2, 2) may not repeat
    s = generation.apply_repetition_penalty(np.array([[1.0, -1.0, 2.0, 0.5]]), np.array([[0, 1]]), 2.0)
    assert s.tolist() == [[0.5, -2.0, 2.0, 0.5]]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((6, 6))
    t[:, 1] = -3.0
    kw = dict(start_id=0, eos_id=1, pad_id=0)
    step = markov_step(t)
    a = generation.generate(step, 2, parse_options({"do_sample": True, "seed": 3, "num_return_sequences": 3}, CONFIG), **kw)
    b = generation.generate(step, 2, parse_options({"do_sample": True, "seed": 3, "num_return_sequences": 3}, CONFIG), **kw)
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]
    assert len(a) == 2 and all(len(x) == 3 for x in a)
    greedy = generation.generate(step, 1, parse_options({}, CONFIG), **kw)
    top1 = generation.generate(step, 1, parse_options({"do_sample": True, "top_k": 1, "seed": 9}, CONFIG), **kw)
    assert greedy[0][0].tokens == top1[0][0].tokens
    w = generation.warp(np.log(np.array([[0.5, 0.3, 0.15, 0.05]])), parse_options({"top_p": 0.7, "top_k": 0}, CONFIG))
    assert np.isfinite(w).tolist() == [[True, True, False, False]]


# --------------------------------------------------------------------------
# the backend on an exported random-weight model, against the PyTorch model

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pali_engine import Engine, ModelFileError  # noqa: E402
from pali_engine.backend import EvalBackend  # noqa: E402

PROMPTS = ["caption en", "ocr", "two"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3, max_new_tokens=8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ort") / "tiny.onnx"
    export_tiny(path, model, tiny_tokenizer_bytes(), validate=False)
    return path


@pytest.fixture(scope="module")
def engine(model_path):
    return Engine.load(model_path, backend="onnxruntime", threads=1)


def images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size + 3 * i, size + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def torch_generate(engine, model, imgs, prompts, **kw):
    backend = engine._backend
    ids, mask = backend.encode_prompts(prompts)
    px = torch.from_numpy(backend.pixel_values(imgs))
    tokens, scores = model.generate(px, torch.from_numpy(ids), torch.from_numpy(mask), **kw)
    out = []
    for row in tokens.tolist():
        while row and row[-1] == 0:  # pad after eos
            row.pop()
        out.append(row)
    return out, scores.tolist()


@pytest.mark.parametrize("kw", [
    {"max_new_tokens": 8},
    {"max_new_tokens": 6, "min_new_tokens": 6},
    {"max_new_tokens": 7, "num_beams": 3},
    {"max_new_tokens": 6, "num_beams": 4, "length_penalty": 0.5, "min_new_tokens": 2},
])
def test_tokens_equal_torch_generate(engine, model, kw):
    imgs = images(3)
    results = engine.generate(imgs, PROMPTS, **kw)
    ref_tokens, ref_scores = torch_generate(engine, model, imgs, PROMPTS, **kw)
    assert [r.tokens for r in results] == ref_tokens
    assert np.allclose([r.score for r in results], ref_scores, atol=1e-4)
    assert any(len(t) > 1 for t in ref_tokens)  # not only an immediate eos


def test_single_in_single_out_and_lists(engine):
    img = images(1)[0]
    one = engine.generate(img, "ocr", max_new_tokens=5)
    assert isinstance(one.text, str) and isinstance(one.tokens, list) and isinstance(one.score, float)
    assert {"preprocess_ms", "generate_ms", "total_ms"} <= set(one.timings)
    assert one.text == engine._backend.tokenizer.decode(one.tokens)
    many = engine.generate([img, img], "ocr", max_new_tokens=5)  # one prompt for every image
    assert [r.tokens for r in many] == [one.tokens, one.tokens]
    assert engine.generate([img], ["ocr"], max_new_tokens=5)[0].tokens == one.tokens
    beams = engine.generate(img, "ocr", max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert isinstance(beams, list) and len(beams) == 2 and beams[0].score >= beams[1].score
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        engine.generate([img, img], ["a", "b", "c"])


def test_stream_pieces_make_the_text(engine):
    img = images(1, seed=4)[0]
    full = engine.generate(img, "caption en", max_new_tokens=8, min_new_tokens=8)
    pieces = list(engine.stream(img, "caption en", max_new_tokens=8, min_new_tokens=8))
    assert "".join(pieces) == full.text
    assert "".join(engine.stream(img, "caption en", max_new_tokens=5, num_beams=2)) == \
        engine.generate(img, "caption en", max_new_tokens=5, num_beams=2).text


def test_bad_options_and_inputs(engine):
    img = images(1)[0]
    with pytest.raises(ValueError, match="beam_size"):
        engine.generate(img, "ocr", beam_size=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(img, "ocr", max_new_tokens=0)
    with pytest.raises(ValueError, match="num_beams"):
        engine.generate(img, "ocr", num_beams=0)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(img, "ocr", do_sample=True, temperature=-0.5)
    with pytest.raises(ValueError, match=r"at most 12 \(max_prompt_tokens\)"):
        engine.generate(img, "answer en how many circles")
    with pytest.raises(ValueError, match="image"):
        engine.generate(np.zeros((4, 4, 3), np.float32), "ocr")
    with pytest.raises(ValueError):
        engine.generate(img, 42)


def test_sampling_with_a_seed_repeats(engine):
    img = images(1)[0]
    a = engine.generate(img, "ocr", do_sample=True, seed=5, max_new_tokens=6, num_return_sequences=2)
    b = engine.generate(img, "ocr", do_sample=True, seed=5, max_new_tokens=6, num_return_sequences=2)
    assert [r.tokens for r in a] == [r.tokens for r in b]


def test_eval_backend_interface(model_path, engine):
    backend = EvalBackend("onnxruntime", str(model_path), threads=1)
    assert backend.config.image_size == 16
    imgs = images(2)
    texts = backend.generate(imgs, ["ocr", "two"], 5)
    assert texts == [r.text for r in engine.generate(imgs, ["ocr", "two"], max_new_tokens=5)]
    with pytest.raises(ValueError, match="ONNX"):
        EvalBackend("onnxruntime", str(model_path).replace(".onnx", ".pt"))


# --------------------------------------------------------------------------
# broken model files

def rewrite(src, dst, edit):
    import onnx

    proto = onnx.load(str(src))
    edit(proto)
    onnx.save_model(proto, str(dst))
    return dst


def set_meta(proto, key, value):
    for entry in list(proto.metadata_props):
        if entry.key == key:
            proto.metadata_props.remove(entry)
    if value is not None:
        proto.metadata_props.add(key=key, value=value)


def edit_config(proto, **changes):
    meta = {e.key: e.value for e in proto.metadata_props}
    config = json.loads(meta["pali.config"])
    config.update(changes)
    set_meta(proto, "pali.config", json.dumps(config))


def test_broken_files_are_named(model_path, tmp_path):
    from onnx import numpy_helper

    def load(edit):
        path = rewrite(model_path, tmp_path / "broken.onnx", edit)
        with pytest.raises(ModelFileError) as info:
            Engine.load(path, backend="onnxruntime")
        assert "broken.onnx" in str(info.value)
        return str(info.value)

    def no_meta(p):
        del p.metadata_props[:]

    assert "not a pali-engine model" in load(no_meta)
    assert "'99'" in load(lambda p: set_meta(p, "pali.format", "99"))
    assert "pali.tokenizer" in load(lambda p: set_meta(p, "pali.tokenizer", None))
    assert "SentencePiece" in load(lambda p: set_meta(p, "pali.tokenizer", base64.b64encode(b"junk").decode()))
    msg = load(lambda p: edit_config(p, d_ff=50))
    assert "encoder.blocks.0.ffn.wi_0.weight" in msg and "[50, 32]" in msg and "[48, 32]" in msg
    msg = load(lambda p: edit_config(p, decoder_layers=3))
    assert "decoder.blocks.2" in msg and "missing" in msg

    def drop(p):
        keep = [t for t in p.graph.initializer if t.name != "decoder.final_norm.weight"]
        del p.graph.initializer[:]
        p.graph.initializer.extend(keep)

    assert "'decoder.final_norm.weight' is missing" in load(drop)

    def extra(p):
        p.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "stray.weight"))

    assert "'stray.weight'" in load(extra) and "unused" in load(extra)
    with pytest.raises(ModelFileError, match="no such model file"):
        Engine.load(tmp_path / "nope.onnx", backend="onnxruntime")


def test_external_data_model_loads(model, tmp_path):
    path = tmp_path / "ext.onnx"
    export_tiny(path, model, tiny_tokenizer_bytes(), external_data=True, validate=False)
    assert (tmp_path / "ext.onnx.data").is_file()
    engine = Engine.load(path, backend="onnxruntime", threads=1)
    img = images(1)[0]
    ref, _ = torch_generate(engine, model, [img], ["ocr"], max_new_tokens=5)
    assert engine.generate(img, "ocr", max_new_tokens=5).tokens == ref[0]
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(path, moved / "ext.onnx")  # without its data file
    with pytest.raises(ModelFileError):
        Engine.load(moved / "ext.onnx", backend="onnxruntime")


# --------------------------------------------------------------------------
# the bundled default model

def test_bundled_default_model():
    import os

    from pali_engine.engine import default_model_path
    from pali_engine.export import data as D

    try:
        path = default_model_path()
    except FileNotFoundError:
        pytest.skip("this build has no bundled default model")
    assert os.path.getsize(path) <= 25 * 2**20
    engine = Engine.load(backend="onnxruntime", threads=1)
    assert engine.path == path
    world = D.ShapesWorld(image_size=engine.config["image_size"], seed=0)
    exs = [e for task in ("caption_en", "answer_en", "detect") for e in world.heldout(task, 2)]
    imgs, prompts = [e.image for e in exs], [e.prompt for e in exs]
    results = engine.generate(imgs, prompts)
    assert all(r.tokens and r.tokens[-1] == engine.config["eos_token_id"] for r in results)
    checkpoint = os.path.join(os.path.dirname(D.__file__), "default", "pali-default.pt")
    if os.path.isfile(checkpoint):  # a source checkout: the same tokens as the PyTorch model
        from pali_engine.export.model import Pali

        ref, _ = torch_generate(engine, Pali.load(checkpoint), imgs, prompts)
        assert [r.tokens for r in results] == ref
