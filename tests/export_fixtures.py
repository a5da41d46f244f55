"""Tiny random-weight PaLI models, a tiny tokenizer and their ONNX exports, for the export and backend tests."""

from __future__ import annotations

import io
import os

# A few words the tiny tokenizer is trained on; prompts in the tests use them.
WORDS = ("caption en", "answer en how many circles", "ocr", "detect circle ; square",
         "a red circle and a blue square", "two", "three", "le cercle rouge")


def tiny_tokenizer_bytes(vocab_size: int = 48) -> bytes:
    """A SentencePiece model (pad=0, eos=1, unk=2, no bos) with at most ``vocab_size`` pieces."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(WORDS) * 20), model_writer=out, model_type="unigram",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=3, num_threads=1,
    )
    return out.getvalue()


def tiny_model(seed: int = 0, **overrides):
    """A random-weight Pali with PaliConfig.tiny(**overrides); weights made "peaky" so
    greedy and beam search are not decided by near-ties."""
    import torch

    from pali_engine.export.config import PaliConfig
    from pali_engine.export.model import Pali

    torch.manual_seed(seed)
    model = Pali(PaliConfig.tiny(**overrides)).eval()
    with torch.no_grad():
        # non-trivial norm weights and biases, so that parameters with equal values are rare
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "_norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
        model.lm_head.weight.mul_(4.0)
    return model


def export_tiny(path, model=None, tok=None, **kwargs):
    """Exports (model, tokenizer) to ``path`` (float32 by default); returns the export report."""
    from pali_engine.export.onnx_export import export_model

    model = model if model is not None else tiny_model()
    tok = tok if tok is not None else tiny_tokenizer_bytes()
    return export_model(model, tok, os.fspath(path), **kwargs)
