"""Tiny random PaliGemma 1 and 2 checkpoints built offline by transformers, for the converter tests.

Each is a Hugging Face directory as ``save_pretrained`` writes it (config.json,
safetensors — sharded on request —, tokenizer files, the image processor's
settings) plus the SentencePiece ``tokenizer.model``. The tokenizer is trained
here with what PaliGemma's has: pad/eos/bos/unk at 0..3, ``<mask>``, the 1024
``<locNNNN>`` and 128 ``<segNNN>`` tokens, ``\\n``, byte fallback, no dummy
prefix; ``<image>`` is added by transformers' processor after the pieces (so
its id is the piece count, as in the released checkpoints, 257152), and the
model's vocabulary is padded past it.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Dict

import pytest

PIECES = 1500
VOCAB_SIZE = PIECES + 8
TEXT = ("caption en", "answer en how many circles are there?", "detect cat ; dog", "ocr", "segment the red car",
        "a photo of a cat on the mat", "the quick brown fox jumps over the lazy dog", "describe en")

#: The shapes of the two models: PaliGemma 1 with multi-query attention and head_dim 256; PaliGemma 2
#: with grouped-query attention, a sliding window shorter than the sequences, both soft-caps on and
#: query_pre_attn_scalar != head_dim; different image resolutions.
SHAPES: Dict[int, dict] = {
    1: dict(image_size=16, patch_size=4,
            text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=256)),
    2: dict(image_size=24, patch_size=6,
            text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, sliding_window=5, query_pre_attn_scalar=12,
                      attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
}


def train_tokenizer(path: str) -> None:
    import sentencepiece as spm

    symbols = ["<mask>"] + [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)] + ["\n"]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(TEXT) * 20), model_writer=out, model_type="bpe", vocab_size=PIECES,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=symbols, byte_fallback=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=3, num_threads=1,
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(out.getvalue())


def hf_processor(directory_with_tokenizer: str, image_size: int, num_image_tokens: int):
    """transformers' PaliGemmaProcessor on the tokenizer.model in ``directory_with_tokenizer``, PIL image path."""
    from transformers import GemmaTokenizer, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = GemmaTokenizer.from_pretrained(directory_with_tokenizer)
    images = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_seq_length=num_image_tokens, resample=3,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)


def build_checkpoint(version: int, directory: str, tokenizer_path: str, *, shard: bool = False):
    """Saves a random PaliGemma ``version`` (1 or 2) to ``directory``; returns (model, processor)."""
    import torch
    from transformers import (Gemma2Config, GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              SiglipVisionConfig)

    shape = SHAPES[version]
    torch.manual_seed(version)
    text_class = GemmaConfig if version == 1 else Gemma2Config
    text = text_class(vocab_size=VOCAB_SIZE, **shape["text"])
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                patch_size=shape["patch_size"], image_size=shape["image_size"],
                                vision_use_head=False)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=PIECES,
                             vocab_size=VOCAB_SIZE, projection_dim=32, hidden_size=32)
    model = PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        # random norms and biases too (a zero-initialised (1 + w) norm would not test the 1 +)
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.2))
            if "vision_tower" in name and "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    model.save_pretrained(directory, max_shard_size="40KB" if shard else "1GB")
    num_image_tokens = (shape["image_size"] // shape["patch_size"]) ** 2
    processor = hf_processor(os.path.dirname(tokenizer_path), shape["image_size"], num_image_tokens)
    processor.save_pretrained(directory)
    shutil.copy(tokenizer_path, os.path.join(directory, "tokenizer.model"))
    return model, processor


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """The trained tokenizer.model, once per test module."""
    path = str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")
    train_tokenizer(path)
    return path
