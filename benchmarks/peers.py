"""The engine and its peers behind one interface: load the size's files, run one case, report times.

Every peer runs the same weights on the same inputs with the output length forced
(``min_new_tokens = max_new_tokens``) and returns, for one call:

    vision_ms, encoder_ms   the vision encoder (ViT + projector) and the text encoder
    ttft_ms                 from pixel values and token ids in hand to the first token's logits
    total_ms                to the last token (the engine: its whole search, preprocessing excluded)
    steps, tokens, scores

Full-model peers (the engine, PyTorch eager, onnxruntime) run everything.
Text-side peers (transformers, CTranslate2) run the T5 text model only; the
harness adds the vision time of PyTorch (the same module computes their
visual tokens) to their TTFT and total, and says so.  CTranslate2 takes token
ids, not embeddings: it gets as many encoder tokens as image + prompt (random
ids), so its decode steps attend over the same length.  It has no encoder-only
call: at batch 1 greedy, ``generate_tokens`` stamps every token; otherwise its
encoder and first step are timed together by a 1-token ``translate_batch`` and
steps = (32-token call - 1-token call) / 31.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np


@dataclass(frozen=True)
class Case:
    batch: int
    beams: int
    new_tokens: int

    @property
    def search(self) -> str:
        return "greedy" if self.beams == 1 else f"beam{self.beams}"

    @property
    def name(self) -> str:
        return f"b{self.batch}-{self.search}"


def _now() -> float:
    return time.perf_counter()


def _mark(marks: Dict[str, float], key: str):
    """A forward hook that notes when ``key`` first finished (and leaves the output alone)."""

    def hook(module, args, output):
        marks.setdefault(key, _now())

    return hook


class Peer:
    """Base: ``name`` (row label), ``text_only``, ``precision`` ("f32", "f16", "int8")."""

    name = "?"
    text_only = False
    precision = "f32"
    needs: tuple = ()
    #: What the memory probe imports (the packages this peer runs on; default ``needs``).
    probe_needs: Optional[tuple] = None
    #: Timed in a process of its own instead of interleaved with the others in the harness's.
    isolated = False

    def missing(self) -> Optional[str]:
        """Why this peer cannot run here (a missing package), or None."""
        for mod in self.needs:
            try:
                importlib.import_module(mod)
            except Exception as error:  # ImportError, or a broken install
                return f"{mod} not importable ({type(error).__name__}: {error})"
        return None

    def load(self, art, shared: Dict, threads: int) -> None:
        raise NotImplementedError

    def run(self, inputs: Dict, case: Case) -> Dict:
        raise NotImplementedError

    def check(self, art, shared: Dict, inputs: Dict) -> Optional[Dict]:
        """A check that this peer runs our weights (beyond equal tokens), or None."""
        return None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------
# the engine

class EnginePeer(Peer):

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.precision = {"float32": "f32", "float16": "f16", "int8": "int8"}[dtype]
        self.name = f"engine {self.precision}"

    def missing(self):
        try:
            from pali_engine import _native

            _native.core_for("cpu")
        except Exception as error:
            return f"native module not importable ({type(error).__name__}: {error})"
        return None

    def load(self, art, shared, threads):
        from pali_engine import Engine

        self.engine = Engine.load(art.onnx_path, dtype=self.dtype, threads=threads)

    def run(self, inputs, case):
        rs = self.engine.generate(inputs["images"], inputs["prompts"], max_new_tokens=case.new_tokens,
                                  min_new_tokens=case.new_tokens, num_beams=case.beams)
        t = rs[0].timings
        total = t["generate_ms"]
        return {"vision_ms": t["vision_ms"], "encoder_ms": t["encoder_ms"],
                "ttft_ms": total - t["decode_ms"] + t["first_token_ms"], "total_ms": total,
                "steps": int(t["steps"]), "tokens": [list(r.tokens) for r in rs],
                "scores": [float(r.score) for r in rs]}

    def close(self):
        self.engine = None


# --------------------------------------------------------------------------
# PyTorch eager: export/model.py's generate with its KV cache

class TorchPeer(Peer):
    name = "pytorch"
    needs = ("torch",)

    def load(self, art, shared, threads):
        self.model = shared["torch_model"](None)

    def run(self, inputs, case):
        import torch

        m = self.model
        marks: Dict[str, float] = {}
        stamps: List[float] = []
        h1 = m.projector.register_forward_hook(_mark(marks, "vision"))
        h2 = m.encoder.register_forward_hook(_mark(marks, "encoder"))
        step = m.decode_step

        def stamped(*a, **k):
            out = step(*a, **k)
            stamps.append(_now())
            return out

        m.decode_step = stamped
        try:
            pv = torch.from_numpy(inputs["pixel_values"])
            ids = torch.from_numpy(inputs["input_ids"])
            am = torch.from_numpy(inputs["attention_mask"])
            t0 = _now()
            tokens, scores = m.generate(pv, ids, am, max_new_tokens=case.new_tokens, num_beams=case.beams,
                                        min_new_tokens=case.new_tokens)
            t1 = _now()
        finally:
            del m.decode_step
            h1.remove()
            h2.remove()
        return {"vision_ms": (marks["vision"] - t0) * 1e3, "encoder_ms": (marks["encoder"] - marks["vision"]) * 1e3,
                "ttft_ms": (stamps[0] - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "steps": len(stamps),
                "tokens": tokens.tolist(), "scores": scores.tolist()}


def visual_embeddings(model, inputs) -> tuple:
    """(encoder input f32[B,M,D], mask i64[B,M]): visual tokens + prompt embeddings (PyTorch)."""
    import torch

    with torch.no_grad():
        pv = torch.from_numpy(inputs["pixel_values"])
        ids = torch.from_numpy(inputs["input_ids"])
        am = torch.from_numpy(inputs["attention_mask"])
        vis = model.projector(model.vision(pv))
        x = torch.cat([vis, model.shared(ids)], dim=1)
        mask = torch.cat([torch.ones(vis.shape[:2], dtype=am.dtype), am], dim=1)
    return x, mask


def text_reference(model, source_ids: np.ndarray, case: Case):
    """Our PyTorch text model on token ids alone (what CTranslate2 is fed): tokens, scores."""
    import torch

    with torch.no_grad():
        ids = torch.from_numpy(source_ids)
        mask = torch.ones_like(ids)
        memory = model.encoder(model.shared(ids), mask)
        if case.beams == 1:
            tokens, scores = model._greedy(memory, mask, case.new_tokens, case.new_tokens)
        else:
            tokens, scores = model._beam_search(memory, mask, case.new_tokens, case.beams, 1.0, case.new_tokens)
    return tokens.tolist(), scores.tolist()


# --------------------------------------------------------------------------
# transformers: T5ForConditionalGeneration.generate(inputs_embeds=...) on the same text weights

class TransformersPeer(Peer):
    name = "transformers"
    text_only = True
    needs = ("torch", "transformers")

    def load(self, art, shared, threads):
        from pali_engine.export.hf_t5 import build_hf_t5

        self.vision_model = shared["torch_model"](("vision.", "projector.", "shared."))
        self.hf = shared.get("hf_model") or build_hf_t5(art.config, _text_state_dict(art, shared))
        shared["hf_model"] = self.hf
        self._embeds = {}

    def run(self, inputs, case):
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        key = id(inputs)
        if key not in self._embeds:  # the visual tokens: PyTorch's, timed in the PyTorch row
            self._embeds = {key: visual_embeddings(self.vision_model, inputs)}
        x, mask = self._embeds[key]
        stamps: List[float] = []
        marks: Dict[str, float] = {}

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(_now())
                return scores

        hook = self.hf.encoder.register_forward_hook(_mark(marks, "encoder"))
        try:
            with torch.no_grad():
                t0 = _now()
                out = self.hf.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=case.new_tokens,
                                       min_new_tokens=case.new_tokens, num_beams=case.beams, do_sample=False,
                                       logits_processor=LogitsProcessorList([Stamp()]),
                                       return_dict_in_generate=True, output_scores=case.beams > 1,
                                       output_logits=case.beams == 1)
                t1 = _now()
        finally:
            hook.remove()
        seqs = out.sequences[:, 1:]
        if case.beams > 1:
            scores = out.sequences_scores.tolist()
        else:  # the sum of the log-probs (of the raw logits) of the chosen tokens
            logp = torch.stack(out.logits, 1).float().log_softmax(-1)
            scores = logp.gather(2, seqs[:, :, None])[:, :, 0].sum(1).tolist()
        return {"vision_ms": None, "encoder_ms": (marks["encoder"] - t0) * 1e3,
                "ttft_ms": (stamps[0] - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "steps": len(stamps),
                "tokens": seqs.tolist(), "scores": scores}

    def check(self, art, shared, inputs):
        """Max abs difference of HF's and our teacher-forced logits on the same inputs_embeds."""
        import torch

        model = shared["torch_model"](None)
        x, mask = visual_embeddings(model, inputs)
        dec = torch.randint(3, art.config.vocab_size, (x.shape[0], 8), generator=torch.Generator().manual_seed(0))
        dec[:, 0] = art.config.decoder_start_token_id
        with torch.no_grad():
            ours = model.decode(dec, model.encoder(x, mask), mask)
            theirs = self.hf(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec).logits
        return {"what": "max abs diff of teacher-forced logits vs PyTorch (same inputs_embeds)",
                "max_abs_diff": float((ours - theirs).abs().max())}

    def close(self):
        self.hf = None


def _state_dict(art):
    import torch

    return torch.load(art.state_dict_path, map_location="cpu", mmap=True, weights_only=True)


def _text_state_dict(art, shared):
    """Our weights for the HF model: the loaded PyTorch model's own tensors where it is whole."""
    if shared.get("whole_torch_model"):
        return shared["torch_model"](None).state_dict()
    return _state_dict(art)


# --------------------------------------------------------------------------
# onnxruntime: vision, encoder and past-KV decoder graphs of the same model, NumPy search

class OrtPeer(Peer):
    name = "onnxruntime"
    needs = ("onnxruntime", "torch", "onnx")
    probe_needs = ("onnxruntime",)

    def load(self, art, shared, threads):
        from . import ort_graphs

        if not ort_graphs.have_graphs(art.ort_folder):
            ort_graphs.export_graphs(shared["torch_model"](None), art.ort_folder, log=shared.get("log", print))
        self.gen = ort_graphs.OrtGenerator(art.ort_folder, art.config, threads)

    def run(self, inputs, case):
        r = self.gen.generate(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                              case.new_tokens, case.beams)
        r["tokens"] = r["tokens"].tolist()
        r["scores"] = r["scores"].tolist()
        return r

    def close(self):
        self.gen = None


# --------------------------------------------------------------------------
# CTranslate2 on the text side (converted from the HF T5 built above)

class _Vocabulary:
    """The tokenizer CTranslate2's T5 loader asks for: only names, one per id."""

    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, size: int):
        self.tokens = ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, size)]

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i):
        return self.tokens[i]


def convert_ct2(hf_model, vocab_size: int, folder: str) -> None:
    """CTranslate2's converter on an in-memory HF T5 (float32 weights; int8 is chosen at load)."""
    import ctranslate2
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters.transformers import T5Loader

    from pali_engine.export.hf_t5 import check_hf_head

    check_hf_head(hf_model, bool(hf_model.config.scale_decoder_outputs)
                  if hasattr(hf_model.config, "scale_decoder_outputs") else hf_model.config.tie_word_embeddings)

    class InMemory(Converter):
        def _load(self):
            return T5Loader()(hf_model, _Vocabulary(vocab_size))

    InMemory().convert(folder, quantization=None, force=True)


class CT2Peer(Peer):
    text_only = True
    needs = ("ctranslate2", "torch", "transformers")
    probe_needs = ("ctranslate2",)
    # A Translator in the process slows the other peers' kernels in that process
    # (measured: the engine's small ViT from 49 ms to 90-120 ms for the calls that
    # follow creating one; the other peers alike), so it runs in a process of its own.
    isolated = True

    def __init__(self, compute_type: str):
        self.compute_type = compute_type
        self.precision = "int8" if compute_type.startswith("int8") else "f32"
        self.name = f"ctranslate2 {self.precision}"

    def load(self, art, shared, threads):
        import ctranslate2

        from pali_engine.export.hf_t5 import build_hf_t5

        if not os.path.isfile(os.path.join(art.ct2_folder, "model.bin")):
            hf = shared.get("hf_model") or build_hf_t5(art.config, _text_state_dict(art, shared))
            shared["hf_model"] = hf
            convert_ct2(hf, art.config.vocab_size, art.ct2_folder)
        self.vocab = _Vocabulary(art.config.vocab_size).tokens
        self.tr = ctranslate2.Translator(art.ct2_folder, device="cpu", compute_type=self.compute_type,
                                         intra_threads=threads, inter_threads=1)

    def run(self, inputs, case):
        src = [[self.vocab[i] for i in row] for row in inputs["source_ids"].tolist()]
        if case.batch == 1 and case.beams == 1:  # one call, a time stamp per token
            stamps, ids = [], []
            t0 = _now()
            for step in self.tr.generate_tokens(src[0], max_decoding_length=case.new_tokens,
                                                min_decoding_length=case.new_tokens):
                stamps.append(_now())
                ids.append(step.token_id)
            return {"vision_ms": None, "encoder_ms": None, "ttft_ms": (stamps[0] - t0) * 1e3,
                    "total_ms": (stamps[-1] - t0) * 1e3, "steps": len(ids), "tokens": [ids], "scores": None}
        kw = dict(beam_size=case.beams, num_hypotheses=1, length_penalty=1.0)
        t0 = _now()
        self.tr.translate_batch(src, max_decoding_length=1, min_decoding_length=1, **kw)
        t1 = _now()
        out = self.tr.translate_batch(src, max_decoding_length=case.new_tokens,
                                      min_decoding_length=case.new_tokens, return_scores=True, **kw)
        t2 = _now()
        index = {t: i for i, t in enumerate(self.vocab)}
        tokens = [[index[t] for t in r.hypotheses[0]] for r in out]
        # CTranslate2 scores are length-normalised and bans eos before its softmax (we after):
        # not comparable; check() compares log-probs instead
        return {"vision_ms": None, "encoder_ms": None, "ttft_ms": (t1 - t0) * 1e3, "total_ms": (t2 - t1) * 1e3,
                "steps": max(len(t) for t in tokens), "tokens": tokens, "scores": None}

    def check(self, art, shared, inputs):
        """Max abs difference of CTranslate2's log-probs (score_batch) and ours, teacher-forced on
        our greedy output for the same token ids: catches a wrong output scale, which greedy
        tokens do not."""
        import torch

        model = shared["torch_model"](None)
        src_ids = inputs["source_ids"][:1]
        tokens, _ = text_reference(model, src_ids, Case(1, 1, 16))
        with torch.no_grad():
            ids = torch.from_numpy(src_ids)
            mask = torch.ones_like(ids)
            dec = torch.tensor([[art.config.decoder_start_token_id] + tokens[0]])
            logp = model.decode(dec, model.encoder(model.shared(ids), mask), mask).log_softmax(-1)[0]
            ours = logp[torch.arange(len(tokens[0])), torch.tensor(tokens[0])].numpy()
        src = [[self.vocab[i] for i in src_ids[0].tolist()]]
        got = np.array(self.tr.score_batch(src, [[self.vocab[i] for i in tokens[0]]])[0].log_probs[:len(ours)])
        return {"what": "max abs diff of teacher-forced token log-probs vs PyTorch (same token ids)",
                "max_abs_diff": float(np.abs(got - ours).max())}

    def close(self):
        self.tr = None


def all_peers(engine_dtypes=("float32", "int8", "float16")) -> List[Peer]:
    peers: List[Peer] = [EnginePeer(d) for d in engine_dtypes]
    peers += [TorchPeer(), TransformersPeer(), OrtPeer(), CT2Peer("float32"), CT2Peer("int8")]
    return peers


PEER_KEYS = {"engine": "engine", "pytorch": "pytorch", "torch": "pytorch", "transformers": "transformers",
             "hf": "transformers", "onnxruntime": "onnxruntime", "ort": "onnxruntime",
             "ctranslate2": "ctranslate2", "ct2": "ctranslate2"}
