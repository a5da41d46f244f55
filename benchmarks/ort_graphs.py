"""onnxruntime as a fair peer: vision, encoder and past-key-value decoder graphs, and a NumPy loop.

Why: the pali-engine file holds the teacher-forced graph only (no cache: every
step recomputes the whole prefix), which is no fair peer for a generation
benchmark.  Here the same PyTorch model is exported as three graphs, the way
onnxruntime's own T5 tooling splits it:

* ``vision.onnx``: pixel_values f32[B,C,S,S] -> visual tokens f32[B,N,D] (ViT + projector);
* ``encoder.onnx``: (visual, input_ids, attention_mask) -> cross_bias f32[B,1,1,M] and, per
  decoder layer, the cross-attention keys and values f32[B,H,M,dk] (computed once);
* ``decoder.onnx``: one step: (tokens i64[B,1], positions i64[t+1], cross_bias, past self
  K/V [B,H,t,dk] per layer, cross K/V per layer) -> logits f32[B,V] and the present self
  K/V [B,H,t+1,dk].

``OrtGenerator`` runs them: greedy or beam search in NumPy with the output length
forced (eos banned for all ``new_tokens`` steps, as the benchmark always asks), the
beams' caches reordered with a gather, the cross K/V repeated per beam once; or,
with ``stop_at_eos`` (greedy), until every row has said eos, as a caption request
runs (benchmarks/contention.py).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

FILES = ("vision.onnx", "encoder.onnx", "decoder.onnx")


def export_graphs(model, folder: str, log=print) -> None:
    """Writes the three graphs of ``model`` (export.model.Pali) into ``folder``."""
    import torch
    from torch import nn

    from pali_engine.export.model import NEG_INF, relative_position_bucket

    cfg = model.config
    L, H, dk = cfg.decoder_layers, cfg.num_heads, cfg.d_kv

    class Vision(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision, self.projector = model.vision, model.projector

        def forward(self, pixel_values):
            return self.projector(self.vision(pixel_values))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.encoder, self.decoder = model.shared, model.encoder, model.decoder

        def forward(self, visual, input_ids, attention_mask):
            x = torch.cat([visual, self.shared(input_ids)], dim=1)
            ones = torch.ones_like(visual[:, :, 0]).to(attention_mask.dtype)
            mask = torch.cat([ones, attention_mask], dim=1)
            memory = self.encoder(x, mask)
            outs = [(1.0 - mask[:, None, None, :].to(x.dtype)) * NEG_INF]
            for blk in self.decoder.blocks:
                c = blk.cross_attn
                outs += [c.split(c.k(memory)), c.split(c.v(memory))]
            return tuple(outs)

    class DecoderStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.decoder, self.lm_head = model.shared, model.decoder, model.lm_head

        def forward(self, tokens, positions, cross_bias, *kv):
            dec = self.decoder
            past, cross = kv[:2 * L], kv[2 * L:]
            x = self.shared(tokens)  # [B,1,D]
            rel = positions[None, :] - positions[-1:, None]  # [1, t+1]
            buckets = relative_position_bucket(rel, False, cfg.relative_attention_num_buckets,
                                               cfg.relative_attention_max_distance)
            bias = dec.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1,H,1,t+1]
            presents = []
            for i, blk in enumerate(dec.blocks):
                a = blk.self_attn
                h = blk.self_attn_norm(x)
                k = torch.cat([past[2 * i], a.split(a.k(h))], dim=2)
                v = torch.cat([past[2 * i + 1], a.split(a.v(h))], dim=2)
                presents += [k, v]
                x = x + a.o(a.attend(a.split(a.q(h)), k, v, bias))
                c = blk.cross_attn
                h = blk.cross_attn_norm(x)
                x = x + c.o(c.attend(c.split(c.q(h)), cross[2 * i], cross[2 * i + 1], cross_bias))
                x = x + blk.ffn(blk.ffn_norm(x))
            h = dec.final_norm(x)
            if cfg.tie_word_embeddings:
                logits = torch.nn.functional.linear(h * (cfg.d_model ** -0.5), self.shared.weight)
            else:
                logits = self.lm_head(h)
            return (logits[:, 0], *presents)

    os.makedirs(folder, exist_ok=True)
    B, S, L_p = 2, cfg.image_size, 3
    N = cfg.num_patches
    pv = torch.randn(B, cfg.num_channels, S, S)
    ids = torch.randint(3, cfg.vocab_size, (B, L_p))
    am = torch.ones(B, L_p, dtype=torch.long)
    kw = dict(dynamo=False, opset_version=17, do_constant_folding=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        torch.onnx.export(Vision().eval(), (pv,), os.path.join(folder, "vision.onnx"),
                          input_names=["pixel_values"], output_names=["visual"],
                          dynamic_axes={"pixel_values": {0: "B"}, "visual": {0: "B"}}, **kw)
        visual = Vision()(pv)
        enc_out = [f"cross_{kind}_{i}" for i in range(L) for kind in ("k", "v")]
        torch.onnx.export(Encoder().eval(), (visual, ids, am), os.path.join(folder, "encoder.onnx"),
                          input_names=["visual", "input_ids", "attention_mask"],
                          output_names=["cross_bias"] + enc_out,
                          dynamic_axes={"visual": {0: "B"}, "input_ids": {0: "B", 1: "L"},
                                        "attention_mask": {0: "B", 1: "L"}, "cross_bias": {0: "B", 3: "M"},
                                        **{n: {0: "B", 2: "M"} for n in enc_out}}, **kw)
        enc = Encoder()(visual, ids, am)
        t = 1
        past = [torch.randn(B, H, t, dk) for _ in range(2 * L)]
        past_names = [f"past_{kind}_{i}" for i in range(L) for kind in ("k", "v")]
        present_names = [f"present_{kind}_{i}" for i in range(L) for kind in ("k", "v")]
        torch.onnx.export(DecoderStep().eval(),
                          (ids[:, :1], torch.arange(t + 1), enc[0], *past, *enc[1:]),
                          os.path.join(folder, "decoder.onnx"),
                          input_names=["tokens", "positions", "cross_bias"] + past_names + enc_out,
                          output_names=["logits"] + present_names,
                          dynamic_axes={"tokens": {0: "B"}, "positions": {0: "T1"}, "cross_bias": {0: "B", 3: "M"},
                                        **{n: {0: "B", 2: "T"} for n in past_names},
                                        **{n: {0: "B", 2: "M"} for n in enc_out},
                                        "logits": {0: "B"}, **{n: {0: "B", 2: "T1"} for n in present_names}},
                          **kw)
    log(f"exported the onnxruntime peer's graphs in {time.perf_counter() - t0:.0f} s")


def have_graphs(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in FILES)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


def beam_step(scores: np.ndarray, logp: np.ndarray, batch: int, beams: int):
    """One step of beam search over ``batch`` x ``beams`` rows: the ``beams`` best sums of log-probabilities
    over beams x vocabulary per input, best first (ties: the lower index).

    Returns (the row each new beam continues, i64[R]; its token, i64[R]; its score, f64[R]).
    """
    V = logp.shape[-1]
    candidates = (scores[:, None] + logp).reshape(batch, beams * V)
    top = np.argpartition(-candidates, beams, axis=1)[:, :beams]
    order = np.argsort(-np.take_along_axis(candidates, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    source = (np.arange(batch)[:, None] * beams + top // V).reshape(-1)
    return source, (top % V).reshape(-1), np.take_along_axis(candidates, top, 1).reshape(-1)


class OrtGenerator:
    """The three graphs in onnxruntime sessions and the search loop over them."""

    def __init__(self, folder: str, config, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        prov = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(os.path.join(folder, "vision.onnx"), opts, providers=prov)
        self.encoder = ort.InferenceSession(os.path.join(folder, "encoder.onnx"), opts, providers=prov)
        self.decoder = ort.InferenceSession(os.path.join(folder, "decoder.onnx"), opts, providers=prov)
        self.cfg = config
        L = config.decoder_layers
        self.past_names = [f"past_{kind}_{i}" for i in range(L) for kind in ("k", "v")]
        self.cross_names = [f"cross_{kind}_{i}" for i in range(L) for kind in ("k", "v")]

    def generate(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                 new_tokens: int, num_beams: int = 1, stop_at_eos: bool = False) -> Dict:
        """Tokens i64[B, new_tokens], scores f32[B] and timings (ms: vision, encoder, first token, total).

        ``stop_at_eos`` (greedy only): eos allowed, and the search ends once every row has said it
        (a row that has stays eos); the tokens then stop there."""
        if stop_at_eos and num_beams > 1:
            raise ValueError("stop_at_eos is for greedy search")
        cfg = self.cfg
        t0 = time.perf_counter()
        visual = self.vision.run(None, {"pixel_values": pixel_values})[0]
        t1 = time.perf_counter()
        enc = self.encoder.run(None, {"visual": visual, "input_ids": input_ids, "attention_mask": attention_mask})
        t2 = time.perf_counter()
        B, K = pixel_values.shape[0], max(1, num_beams)
        cross_bias, cross = enc[0], enc[1:]
        if K > 1:
            cross_bias = np.repeat(cross_bias, K, axis=0)
            cross = [np.repeat(c, K, axis=0) for c in cross]
        R = B * K
        feeds = {"cross_bias": cross_bias, **dict(zip(self.cross_names, cross))}
        empty = np.zeros((R, cfg.num_heads, 0, cfg.d_kv), np.float32)
        past = [empty] * len(self.past_names)
        tok = np.full((R, 1), cfg.decoder_start_token_id, np.int64)
        scores = np.zeros(R, np.float64)
        if K > 1:
            scores.reshape(B, K)[:, 1:] = -1e9
        seqs = np.zeros((R, 0), np.int64)
        first = None
        for step in range(new_tokens):
            feeds.update(zip(self.past_names, past))
            feeds["tokens"] = tok
            feeds["positions"] = np.arange(step + 1, dtype=np.int64)
            out = self.decoder.run(None, feeds)
            logp = log_softmax(out[0].astype(np.float32))
            if not stop_at_eos:
                logp[:, cfg.eos_token_id] = -np.inf  # the length is forced
            past = out[1:]
            if K == 1:
                nxt = logp.argmax(-1)
                if stop_at_eos and seqs.shape[1]:
                    nxt = np.where(seqs[:, -1] == cfg.eos_token_id, cfg.eos_token_id, nxt)
                scores += logp[np.arange(R), nxt]
                seqs = np.concatenate([seqs, nxt[:, None]], 1)
                tok = nxt[:, None].astype(np.int64)
            else:
                src, new_tok, scores = beam_step(scores, logp, B, K)
                past = [p[src] for p in past]
                seqs = np.concatenate([seqs[src], new_tok[:, None]], 1)
                tok = new_tok[:, None].astype(np.int64)
            if first is None:
                first = time.perf_counter()
            if stop_at_eos and (tok[:, 0] == cfg.eos_token_id).all():
                break
        t3 = time.perf_counter()
        if K > 1:
            best = scores.reshape(B, K).argmax(1)
            rows = np.arange(B) * K + best
            seqs, scores = seqs[rows], scores[rows] / max(1, new_tokens)
        return {"tokens": seqs, "scores": scores.astype(np.float32),
                "vision_ms": (t1 - t0) * 1e3, "encoder_ms": (t2 - t1) * 1e3,
                "ttft_ms": ((first or t3) - t0) * 1e3, "total_ms": (t3 - t0) * 1e3, "steps": seqs.shape[1]}
