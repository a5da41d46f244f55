"""A Hugging Face PaliGemma directory with the real shapes and random bfloat16 weights, written tensor by tensor.

Why: the converter's memory and time are measured on checkpoints of the
released sizes (6 GB for PaliGemma 2 3B, 20 GB at 10B) that cannot be
downloaded here, and that the machine could not hold in PyTorch either.  This
writes what the Hub's directories hold — config.json as the released ones
spell it (relying on the config classes' defaults), transformers 4's tensor
names, safetensors shards of about 5 GB with model.safetensors.index.json,
preprocessor_config.json and a SentencePiece tokenizer.model (a small one:
the converter only checks its special ids) — one tensor at a time, in chunks,
never holding a tensor whole.

    python -m pali_engine.benchmarks.paligemma_checkpoint OUT_DIR [--shape paligemma2-3b-224]
                                                                  [--shape paligemma-3b-224]  # PaliGemma 1

The weights are random bfloat16 values of magnitude about 0.01 (random signs
and mantissas), seeded: the same directory each time.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np

#: The released checkpoints' config.json (PaliGemma 1 and 2 at 224 px); the shapes follow from them.
_VISION_224 = {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
               "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256, "num_positions": 256,
               "patch_size": 14, "torch_dtype": "bfloat16", "vision_use_head": False}


def _paligemma2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                query_pre_attn_scalar: int) -> Dict[str, Any]:
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": 2048, "image_token_index": 257152, "model_type": "paligemma", "pad_token_id": 0,
        "projection_dim": hidden, "torch_dtype": "bfloat16", "transformers_version": "4.47.0.dev0",
        "text_config": {"hidden_activation": "gelu_pytorch_tanh", "hidden_size": hidden,
                        "intermediate_size": intermediate, "model_type": "gemma2", "num_attention_heads": heads,
                        "num_hidden_layers": layers, "num_image_tokens": 256, "num_key_value_heads": kv_heads,
                        "head_dim": head_dim, "query_pre_attn_scalar": query_pre_attn_scalar,
                        "vocab_size": 257216, "torch_dtype": "bfloat16"},
        "vision_config": dict(_VISION_224, projection_dim=hidden),
    }


def _paligemma1() -> Dict[str, Any]:
    """PaliGemma 1 3B at 224 px (Gemma 2B: multi-query attention), as its bfloat16 revision spells it."""
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": 2048, "ignore_index": -100, "image_token_index": 257152, "model_type": "paligemma",
        "pad_token_id": 0, "projection_dim": 2048, "torch_dtype": "bfloat16", "transformers_version": "4.41.0.dev0",
        "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
                        "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
                        "num_key_value_heads": 1, "torch_dtype": "bfloat16", "vocab_size": 257216},
        "vision_config": dict(_VISION_224, projection_dim=2048, projector_hidden_act="gelu_fast"),
    }


SHAPES: Dict[str, Dict[str, Any]] = {
    "paligemma-3b-224": _paligemma1(),
    "paligemma2-3b-224": _paligemma2(2304, 9216, 26, 8, 4, 256, 256),
    "paligemma2-10b-224": _paligemma2(3584, 14336, 42, 16, 8, 256, 256),
    "paligemma2-28b-224": _paligemma2(4608, 36864, 46, 32, 16, 128, 144),
}
PREPROCESSOR = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
                "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5], "processor_class": "PaliGemmaProcessor",
                "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}
#: Hugging Face's default max_shard_size.
SHARD_BYTES = 5 * 10**9
CHUNK_ELEMENTS = 1 << 24


def hub_name(name: str) -> str:
    """transformers 5's state_dict name -> transformers 4's, as the released checkpoints spell it."""
    for new, old in (("model.language_model.", "language_model.model."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("lm_head.", "language_model.lm_head.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def write_tokenizer(path: str, pieces: int = 1000) -> None:
    """A small SentencePiece model with PaliGemma's special ids: pad 0, eos 1, bos 2, unk 3."""
    import sentencepiece as spm

    text = ["caption en", "answer en how many circles are there?", "detect cat ; dog", "a photo of a cat",
            "the quick brown fox jumps over the lazy dog", "segment the red car", "ocr"] * 30
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=out, model_type="bpe", vocab_size=pieces, pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, minloglevel=3, num_threads=1)
    with open(path, "wb") as f:
        f.write(out.getvalue())


def _random_bfloat16(rng: np.random.Generator, count: int) -> np.ndarray:
    """bfloat16 bits of values in ±[2^-7, 2^-6): a random sign and mantissa, a fixed exponent."""
    return rng.integers(0, 1 << 16, size=count, dtype=np.uint16) & np.uint16(0x807F) | np.uint16(0x3C00)


def _shards(tensors: List[Tuple[str, Tuple[int, ...]]], shard_bytes: int) -> List[List[Tuple[str, Tuple[int, ...]]]]:
    """Tensors packed in order into shards of at most ``shard_bytes`` (a larger tensor gets its own)."""
    shards: List[List[Tuple[str, Tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * int(np.prod(shape, dtype=np.int64))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _write_shard(path: str, tensors: List[Tuple[str, Tuple[int, ...]]], rng: np.random.Generator) -> int:
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = 2 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for _, shape in tensors:
            remaining = int(np.prod(shape, dtype=np.int64))
            while remaining:
                count = min(remaining, CHUNK_ELEMENTS)
                f.write(_random_bfloat16(rng, count).tobytes())
                remaining -= count
    return offset


def write_checkpoint(directory: str, config: Dict[str, Any], *, shard_bytes: int = SHARD_BYTES, seed: int = 0,
                     preprocessor: Dict[str, Any] = PREPROCESSOR) -> Dict[str, Any]:
    """Writes the directory; returns {"parameters", "bytes", "shards", "seconds"}."""
    from pali_engine.export.paligemma.checkpoint import read_config
    from pali_engine.paligemma_spec import expected_parameter_shapes

    start = time.perf_counter()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
    write_tokenizer(os.path.join(directory, "tokenizer.model"))
    expected = expected_parameter_shapes(read_config(directory))
    tensors = [(hub_name(name), tuple(shape)) for name, shape in expected.items()]
    shards = _shards(tensors, shard_bytes)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += _write_shard(os.path.join(directory, file_name), shard, rng)
        weight_map.update({name: file_name for name, _ in shard})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return {"parameters": total // 2, "bytes": total, "shards": len(shards),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="the folder to write (created)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="paligemma2-3b-224")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = write_checkpoint(args.directory, copy.deepcopy(SHAPES[args.shape]), seed=args.seed)
    print(f"{args.directory}: {args.shape}, {report['parameters']:,} parameters, "
          f"{report['bytes'] / 1e9:.2f} GB in {report['shards']} shards, {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
