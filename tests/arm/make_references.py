"""Writes what the x86 Python engine computes from pixel arrays and token ids, for tests/arm/arm_test.cc.

    python tests/arm/make_references.py OUT_DIR [--paligemma]

Why: the aarch64 build of the engine (.ci/arm) is held to the x86 one on the
same inputs. It has no image decoder or tokenizer (no arm64 SentencePiece next
to the amd64 one on Debian 12), so this script records the model's inputs as
the Python engine prepares them (pixel_values, input ids and mask, as raw
little-endian arrays) beside its outputs: first-token logits and generated
tokens, in float32, float16 and int8. The images and the tiny PaliGemma are
tests/cpp/make_references.py's.

references.tsv, one check per line, fields separated by tabs:
  logits    MODEL DTYPE BATCH LENGTH PIXELS.f32 IDS.i64 MASK.i64 LOGITS.f32
  generate  MODEL DTYPE BATCH LENGTH PIXELS.f32 IDS.i64 MASK.i64 NUM_BEAMS MAX_NEW_TOKENS TOKENS
MODEL is a file name in OUT_DIR; TOKENS is each input's best sequence (eos
included when it ended with one), ids by ",", inputs by ";".
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cpp"))

import make_references as cpp_references  # noqa: E402  (tests/cpp/make_references.py)

from pali_engine import Engine  # noqa: E402

DTYPES = ("float32", "float16", "int8")
# Few and short: every check runs three times under emulation (.ci/arm).
PALI_LOGITS = [("shapes.png", "caption en"), ("wide.png", "detect circle ; star")]
PALI_GENERATE = [((("shapes.png", "caption en"),), 1, 10), ((("shapes.png", "caption en"),), 3, 6),
                 ((("wide.png", "detect circle ; star"), ("photo.jpg", "caption en")), 1, 6)]
PALIGEMMA_LOGITS = [("shapes.png", "caption en"), ("wide.png", "detect cat ; dog")]
PALIGEMMA_GENERATE = [((("shapes.png", "caption en"),), 1, 6), ((("wide.png", "detect cat ; dog"),), 2, 4)]


def inputs(refs: cpp_references.References, engine: Engine, images, cases) -> list:
    backend = engine._backend
    pixels = backend.pixel_values([images[name] for name, _ in cases])
    ids, mask = backend.encode_prompts([prompt for _, prompt in cases])
    return [ids.shape[0], ids.shape[1], refs.array(pixels, "f32"), refs.array(ids, "i64"), refs.array(mask, "i64")]


def model_references(refs, model: str, images, logits_cases, generate_cases) -> None:
    name = os.path.basename(model)
    for dtype in DTYPES:
        engine = Engine.load(model, dtype=dtype)
        paligemma = engine.config.get("architecture") == "paligemma"
        for case in logits_cases:
            fields = inputs(refs, engine, images, [case])
            ids, mask = engine._backend.encode_prompts([case[1]])
            pixels = engine._backend.pixel_values([images[case[0]]])
            if paligemma:
                logits = engine.logits(pixels, ids, mask, np.zeros_like(ids))[:, -1]
            else:
                logits = engine.logits(pixels, ids, mask, np.zeros((1, 1), np.int64))[:, 0]
            refs.line("logits", name, dtype, *fields, refs.array(logits, "f32"))
        for cases, beams, max_new_tokens in generate_cases:
            fields = inputs(refs, engine, images, cases)
            results = engine.generate([images[n] for n, _ in cases], [p for _, p in cases], num_beams=beams,
                                      max_new_tokens=max_new_tokens)
            tokens = ";".join(",".join(map(str, r.tokens)) for r in results)
            refs.line("generate", name, dtype, *fields, beams, max_new_tokens, tokens)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the folder to write into (created)")
    parser.add_argument("--paligemma", action="store_true", help="also build and check a tiny PaliGemma")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    refs = cpp_references.References(args.out)
    images = cpp_references.write_images(args.out)
    bundled = os.path.join(args.out, os.path.basename(cpp_references.BUNDLED))
    if not os.path.exists(bundled):
        os.symlink(cpp_references.BUNDLED, bundled)
    model_references(refs, bundled, images, PALI_LOGITS, PALI_GENERATE)
    if args.paligemma:
        path = cpp_references.build_paligemma(args.out)
        model_references(refs, path, images, PALIGEMMA_LOGITS, PALIGEMMA_GENERATE)
    refs.write()
    print(f"{len(refs.lines)} references, {refs.arrays} arrays in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
