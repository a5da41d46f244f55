"""Model configuration for the "pali" architecture.

One flat dataclass, stored verbatim as JSON (in checkpoints and in the ONNX
metadata ``pali.config``) and read by the C++ engine, so field names are a
contract: add fields, never rename them.  No torch import here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import List


@dataclass
class PaliConfig:
    architecture: str = "pali"
    # image preprocessing
    image_size: int = 64
    patch_size: int = 8
    num_channels: int = 3
    image_mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resample: str = "bilinear"
    # vision encoder (ViT)
    vision_width: int = 192
    vision_depth: int = 4
    vision_heads: int = 4
    vision_mlp_dim: int = 512
    vision_layer_norm_eps: float = 1e-6
    # text encoder-decoder (T5 v1.1 / mT5)
    d_model: int = 256
    d_kv: int = 32
    num_heads: int = 8
    d_ff: int = 640
    encoder_layers: int = 3
    decoder_layers: int = 3
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # vocabulary and special tokens
    vocab_size: int = 1536
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    unk_token_id: int = 2
    decoder_start_token_id: int = 0
    # limits
    max_prompt_tokens: int = 32
    max_new_tokens: int = 48

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> "PaliConfig":
        if self.architecture != "pali":
            raise ValueError(f"architecture must be 'pali', got {self.architecture!r}")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.vision_width % self.vision_heads:
            raise ValueError("vision_width must be a multiple of vision_heads")
        if self.feed_forward_proj not in ("gated-gelu", "gated-silu"):
            raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError("image_mean/image_std need one value per channel")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "PaliConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PaliConfig fields: {sorted(unknown)}")
        return cls(**d).validate()

    @classmethod
    def from_json(cls, s: str) -> "PaliConfig":
        return cls.from_dict(json.loads(s))

    @classmethod
    def tiny(cls, **overrides) -> "PaliConfig":
        """A very small random-weight config for tests."""
        base = dict(image_size=16, patch_size=8, vision_width=32, vision_depth=2,
                    vision_heads=2, vision_mlp_dim=64, d_model=32, d_kv=8, num_heads=4,
                    d_ff=48, encoder_layers=2, decoder_layers=2, vocab_size=64,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    max_prompt_tokens=12, max_new_tokens=10)
        base.update(overrides)
        return cls(**base).validate()
