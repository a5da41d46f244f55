"""Tests of the PyTorch PaLI model (export/model.py) with tiny random weights:
shapes, parameter names, KV-cache decoding against the full forward, greedy
and beam search consistency, checkpoints."""

import math

import pytest

torch = pytest.importorskip("torch")


from pali_engine.export import config as C  # noqa: E402
from pali_engine.export import model as M  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return M.Pali(C.PaliConfig.tiny()).eval()


def inputs(cfg, B=3, L=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    px = torch.rand(B, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    ids = torch.randint(3, cfg.vocab_size, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    ids[1, L - 2:] = 0  # a padded prompt
    mask[1, L - 2:] = 0
    ids[:, -1].masked_fill_(mask[:, -1] == 1, 1)
    return px, ids, mask


def test_config_json_round_trip():
    cfg = C.PaliConfig.tiny()
    assert C.PaliConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError):
        C.PaliConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_forward_shapes(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    dec = torch.randint(0, cfg.vocab_size, (3, 5))
    logits = model(px, ids, mask, dec)
    assert logits.shape == (3, 5, cfg.vocab_size) and logits.dtype == torch.float32
    memory, mmask = model.encode(px, ids, mask)
    assert memory.shape == (3, cfg.num_patches + 6, cfg.d_model)
    assert mmask.shape == (3, cfg.num_patches + 6) and bool(mmask[:, :cfg.num_patches].all())


def test_parameter_names(model):
    cfg = model.config
    names = set(model.state_dict())
    expected = {"vision.patch_embed.weight", "vision.patch_embed.bias", "vision.pos_embed",
                "vision.norm.weight", "vision.norm.bias", "projector.weight", "projector.bias",
                "shared.weight", "encoder.relative_attention_bias.weight", "encoder.final_norm.weight",
                "decoder.relative_attention_bias.weight", "decoder.final_norm.weight", "lm_head.weight"}
    for i in range(cfg.vision_depth):
        p = f"vision.blocks.{i}."
        expected |= {p + s for s in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
        expected |= {p + f"attn.{x}.{w}" for x in ("q", "k", "v", "out") for w in ("weight", "bias")}
    for i in range(cfg.encoder_layers):
        p = f"encoder.blocks.{i}."
        expected |= {p + "attn_norm.weight", p + "ffn_norm.weight"}
        expected |= {p + f"attn.{x}.weight" for x in "qkvo"}
        expected |= {p + f"ffn.{x}.weight" for x in ("wi_0", "wi_1", "wo")}
    for i in range(cfg.decoder_layers):
        p = f"decoder.blocks.{i}."
        expected |= {p + f"{n}.weight" for n in ("self_attn_norm", "cross_attn_norm", "ffn_norm")}
        expected |= {p + f"{a}.{x}.weight" for a in ("self_attn", "cross_attn") for x in "qkvo"}
        expected |= {p + f"ffn.{x}.weight" for x in ("wi_0", "wi_1", "wo")}
    assert names == expected
    sd = model.state_dict()
    assert sd["vision.pos_embed"].shape == (1, cfg.num_patches, cfg.vision_width)
    assert sd["encoder.relative_attention_bias.weight"].shape == (cfg.relative_attention_num_buckets, cfg.num_heads)
    assert sd["encoder.blocks.0.attn.q.weight"].shape == (cfg.num_heads * cfg.d_kv, cfg.d_model)
    assert sd["lm_head.weight"].shape == (cfg.vocab_size, cfg.d_model)


def test_padding_does_not_change_logits(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    dec = torch.randint(0, cfg.vocab_size, (3, 4))
    a = model(px, ids, mask, dec)
    ids2 = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], 1)
    mask2 = torch.cat([mask, torch.zeros(3, 3, dtype=torch.long)], 1)
    b = model(px, ids2, mask2, dec)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kv_cache_step_matches_forward(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    T = 9
    dec = torch.randint(0, cfg.vocab_size, (3, T))
    dec[:, 0] = cfg.decoder_start_token_id
    with torch.no_grad():
        full = model(px, ids, mask, dec)
        memory, mmask = model.encode(px, ids, mask)
        cache = model.init_cache(memory, mmask)
        steps = []
        for t in range(T):
            logits, cache = model.decode_step(dec[:, t], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


def _teacher_forced(model, px, ids, mask, toks):
    start = torch.full((toks.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    dec = torch.cat([start, toks[:, :-1]], 1)
    with torch.no_grad():
        return model(px, ids, mask, dec).log_softmax(-1)


def test_greedy_is_its_own_teacher_forced_argmax(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    toks, scores = model.generate(px, ids, mask, max_new_tokens=8, min_new_tokens=8)
    assert toks.shape == (3, 8)
    logp = _teacher_forced(model, px, ids, mask, toks)
    banned = logp.clone()
    banned[:, :, cfg.eos_token_id] = -math.inf  # min_new_tokens bans eos at every step here
    assert torch.equal(banned.argmax(-1), toks)
    torch.testing.assert_close(scores, logp.gather(2, toks[:, :, None])[:, :, 0].sum(1), atol=1e-4, rtol=0)
    # without min_new_tokens: stops at eos, pads afterwards
    toks2, _ = model.generate(px, ids, mask, max_new_tokens=8)
    for row in toks2.tolist():
        if cfg.eos_token_id in row:
            k = row.index(cfg.eos_token_id)
            assert all(t == cfg.pad_token_id for t in row[k + 1:])
    logp2 = _teacher_forced(model, px, ids, mask, toks2)
    am = logp2.argmax(-1)
    for b, row in enumerate(toks2.tolist()):
        n = row.index(cfg.eos_token_id) + 1 if cfg.eos_token_id in row else len(row)
        assert am[b, :n].tolist() == row[:n]


def test_min_new_tokens(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    with torch.no_grad():
        model.lm_head.weight[cfg.eos_token_id] += 5.0  # make eos very likely
    try:
        toks, _ = model.generate(px, ids, mask, max_new_tokens=6, min_new_tokens=3)
        assert not (toks[:, :3] == cfg.eos_token_id).any()
        toks, _ = model.generate(px, ids, mask, max_new_tokens=6, num_beams=2, min_new_tokens=3)
        assert not (toks[:, :3] == cfg.eos_token_id).any()
    finally:
        with torch.no_grad():
            model.lm_head.weight[cfg.eos_token_id] -= 5.0


def test_beam_search_with_one_beam_equals_greedy(model):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    g_toks, g_scores = model.generate(px, ids, mask, max_new_tokens=7)
    b_toks, b_scores = model.generate(px, ids, mask, max_new_tokens=7, num_beams=1)
    assert torch.equal(g_toks, b_toks) and torch.equal(g_scores, b_scores)
    # the beam-search code path itself, with one beam and no length normalisation
    with torch.no_grad():
        memory, mmask = model.encode(px, ids, mask)
        s_toks, s_scores = model._beam_search(memory, mmask, 7, 1, 0.0, 0)
    assert torch.equal(s_toks[:, :g_toks.shape[1]], g_toks)
    torch.testing.assert_close(s_scores, g_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_scores(model, length_penalty):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    toks, scores = model.generate(px, ids, mask, max_new_tokens=6, num_beams=3, length_penalty=length_penalty)
    logp = _teacher_forced(model, px, ids, mask, toks)
    for b, row in enumerate(toks.tolist()):
        n = row.index(cfg.eos_token_id) + 1 if cfg.eos_token_id in row else len(row)
        total = sum(logp[b, t, row[t]].item() for t in range(n))
        assert scores[b].item() == pytest.approx(total / n ** length_penalty, abs=1e-4)
    # more beams never find a worse best hypothesis than greedy under no normalisation
    g_toks, g_scores = model.generate(px, ids, mask, max_new_tokens=6)
    b_toks, b_scores = model.generate(px, ids, mask, max_new_tokens=6, num_beams=4, length_penalty=0.0)
    finished = [cfg.eos_token_id in r for r in g_toks.tolist()]
    for b in range(3):
        if finished[b]:
            assert b_scores[b].item() >= g_scores[b].item() - 1e-5


def test_save_load_round_trip(model, tmp_path):
    cfg = model.config
    px, ids, mask = inputs(cfg)
    dec = torch.randint(0, cfg.vocab_size, (3, 4))
    p32, p16 = tmp_path / "m32.pt", tmp_path / "m16.pt"
    model.save(str(p32), half=False)
    model.save(str(p16), half=True)
    m32, m16 = M.Pali.load(str(p32)), M.Pali.load(str(p16))
    assert m32.config == cfg
    with torch.no_grad():
        ref = model(px, ids, mask, dec)
        assert torch.equal(m32(px, ids, mask, dec), ref)
        assert all(p.dtype == torch.float32 for p in m16.parameters())
        torch.testing.assert_close(m16(px, ids, mask, dec), ref, atol=5e-2, rtol=5e-2)
    with pytest.raises(ValueError):
        torch.save({"foo": 1}, tmp_path / "bad.pt")
        M.Pali.load(str(tmp_path / "bad.pt"))


def test_relative_position_buckets():
    rel = torch.arange(-200, 201)
    b = M.relative_position_bucket(rel, True, 32, 128)
    assert b.min() >= 0 and b.max() <= 31
    assert b[200].item() == 0  # offset 0
    assert (b[201:] >= 16).all() and (b[:200] < 16).all()  # positive offsets in the upper half
    u = M.relative_position_bucket(rel, False, 32, 128)
    assert (u[200:] == 0).all() and u.max() <= 31
    assert [u[200 - k].item() for k in range(16)] == list(range(16))


def test_task_weight_option():
    """--task-weight overrides one task's share of the mix; bad names and weights are refused."""
    from pali_engine.export import data as D
    from pali_engine.export import train
    w = train._parse_task_weights(["ocr=4", "detect=0"])
    assert w["ocr"] == 4.0 and w["detect"] == 0.0 and w["caption_en"] == D.DEFAULT_TASK_WEIGHTS["caption_en"]
    world = D.ShapesWorld(seed=3, task_weights=w)
    tasks = [world.train_example(i).task for i in range(300)]
    assert "detect" not in tasks and tasks.count("ocr") > tasks.count("caption_en")
    for bad in (["ocr"], ["nope=1"], ["ocr=x"], ["ocr=-1"], [f"{t}=0" for t in D.TASKS]):
        with pytest.raises(SystemExit):
            train._parse_task_weights(bad)
    for bad in ({"nope": 1.0}, {"ocr": -1.0}, {"ocr": float("nan")}, {"ocr": float("inf")},
                {t: 0.0 for t in D.TASKS}):
        with pytest.raises(ValueError):
            D.ShapesWorld(task_weights=bad)


def test_train_and_evaluate_smoke(tmp_path):
    """A few training steps of a tiny model, a checkpoint, and the torch eval backend."""
    import argparse
    import json

    from pali_engine.export import evaluate, tokenizer_train, train
    tok_path = tmp_path / "tok.model"
    tokenizer_train.train_tokenizer(str(tok_path), n_per_task=200)
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    sets = ["image_size=64", "patch_size=16", "vision_width=32", "vision_depth=1", "vision_heads=2",
            "vision_mlp_dim=64", "d_model=32", "d_kv=8", "num_heads=4", "d_ff=64",
            "encoder_layers=1", "decoder_layers=1", "max_new_tokens=8"]
    out = tmp_path / "run"
    args = parser.parse_args(["--out", str(out), "--steps", "3", "--batch-size", "4", "--warmup", "1",
                              "--threads", "1", "--device", "cpu", "--tokenizer", str(tok_path),
                              "--log-every", "1", "--ckpt-every", "2", "--eval-every", "0", "--eval-n", "1"]
                             + [x for s in sets for x in ("--set", s)])
    assert train.run(args) == 0
    assert (out / "model.pt").exists() and (out / "last.pt").exists() and (out / "tokenizer.model").exists()
    assert "step 3" in (out / "train.log").read_text()
    model = M.Pali.load(str(out / "model.pt"))
    assert model.config.d_model == 32 and model.config.vocab_size == model.shared.weight.shape[0]
    # resume continues from the saved step
    args.resume, args.steps = True, 4
    assert train.run(args) == 0
    assert "resumed" in (out / "train.log").read_text()
    # model.pt records how many examples were drawn, so that --init goes on with new ones
    assert torch.load(out / "model.pt", map_location="cpu", weights_only=False)["seen"] == 4 * 4
    # a fresh schedule from those weights, with the q/k learning-rate factor
    init_out = tmp_path / "init"
    args2 = parser.parse_args(["--out", str(init_out), "--steps", "2", "--batch-size", "4", "--warmup", "1",
                               "--threads", "1", "--device", "cpu", "--tokenizer", str(tok_path),
                               "--eval-every", "0", "--init", str(out / "last.pt"), "--qk-lr-scale", "0.1"])
    assert train.run(args2) == 0
    log = (init_out / "train.log").read_text()
    assert "initialised from" in log and "step 2" in log
    assert M.Pali.load(str(init_out / "model.pt")).config.d_model == 32

    # two data-parallel workers train exactly as one process on the same batches
    def losses(run_dir):
        return [line.split(" loss ")[1].split()[0] for line in (run_dir / "train.log").read_text().splitlines()
                if " loss " in line]

    def final_weights(run_dir):
        return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]

    runs = {}
    for workers in (1, 2):
        run_dir = tmp_path / f"workers{workers}"
        wargs = parser.parse_args(["--out", str(run_dir), "--steps", "3", "--batch-size", "6", "--warmup", "1",
                                   "--lr", "1e-3", "--threads", "1", "--device", "cpu", "--tokenizer",
                                   str(tok_path), "--log-every", "1", "--ckpt-every", "100", "--eval-every", "0",
                                   "--workers", str(workers)] + [x for s in sets for x in ("--set", s)])
        assert train.run(wargs) == 0
        runs[workers] = run_dir
    assert losses(runs[1]) == losses(runs[2]) and len(losses(runs[1])) == 3
    assert "2 workers" in (runs[2] / "train.log").read_text()
    one, two = final_weights(runs[1]), final_weights(runs[2])
    diff = torch.cat([(two[name] - one[name]).abs().reshape(-1) for name in one])
    # equal up to summation order, except where a gradient is ~0 and Adam's first steps (~lr * sign)
    # may go either way: a handful of elements
    assert (diff > 1e-5).sum() <= 1e-4 * diff.numel() and diff.max() <= 3e-3
    bad = parser.parse_args(["--out", str(tmp_path / "bad"), "--batch-size", "5", "--workers", "2"])
    assert train.run(bad) == 2

    eparser = argparse.ArgumentParser()
    evaluate.add_arguments(eparser)
    eargs = eparser.parse_args(["--model", str(out / "model.pt"), "--n", "2", "--threads", "1", "--json"])
    assert evaluate.run(eargs) == 0
    backend = evaluate.TorchBackend(str(out / "model.pt"))
    res = evaluate.evaluate(backend, ["caption_en", "detect"], n=2, max_new_tokens=4)
    assert set(res) == {"caption_en", "detect"} and res["detect"]["metric"] == "mean_iou"
    assert 0.0 <= res["caption_en"]["score"] <= 1.0
    json.dumps(res)
    with pytest.raises(ValueError):
        evaluate.make_backend("no-such-backend", str(out / "model.pt"))
