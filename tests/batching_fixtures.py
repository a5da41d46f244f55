"""Tiny models whose answers end early and unevenly, for the batching tests.

A random tiny PaLI, and tiny PaliGemma 1 and 2 (PaliGemma 2 with a sliding
window shorter than its sequences) whose eos logit is scaled up, so that the
requests of a batch finish at different steps. ``case`` gives (engine,
prompts, max_new_tokens); ``search`` runs the backend's search directly and
records the streamed tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export_fixtures import export_tiny, tiny_model
from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: F401 (a fixture)

from pali_engine import Engine, generation

PALI_PROMPTS = ["caption en", "ocr", "le cercle", "two", "a b c d", "x", "the fox", "one two"]
PALIGEMMA_PROMPTS = ["caption en", "answer en how many circles are there?", "ocr", "detect cat ; dog", "caption es",
                     "segment the red car"]
#: How much the eos row of each PaliGemma's head is scaled (PaliGemma 2 soft-caps its logits at 3).
EOS_SCALE = {1: 4.0, 2: 40.0}


@pytest.fixture(scope="module", params=["pali", "paligemma1", "paligemma2"])
def case(request, tmp_path_factory, tokenizer_path):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "pali":
        path = str(root / "tiny.onnx")
        export_tiny(path, tiny_model(seed=3))
        return Engine.load(path, threads=2), PALI_PROMPTS, 14
    from pali_engine.export.paligemma import convert

    version = int(request.param[-1])
    model, _ = build_checkpoint(version, str(root / "hf"), tokenizer_path)
    eos = model.config.text_config.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos] *= EOS_SCALE[version]
    model.save_pretrained(str(root / "hf"))
    convert(str(root / "hf"), str(root / "paligemma.onnx"))
    return Engine.load(str(root / "paligemma.onnx"), threads=2), PALIGEMMA_PROMPTS, 12


def images(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (30, 41, 3), dtype=np.uint8) for _ in range(n)]


def search(engine, pictures, prompts, options, stop_after=None):
    """(hypotheses per request, [(request, token) as streamed]); stop_after: {request: tokens} to stop at."""
    backend = engine._backend
    ids, mask = backend.encode_prompts(prompts)
    streamed = []

    def on_token(request, token):
        streamed.append((request, token))
        return sum(r == request for r, _ in streamed) < (stop_after or {}).get(request, 1 << 30)

    hypotheses, _ = backend._search(backend.pixel_values(pictures), ids, mask,
                                    generation.parse_options(options, backend.config), on_token)
    return hypotheses, streamed
