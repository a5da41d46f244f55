"""The benchmark harness (its --quick path on the tiny model, with whatever peers are installed)
and the mapping of the text model onto transformers' T5."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export_fixtures import tiny_model  # noqa: E402

from pali_engine.export import hf_t5  # noqa: E402


def _native_engine_available() -> bool:
    try:
        from pali_engine import _native

        _native.core_for("cpu")
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------
# the harness

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from pali_engine.benchmarks import harness

    tmp = tmp_path_factory.mktemp("bench")
    out_dir = tmp / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = harness.main(["--quick", "--sizes", "tiny", "--new-tokens", "8", "--repeats", "2",
                           "--peers", "engine,pytorch,transformers,onnxruntime,ctranslate2",
                           "--work-dir", str(tmp / "work"), "--out-dir", str(out_dir)])
    files = sorted(glob.glob(str(out_dir / "cpu-*.json")))
    return rc, buf.getvalue(), files, out_dir


def test_quick_run_prints_a_table_and_writes_json(quick_run):
    rc, text, files, out_dir = quick_run
    assert rc == 0
    assert "| peer | vision ms | encoder ms | TTFT ms | ms/step | tokens/s | peak RSS MB" in text
    assert "| floor |" in text
    assert len(files) == 1
    result = json.load(open(files[0]))
    for key in ("format", "date", "machine", "packages", "threads", "floors_measured", "sizes", "table_markdown"):
        assert key in result, key
    assert result["floors_measured"]["read_bandwidth_gb_s"] > 0
    assert result["floors_measured"]["sgemm_gflop_s"] > 0
    size = result["sizes"][0]
    assert size["size"] == "tiny"
    case = size["cases"]["b1-greedy"]
    assert case["batch"] == 1 and case["beams"] == 1 and case["new_tokens"] == 8
    assert case["failed"] == {}, case["failed"]
    assert case["floor"]["step_ms"]["f32"] > 0
    # every peer either ran or is reported as skipped with a reason
    names = set(case["peers"]) | set(size["skipped"])
    for expected in ("engine f32", "engine int8", "pytorch", "transformers", "onnxruntime",
                     "ctranslate2 f32", "ctranslate2 int8"):
        assert expected in names, expected
    for why in size["skipped"].values():
        assert why
    assert "pytorch" in case["peers"]
    for name, row in case["peers"].items():
        assert name in text
        for metric in ("ttft_ms", "step_ms", "total_ms", "tokens_per_s"):
            s = row[metric]
            assert s["min"] <= s["median"] <= s["max"], (name, metric)
            assert s["n"] == 2
        assert row["steps"] == 8
        assert row["agreement"]["rows"] == 1


def test_quick_run_peers_agree_with_pytorch(quick_run):
    _, _, files, _ = quick_run
    size = json.load(open(files[0]))["sizes"][0]
    peers = size["cases"]["b1-greedy"]["peers"]
    for name in ("engine f32", "onnxruntime", "transformers", "ctranslate2 f32"):
        if name in peers:
            assert peers[name]["agreement"]["rows_equal"] == 1, name
    if _native_engine_available():
        assert "engine f32" in peers
    checks = size.get("checks", {})
    if "transformers" in peers:
        assert checks["transformers"]["max_abs_diff"] < 1e-4
    if "ctranslate2 f32" in peers:
        assert checks["ctranslate2 f32"]["max_abs_diff"] < 1e-4  # no stray output scale


def test_quick_run_pairs_rounds_with_the_engine(quick_run):
    _, text, files, _ = quick_run
    case = json.load(open(files[0]))["sizes"][0]["cases"]["b1-greedy"]
    if "engine f32" not in case["peers"]:
        pytest.skip("the native engine is not built")
    pairs = case["paired"]["step_ms"]
    assert "pytorch" in pairs and "engine f32" not in pairs
    for q in pairs.values():
        assert q["n"] == 2 and 0 <= q["reference_faster"] <= 2 and q["median"] > 0
    assert "ms/step, round by round, peer / engine f32" in text


def test_median_interval_is_the_binomial_order_statistics():
    from pali_engine.benchmarks.harness import median_interval, paired

    assert median_interval([5.0] * 5) is None  # 2 * 0.5**5 > 0.05: no 95% interval from 5 values
    rng = np.random.default_rng()
    for n, k in ((6, 1), (9, 2), (20, 6), (50, 18)):  # k: 1-based rank of the lower bound
        xs = rng.permutation(np.arange(n, dtype=float))
        q = median_interval(list(xs))
        assert (q["low"], q["high"]) == (k - 1, n - k), n
        assert q["median"] == np.median(xs) and 0.95 <= q["confidence"] < 0.99
    runs = {"engine f32": [{"step_ms": 2.0}, {"step_ms": 4.0}],
            "peer": [{"step_ms": 3.0}, {"step_ms": 2.0}],
            "lost a run": [{"step_ms": 3.0}],
            "no metric": [{"step_ms": None}, {"step_ms": None}]}
    assert paired(runs, "engine f32", "step_ms") == {"peer": {"median": 1.0, "n": 2, "reference_faster": 1}}


def test_quick_run_plot(quick_run):
    pytest.importorskip("matplotlib")
    _, _, _, out_dir = quick_run
    pngs = glob.glob(str(out_dir / "cpu-*.png"))
    assert len(pngs) == 1 and os.path.getsize(pngs[0]) > 1000


def test_quick_runs_the_fast_peers_unless_told(monkeypatch, tmp_path):
    from pali_engine.benchmarks import harness

    chosen = []

    def stop_after_choosing(args):
        chosen.append(args.peers)
        raise ValueError("stop here")

    monkeypatch.setattr(harness, "select_peers", stop_after_choosing)
    assert harness.main(["--quick", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--quick", "--peers", "ctranslate2", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--sizes", "tiny", "--work-dir", str(tmp_path)]) == 2
    assert chosen == ["engine,pytorch,onnxruntime", "ctranslate2", None]


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    from pali_engine.benchmarks import harness

    assert harness.main(["--quick", "--sizes", "huge", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--quick", "--peers", "nonsense", "--work-dir", str(tmp_path)]) == 2
    assert "unknown" in capsys.readouterr().err


def test_parameter_counts_match_the_model():
    from pali_engine.benchmarks import models

    model = tiny_model()
    counts = models.parameter_counts(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # a decode step reads: the decoder without the cross-attention k/v, the final norm, the head
    dec = sum(p.numel() for n, p in model.named_parameters()
              if n.startswith("decoder.") and "relative_attention_bias" not in n
              and ".cross_attn.k." not in n and ".cross_attn.v." not in n)
    D = model.config.d_model
    assert counts["decode_step"] == dec + model.lm_head.weight.numel() + D


def test_prompt_of_exact_length():
    from pali_engine.benchmarks import models
    from pali_engine.tokenizer import Tokenizer

    tok = Tokenizer(models.fallback_tokenizer_bytes(32128))
    text = models.make_prompt(tok, 20)
    assert len(tok.encode(text)) == 20


# --------------------------------------------------------------------------
# the HF T5 mapping

def _text_names(model):
    return [n for n in model.state_dict() if hf_t5.is_text_parameter(n)]


def test_name_mapping_round_trips():
    model = tiny_model()
    names = _text_names(model)
    hf_names = [hf_t5.ours_to_hf_name(n) for n in names]
    assert len(set(hf_names)) == len(names)
    assert [hf_t5.hf_to_ours_name(n) for n in hf_names] == names
    with pytest.raises(KeyError):
        hf_t5.ours_to_hf_name("vision.blocks.0.attn.q.weight")
    with pytest.raises(KeyError):  # T5 v1.0's ungated FFN has no counterpart
        hf_t5.hf_to_ours_name("encoder.block.0.layer.1.DenseReluDense.wi.weight")
    assert hf_t5.hf_to_ours_name("decoder.embed_tokens.weight") is None


@pytest.mark.parametrize("tied", [False, True])
def test_hf_t5_logits_equal_ours(tied):
    pytest.importorskip("transformers")
    model = tiny_model(tie_word_embeddings=tied)
    hf = hf_t5.build_hf_t5(model.config, model.state_dict())
    # the head is what the config says, whatever transformers does by default
    assert (hf.lm_head.weight.data_ptr() == hf.shared.weight.data_ptr()) == tied
    assert hf.config.tie_word_embeddings == tied
    assert getattr(hf.config, "scale_decoder_outputs", tied) == tied
    g = torch.Generator().manual_seed(0)
    B, M = 2, 9
    x = torch.randn(B, M, model.config.d_model, generator=g)
    mask = torch.ones(B, M, dtype=torch.long)
    mask[1, 6:] = 0
    dec = torch.randint(3, model.config.vocab_size, (B, 6), generator=g)
    dec[:, 0] = model.config.decoder_start_token_id
    with torch.no_grad():
        ours = model.decode(dec, model.encoder(x, mask), mask)
        theirs = hf(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec).logits
    assert float((ours - theirs).abs().max()) < 1e-4
    # and back: HF's state_dict under our names equals ours
    back = hf_t5.hf_state_dict_to_text(hf.state_dict())
    sd = {k: v for k, v in model.state_dict().items() if hf_t5.is_text_parameter(k)}
    if tied:  # our unused lm_head comes back as the shared embedding
        sd["lm_head.weight"] = sd["shared.weight"]
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_hf_config_fields_round_trip():
    pytest.importorskip("transformers")
    model = tiny_model(feed_forward_proj="gated-silu")
    fields = hf_t5.pali_text_fields_from_hf(hf_t5.hf_config_from_pali(model.config))
    for k, v in fields.items():
        assert getattr(model.config, k) == v, k


def test_build_hf_t5_rejects_misshapen_weights():
    pytest.importorskip("transformers")
    model = tiny_model()
    sd = dict(model.state_dict())
    sd["decoder.blocks.0.ffn.wo.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="wo"):
        hf_t5.build_hf_t5(model.config, sd)
