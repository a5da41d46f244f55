"""Benchmark sizes, their weights and the files each peer loads.

One set of weights per size, written once into a work folder (reused by later
runs when present):

    <work>/<size>-<key>/model.onnx       the pali-engine file (the engine loads it)
    <work>/<size>-<key>/state_dict.pt     the same weights for PyTorch (loaded mmap'ed)
    <work>/<size>-<key>/ort/*.onnx        vision, encoder and past-KV decoder graphs
    <work>/<size>-<key>/ct2/              the CTranslate2 model of the text side

Sizes: "default" (the bundled trained model: its ONNX file is the single
source of the weights), "tiny" (a few-KB random model, for tests),
"small" (ViT-S/16 + T5-small-like) and "base" (ViT-B/16 + T5-base), the last
two with random weights (the benchmark forces the output length, so what the
weights say does not matter; that every peer runs the same weights does).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from pali_engine.export.config import PaliConfig

#: Bump when the layout or content of the cached files changes.
ARTIFACT_VERSION = "1"

#: Words the prompts and a fallback tokenizer are built from.
WORDS = ("caption en", "answer en how many circles are there", "ocr", "detect circle ; square",
         "a red circle and a blue square", "two", "three", "le cercle rouge", "describe the picture")

SIZES = ("tiny", "default", "small", "base")


def size_config(name: str) -> PaliConfig:
    """The PaliConfig of a random-weight size ("tiny", "small", "base")."""
    if name == "tiny":
        return PaliConfig.tiny(max_new_tokens=64, max_prompt_tokens=16)
    if name == "small":
        # T5-small-like text (d 512, 8+8 layers, 6 heads x 64, d_ff 1024) + ViT-S/16 at 224
        return PaliConfig(image_size=224, patch_size=16, vision_width=384, vision_depth=12, vision_heads=6,
                          vision_mlp_dim=1536, d_model=512, d_kv=64, num_heads=6, d_ff=1024,
                          encoder_layers=8, decoder_layers=8, vocab_size=32128,
                          max_prompt_tokens=64, max_new_tokens=64).validate()
    if name == "base":
        # T5-base (v1.1, gated-GELU) text + ViT-B/16 at 224
        return PaliConfig(image_size=224, patch_size=16, vision_width=768, vision_depth=12, vision_heads=12,
                          vision_mlp_dim=3072, d_model=768, d_kv=64, num_heads=12, d_ff=2048,
                          encoder_layers=12, decoder_layers=12, vocab_size=32128,
                          max_prompt_tokens=64, max_new_tokens=64).validate()
    raise ValueError(f"unknown size {name!r}; choose from {', '.join(SIZES)}")


#: Prompt length in tokens (eos included) per size; None: the natural prompt "caption en".
PROMPT_TOKENS = {"tiny": None, "default": None, "small": 60, "base": 60}


def default_model_path() -> Optional[str]:
    from pali_engine.engine import _DEFAULT_MODEL

    return str(_DEFAULT_MODEL) if _DEFAULT_MODEL.is_file() else None


def fallback_tokenizer_bytes(vocab_size: int) -> bytes:
    """A small SentencePiece model (pad=0, eos=1, unk=2, no bos) of at most ``vocab_size`` pieces;
    the bundled default tokenizer is used instead where it exists and fits."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "..", "export", "default", "tokenizer.model"),
                 os.path.join(here, "..", "..", "export", "default", "tokenizer.model")):
        if os.path.isfile(cand):
            from pali_engine.tokenizer import Tokenizer

            data = open(cand, "rb").read()
            if Tokenizer(data).vocab_size <= vocab_size:
                return data
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(WORDS) * 20), model_writer=out, model_type="unigram",
        vocab_size=min(vocab_size, 48), hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=3, num_threads=1)
    return out.getvalue()


def read_onnx_weights(path: str):
    """(PaliConfig, {state_dict name: float32 array}, tokenizer bytes) of a pali-engine ONNX file."""
    import base64

    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = PaliConfig.from_json(meta["pali.config"])
    tok = base64.b64decode(meta["pali.tokenizer"])
    weights = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in proto.graph.initializer}
    return cfg, weights, tok


def _random_model(cfg: PaliConfig, seed: int):
    import torch

    from pali_engine.export.model import Pali

    torch.manual_seed(seed)
    model = Pali(cfg).eval()
    with torch.no_grad():  # norm weights away from 1 and non-zero biases, as a trained model has
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def load_torch_model(state_dict_path: str, cfg: PaliConfig, keep=None):
    """The Pali model from ``state_dict.pt``, weights mapped from the file (no copy in memory).

    ``keep``: parameter name prefixes to load (the rest of the model is dropped), e.g.
    ("vision.", "projector.", "shared.") for a peer that only needs the vision side."""
    import torch

    from pali_engine.export.model import Pali

    sd = torch.load(state_dict_path, map_location="cpu", mmap=True, weights_only=True)
    with torch.device("meta"):
        model = Pali(cfg)
    if keep is not None:
        for name in ("encoder", "decoder", "lm_head", "vision", "projector", "shared"):
            if not any(k.startswith(name + ".") or k == name for k in keep):
                setattr(model, name, None)
        sd = {k: v for k, v in sd.items() if any(k.startswith(p) for p in keep)}
    model.load_state_dict(sd, assign=True, strict=keep is None)
    return model.eval()


@dataclass
class Artifacts:
    """The files of one size (see the module docstring)."""

    size: str
    folder: str
    config: PaliConfig
    onnx_path: str
    state_dict_path: str
    tokenizer: bytes
    info: Dict = field(default_factory=dict)

    @property
    def ort_folder(self) -> str:
        return os.path.join(self.folder, "ort")

    @property
    def ct2_folder(self) -> str:
        return os.path.join(self.folder, "ct2")


def _file_key(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def prepare(size: str, work_dir: str, seed: int = 0, log: Callable[[str], None] = print,
            model_path: Optional[str] = None) -> Artifacts:
    """Writes (or finds) model.onnx and state_dict.pt of ``size``; "default" is the bundled model
    or ``model_path`` (any pali-engine ONNX file); FileNotFoundError when there is none."""
    import torch

    if size == "default":
        src = model_path or default_model_path()
        if src is None:
            raise FileNotFoundError("no bundled default model (pali_engine/models/pali-default.onnx)")
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src}: no such model file")
        folder = os.path.join(work_dir, f"default-{_file_key(src)}-v{ARTIFACT_VERSION}")
    else:
        src = None
        folder = os.path.join(work_dir, f"{size}-seed{seed}-v{ARTIFACT_VERSION}")
    os.makedirs(folder, exist_ok=True)
    sd_path = os.path.join(folder, "state_dict.pt")
    onnx_path = src or os.path.join(folder, "model.onnx")
    info_path = os.path.join(folder, "info.json")
    if os.path.isfile(sd_path) and os.path.isfile(onnx_path) and os.path.isfile(info_path):
        info = json.load(open(info_path))
        cfg = PaliConfig.from_dict(info["config"])
        tok = open(os.path.join(folder, "tokenizer.model"), "rb").read()
        return Artifacts(size, folder, cfg, onnx_path, sd_path, tok, info)
    t0 = time.perf_counter()
    if src is not None:
        cfg, weights, tok = read_onnx_weights(src)
        torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, sd_path)
        del weights
    else:
        cfg = size_config(size)
        model = _random_model(cfg, seed)
        tok = fallback_tokenizer_bytes(cfg.vocab_size)
        from pali_engine.export.onnx_export import export_model

        log(f"[{size}] exporting the engine's ONNX file ...")
        export_model(model, tok, onnx_path, validate=False)
        torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, sd_path)
        del model
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(tok)
    info = {"config": cfg.to_dict(),
            "source": (os.path.basename(src) if src else f"random, seed {seed}"),
            "prepare_s": round(time.perf_counter() - t0, 1)}
    with open(info_path, "w") as f:
        json.dump(info, f)
    log(f"[{size}] weights ready in {info['prepare_s']:.0f} s")
    return Artifacts(size, folder, cfg, onnx_path, sd_path, tok, info)


def make_inputs(art: Artifacts, batch: int, seed: int = 0) -> Dict:
    """The inputs every peer gets: uint8 images, prompts, and from them (with the engine's own
    preprocessing and tokenizer) pixel_values, input_ids, attention_mask; plus, for
    CTranslate2 (token ids only), source ids of the same total encoder length."""
    from pali_engine.image import preprocess
    from pali_engine.tokenizer import Tokenizer

    cfg = art.config
    tok = Tokenizer(art.tokenizer, pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id)
    target = PROMPT_TOKENS.get(art.size)
    prompt = "caption en" if target is None else make_prompt(tok, target)
    rng = np.random.default_rng(seed)
    S = cfg.image_size
    images = [rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for _ in range(batch)]
    prompts = [prompt] * batch
    pixel_values = np.stack([preprocess(im, S, cfg.image_mean, cfg.image_std, cfg.resample) for im in images])
    ids = np.array([tok.encode(p) for p in prompts], dtype=np.int64)
    mask = np.ones_like(ids)
    n_img = cfg.num_patches
    # the text-only peer's encoder input: as many tokens as image + prompt, ids drawn at random
    img_ids = rng.integers(3, cfg.vocab_size, (batch, n_img), dtype=np.int64)
    source_ids = np.concatenate([img_ids, ids], axis=1)
    return {"images": images, "prompts": prompts, "pixel_values": pixel_values.astype(np.float32),
            "input_ids": ids, "attention_mask": mask, "source_ids": source_ids,
            "prompt_tokens": int(ids.shape[1]), "image_tokens": int(n_img)}


def make_prompt(tok, target: int) -> str:
    """A prompt of exactly ``target`` tokens (eos included) where the words allow it."""
    words = " ".join(WORDS).split()
    text = ""
    stalled = 0
    i = 0
    while len(tok.encode(text)) < target and stalled < len(words):
        cand = (text + " " + words[i % len(words)]).strip()
        i += 1
        if len(tok.encode(cand)) <= target:
            text, stalled = cand, 0
        else:
            stalled += 1
    return text


# --------------------------------------------------------------------------
# sizes of the work, for the floors

def parameter_counts(cfg: PaliConfig) -> Dict[str, int]:
    """Parameters by part; ``decode_step``: the weights one decoder step reads (self-attention
    q/k/v/o, cross-attention q/o -- its k/v act on the memory once per request --, the FFN,
    the norms, the head and one embedding row)."""
    D, I, F, V = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    W, P, C, N = cfg.vision_width, cfg.patch_size, cfg.num_channels, cfg.num_patches
    vit_block = 4 * (W * W + W) + 2 * W * cfg.vision_mlp_dim + cfg.vision_mlp_dim + W + 4 * W
    vision = C * P * P * W + W + N * W + cfg.vision_depth * vit_block + 2 * W + W * D + D
    enc_block = 4 * D * I + 3 * D * F + 2 * D
    dec_step_block = 4 * D * I + 2 * D * I + 3 * D * F + 3 * D
    head = V * D
    return {
        "vision": vision,
        "encoder": cfg.encoder_layers * enc_block + D,
        "cross_kv": cfg.decoder_layers * 2 * D * I,
        "decode_step": cfg.decoder_layers * dec_step_block + D + head + D,
        "embedding": V * D,
        "total": vision + V * D + cfg.encoder_layers * enc_block + D
        + cfg.decoder_layers * (8 * D * I + 3 * D * F + 3 * D) + D + head
        + 2 * cfg.relative_attention_num_buckets * cfg.num_heads,
    }


def prefill_flops(cfg: PaliConfig, prompt_tokens: int) -> Dict[str, float]:
    """FLOPs (2 per multiply-add) of one image's vision encoder, its text encoder and the
    cross-attention K/V projections, matrix products only."""
    W, N, Mv = cfg.vision_width, cfg.num_patches, cfg.vision_mlp_dim
    D, I, F = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
    M = N + prompt_tokens
    vision = 2 * N * (cfg.num_channels * cfg.patch_size ** 2) * W
    vision += cfg.vision_depth * (2 * N * (4 * W * W + 2 * W * Mv) + 4 * N * N * W)
    vision += 2 * N * W * D
    encoder = cfg.encoder_layers * (2 * M * (4 * D * I + 3 * D * F) + 4 * M * M * I)
    cross = cfg.decoder_layers * 2 * M * 2 * D * I
    return {"vision": float(vision), "encoder": float(encoder), "cross_kv": float(cross)}
