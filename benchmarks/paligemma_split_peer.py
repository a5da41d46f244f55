"""onnxruntime as a PaliGemma peer: the split graphs in sessions and a NumPy search loop over them.

Why: issue 20 compares the engine with onnxruntime on transformers.js-style
graphs (export/paligemma/split_graphs.py: vision encoder, token embeddings,
decoder with past key/values), in float32 and with onnxruntime's own int8
dynamic quantization (``quantize_dynamic``'s defaults: int8 weights, one
symmetric scale per tensor, activations quantized at run time,
MatMulInteger; ``quantize_graphs``).  The loop is what
transformers.js runs: the image and the prompt once, then one token a step,
the keys and values of the earlier steps fed back; for beams the cache is
repeated per beam after the prompt and reordered with a gather each step.

    python -m pali_engine.benchmarks.paligemma_split_peer export HF_DIR OUT_DIR [--int8 OUT_INT8_DIR]

Greedy and beam search follow transformers' ``generate()`` with
``min_new_tokens = max_new_tokens`` (eos banned, the length forced), as the
benchmark always asks: greedy takes the arg-max; beam search keeps the
``num_beams`` best sums of log-probabilities over beams x vocabulary (the
first step from the prompt's one row), and the best beam at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from pali_engine.benchmarks.ort_graphs import beam_step, log_softmax
from pali_engine.export.paligemma.split_graphs import (CONFIG_FILE, FILES, past_names, read_split_config,
                                                       write_int8_decoder, write_split_graphs)


def have_graphs(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in FILES + (CONFIG_FILE,))


def quantize_graphs(hf_dir: str, folder: str, out_folder: str, log=print) -> None:
    """onnxruntime's int8 dynamic quantization of the split graphs in ``folder``: the vision graph by
    ``quantize_dynamic`` (its defaults), the decoder as quantize_dynamic makes it but streamed from the
    checkpoint (``write_int8_decoder``: quantize_dynamic needs more memory than a 3B decoder leaves), the
    embedding table kept in float32 (quantize_dynamic would make its Gather int8 too; transformers.js's
    quantized PaliGemma keeps it float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(out_folder, exist_ok=True)
    for file in ("embed.onnx", "embed.onnx.data", CONFIG_FILE):
        shutil.copy(os.path.join(folder, file), os.path.join(out_folder, file))
    t0 = time.perf_counter()
    quantize_dynamic(os.path.join(folder, "vision.onnx"), os.path.join(out_folder, "vision.onnx"),
                     weight_type=QuantType.QInt8, use_external_data_format=True)
    log(f"quantized vision.onnx in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    write_int8_decoder(hf_dir, os.path.join(out_folder, "decoder.onnx"))
    log(f"wrote the int8 decoder.onnx in {time.perf_counter() - t0:.0f} s")


class SplitGraphGenerator:
    """The three graphs in onnxruntime sessions and the search loop over them."""

    def __init__(self, folder: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.vision, self.embed, self.decoder = (
            ort.InferenceSession(os.path.join(folder, file), options, providers=providers) for file in FILES)
        self.config = read_split_config(folder)
        t = self.config["text_config"]
        self.past = past_names(t["num_hidden_layers"])
        self.cache_shape = (t["num_key_value_heads"], t["head_dim"])

    def _prompt_embeds(self, features: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
        """The prompt's inputs_embeds: the k-th ``<image>`` token of a row takes the row's k-th feature."""
        embeds = self.embed.run(None, {"input_ids": input_ids})[0]
        is_image = input_ids == self.config["image_token_index"]
        for row in range(input_ids.shape[0]):
            embeds[row, is_image[row]] = features[row, :int(is_image[row].sum())]
        return embeds

    def generate(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                 new_tokens: int, num_beams: int = 1) -> Dict:
        """Tokens i64[B, new_tokens], scores f32[B] (sum of log-probabilities / new_tokens for beams) and
        timings in ms (vision, TTFT: pixel values in hand to the first token, total)."""
        B, L = input_ids.shape
        eos = self.config["text_config"]["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]
        t0 = time.perf_counter()
        features = self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]
        t1 = time.perf_counter()
        embeds = self._prompt_embeds(features, input_ids)
        mask = attention_mask.astype(np.int64)
        empty = np.zeros((B, *self.cache_shape[:1], 0, self.cache_shape[1]), np.float32)
        feeds = {"inputs_embeds": embeds, "attention_mask": mask,
                 "position_ids": np.broadcast_to(np.arange(1, L + 1, dtype=np.int64), (B, L)).copy(),
                 **{name: empty for name in self.past}}
        out = self.decoder.run(None, feeds)
        K = max(1, num_beams)
        logits, past = out[0], out[1:]
        if K > 1:
            logits = np.repeat(logits, K, axis=0)
            past = [np.repeat(p, K, axis=0) for p in past]
            mask = np.repeat(mask, K, axis=0)
        R = B * K
        scores = np.zeros(R, np.float64)
        if K > 1:
            scores.reshape(B, K)[:, 1:] = -np.inf  # the first step: one candidate row per prompt
        seqs = np.zeros((R, 0), np.int64)
        first = None
        for step in range(new_tokens):
            if step:
                tokens = seqs[:, -1:]
                mask = np.concatenate([mask, np.ones((R, 1), np.int64)], axis=1)
                feeds = {"inputs_embeds": self.embed.run(None, {"input_ids": tokens})[0], "attention_mask": mask,
                         "position_ids": np.full((R, 1), L + step, np.int64), **dict(zip(self.past, past))}
                out = self.decoder.run(None, feeds)
                logits, past = out[0], out[1:]
            logp = log_softmax(logits.astype(np.float32))
            logp[:, eos] = -np.inf  # the length is forced
            if K == 1:
                chosen = logp.argmax(-1)
                scores += logp[np.arange(R), chosen]
                seqs = np.concatenate([seqs, chosen[:, None]], 1)
            else:
                source, tokens, scores = beam_step(scores, logp, B, K)
                past = [p[source] for p in past]
                seqs = np.concatenate([seqs[source], tokens[:, None]], 1)
            if first is None:
                first = time.perf_counter()
        t2 = time.perf_counter()
        if K > 1:
            best = np.arange(B) * K + scores.reshape(B, K).argmax(1)
            seqs, scores = seqs[best], scores[best] / new_tokens
        return {"tokens": seqs, "scores": scores.astype(np.float32), "vision_ms": (t1 - t0) * 1e3,
                "ttft_ms": (first - t0) * 1e3, "total_ms": (t2 - t0) * 1e3, "steps": seqs.shape[1]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pali_engine.benchmarks.paligemma_split_peer",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write the split graphs (float32), and their int8 quantization")
    export.add_argument("hf_dir")
    export.add_argument("out_dir")
    export.add_argument("--int8", default=None, help="also write onnxruntime's int8 dynamic quantization here")
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if not have_graphs(args.out_dir):
        t0 = time.perf_counter()
        write_split_graphs(args.hf_dir, args.out_dir, log)
        log(f"split graphs written in {time.perf_counter() - t0:.0f} s")
    if args.int8 and not have_graphs(args.int8):
        quantize_graphs(args.hf_dir, args.out_dir, args.int8, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
