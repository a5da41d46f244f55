"""The ONNX exporter: names, layout and values of every parameter, metadata, and onnxruntime vs PyTorch."""

from __future__ import annotations

import base64
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pali_engine  # noqa: E402
from pali_engine import model_spec  # noqa: E402
from pali_engine.cli import main as cli_main  # noqa: E402
from pali_engine.export.config import PaliConfig  # noqa: E402
from pali_engine.export.model import Pali  # noqa: E402
from pali_engine.export.onnx_export import (  # noqa: E402
    EXTERNAL_ALIGNMENT,
    LOGITS_TOLERANCE,
    _dummy_inputs,
    compare_logits,
)

from export_fixtures import export_tiny, tiny_model, tiny_tokenizer_bytes  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer_bytes()


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, tok):
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export_tiny(path, model, tok)
    return path, report


def state_dict_arrays(model):
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": True}, {"feed_forward_proj": "gated-silu", "encoder_layers": 1,
                                        "decoder_layers": 3, "vision_depth": 1, "d_kv": 4},
])
def test_expected_parameter_shapes_match_the_model(overrides):
    cfg = PaliConfig.tiny(**overrides)
    sd = Pali(cfg).state_dict()
    expected = model_spec.expected_parameter_shapes(cfg)
    assert expected == model_spec.expected_parameter_shapes(cfg.to_dict())
    names = [k for k in sd if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    assert sorted(expected) == sorted(names)  # same names (the file's order is not part of the contract)
    for name, shape in expected.items():
        assert tuple(sd[name].shape) == shape, name


def test_default_config_parameter_count():
    shapes = model_spec.expected_parameter_shapes(PaliConfig())
    assert sum(int(np.prod(s)) for s in shapes.values()) == sum(
        v.numel() for v in Pali(PaliConfig()).state_dict().values())


def test_every_parameter_is_one_initializer_under_its_name(exported, model):
    path, report = exported
    proto = onnx.load(str(path))
    names = [t.name for t in proto.graph.initializer]
    sd = state_dict_arrays(model)
    assert len(names) == len(set(names))
    assert set(names) == set(sd)
    info = pali_engine.inspect(path)
    assert set(info["tensors"]) == set(sd)
    for name, value in sd.items():
        assert info["tensors"][name] == ("float32", value.shape), name
        stored = pali_engine.load_tensor(path, name)
        assert stored.tobytes() == value.tobytes(), name  # bit-exact, PyTorch layout
    # graph inputs/outputs of the contract
    assert [i.name for i in proto.graph.input] == ["pixel_values", "input_ids", "attention_mask", "decoder_input_ids"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    onnx.checker.check_model(str(path))


def test_metadata(exported, model, tok):
    path, _ = exported
    meta = pali_engine.inspect(path)["metadata"]
    assert meta["pali.format"] == "1"
    assert meta["pali.config"] == model.config.to_json()
    assert base64.b64decode(meta["pali.tokenizer"]) == tok
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["pali.format"] == "1"


def test_onnxruntime_matches_torch_at_batch_1_and_3(exported, model):
    path, report = exported
    assert report["max_abs_error"] <= LOGITS_TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, lens, T in [(1, [4], 3), (3, [9, 2, 5], 7)]:
        px, ids, mask, dec = _dummy_inputs(model.config, batch, lens, T, seed=batch)
        with torch.no_grad():
            ref = model(px, ids, mask, dec).numpy()
        (out,) = session.run(None, {"pixel_values": px.numpy(), "input_ids": ids.numpy(),
                                    "attention_mask": mask.numpy(), "decoder_input_ids": dec.numpy()})
        assert out.shape == (batch, T, model.config.vocab_size)
        assert np.abs(out - ref).max() <= LOGITS_TOLERANCE


def test_float16_storage(tmp_path, model, tok, exported):
    path = tmp_path / "half.onnx"
    report = export_tiny(path, model, tok, dtype="float16")
    assert report["max_abs_error"] <= LOGITS_TOLERANCE  # vs the weights rounded to float16
    info = pali_engine.inspect(path)
    for name, value in state_dict_arrays(model).items():
        assert info["tensors"][name] == ("float16", value.shape)
        assert pali_engine.load_tensor(path, name).tobytes() == value.astype(np.float16).tobytes()
    assert info["metadata"]["pali.weights_dtype"] == "float16"
    saved = os.path.getsize(exported[0]) - os.path.getsize(path)
    assert saved >= 0.9 * report["parameters"] * 2


def test_tied_embeddings_export(tmp_path, tok):
    model = tiny_model(seed=2, tie_word_embeddings=True)
    path = tmp_path / "tied.onnx"
    report = export_tiny(path, model, tok)
    names = set(pali_engine.inspect(path)["tensors"])
    assert "lm_head.weight" not in names and "shared.weight" in names
    assert names == set(model_spec.expected_parameter_shapes(model.config))
    assert report["max_abs_error"] <= LOGITS_TOLERANCE


def test_cli_export_with_external_data(tmp_path, model, tok, capsys):
    ckpt = tmp_path / "model.pt"
    model.save(str(ckpt), half=False)
    (tmp_path / "tokenizer.model").write_bytes(tok)
    out = tmp_path / "out" / "ext.onnx"
    assert cli_main(["export", str(ckpt), "-o", str(out), "--external-data", "--quiet"]) == 0
    assert "max abs error" in capsys.readouterr().out
    data = tmp_path / "out" / "ext.onnx.data"
    assert data.is_file()
    # offsets are page-aligned; every initializer of >= 1 KiB is external
    proto = onnx.load(str(out), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external
    for t in external:
        entries = {e.key: e.value for e in t.external_data}
        assert entries["location"] == "ext.onnx.data"
        assert int(entries["offset"]) % EXTERNAL_ALIGNMENT == 0
        assert int(entries["offset"]) + int(entries["length"]) <= data.stat().st_size
    assert sum(int({e.key: e.value for e in t.external_data}["length"]) for t in external) > 0.9 * 4 * sum(
        v.numel() for v in model.state_dict().values())
    onnx.checker.check_model(str(out))
    sd = state_dict_arrays(model)
    for name, value in sd.items():
        assert pali_engine.load_tensor(out, name).tobytes() == value.tobytes()
    assert compare_logits(str(out), model) <= LOGITS_TOLERANCE
    # The native engine reads the external file too (and releases its pages as it packs).
    native = pali_engine.Engine.load(out)._backend
    px, ids, mask, dec = _dummy_inputs(model.config, 2, [5, 3], 4, 0)
    with torch.no_grad():
        ref = model(px, ids, mask, dec).float().numpy()
    got = native.logits(px.numpy(), ids.numpy(), mask.numpy(), dec.numpy())
    assert np.abs(got - ref).max() <= LOGITS_TOLERANCE


def test_cli_export_errors(tmp_path, model, capsys):
    ckpt = tmp_path / "model.pt"
    model.save(str(ckpt))
    # no tokenizer beside the checkpoint
    assert cli_main(["export", str(ckpt), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "tokenizer" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["export", str(tmp_path / "junk.pt"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
    model = tiny_model(vocab_size=32)
    with pytest.raises(ValueError, match="vocab_size"):
        export_tiny(tmp_path / "x.onnx", model, tiny_tokenizer_bytes(48))


@pytest.mark.slow
def test_model_over_2gb_uses_external_data(tmp_path, tok, request):
    """A random-weight model of ~2.2 GB: weights go to NAME.onnx.data; the engine's reader
    and onnxruntime load it.  Needs ~9 GB of memory and a few minutes, so it runs only
    when asked for: ``pytest -m slow`` (or PALI_ENGINE_SLOW_TESTS=1)."""
    if "slow" not in (request.config.option.markexpr or "") and not os.environ.get("PALI_ENGINE_SLOW_TESTS"):
        pytest.skip("slow: run with -m slow")
    cfg = dict(vocab_size=270_000, d_model=1024, d_kv=64, num_heads=4, d_ff=256)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = Pali(PaliConfig.tiny(**cfg)).eval()
    path = tmp_path / "big.onnx"
    report = export_tiny(path, model, tok, validate=True)
    elapsed = time.perf_counter() - t0
    data = tmp_path / "big.onnx.data"
    assert report["external_data"] and data.is_file()
    assert data.stat().st_size > 2**31
    assert path.stat().st_size < 2**20  # the graph alone
    info = pali_engine.inspect(path)
    assert info["tensors"]["lm_head.weight"] == ("float32", (270_000, 1024))
    assert pali_engine.load_tensor(path, "lm_head.weight")[-1].tobytes() == \
        model.lm_head.weight[-1].detach().numpy().tobytes()
    assert report["max_abs_error"] <= LOGITS_TOLERANCE
    print(f"\n2 GB export: {report}, total {elapsed:.1f} s, data {data.stat().st_size:,} bytes")


def test_failed_export_leaves_the_old_file(tmp_path, model, tok, monkeypatch):
    from pali_engine.export import onnx_export

    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    monkeypatch.setattr(onnx_export, "LOGITS_TOLERANCE", -1.0)  # every comparison fails
    with pytest.raises(onnx_export.ExportError, match="differ"):
        export_tiny(path, model, tok)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
