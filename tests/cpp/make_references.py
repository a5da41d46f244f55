"""Writes what the Python engine computes, for the C++ API's test (tests/cpp/api_test.cc) to compare.

    python tests/cpp/make_references.py OUT_DIR [--paligemma]

Why: the C++ API reproduces the Python package's preprocessing, prompts,
generation, results and error messages; this script records the Python side
on the same inputs. OUT_DIR receives the test images (PNG and JPEG files of
every mode PIL reads, and raw pixel arrays), float32/int64 arrays as raw
little-endian files, and ``references.tsv``: one check per line, fields
separated by tabs (a tab, a newline or a backslash inside a field is written
\\t, \\n, \\\\). With --paligemma a tiny random PaliGemma is built with
transformers (tests/paligemma_fixtures.py) and converted, and its checks are
added.

Line kinds (the first field):
  preprocess   IMAGE SIZE RESAMPLE RESIZE MEAN STD REF.f32      pali_engine.image.preprocess
  pixels       MODEL IMAGE REF.f32                              the engine's pixel_values of one image
  prompts      MODEL BATCH LENGTH IDS.i64 MASK.i64 PROMPT...    the engine's encode_prompts
  logits       MODEL IMAGE PROMPT REF.f32                       scores of the first generated token
  generate     MODEL DTYPE OPTIONS COUNT IMAGE PROMPT ...       then COUNT x sequences `result` lines
  result       INPUT SEQUENCE TEXT TOKENS SCORE
  stream       MODEL IMAGE PROMPT OPTIONS PIECE...              the pieces Engine.stream yields
  decode       MODEL IDS TEXT
  objects      MODEL WIDTH HEIGHT TEXT OBJECT...                OBJECT: x0 x1 y0 y1 (repr) label codes, by \x1f
  error        WHAT KIND MESSAGE ARGS...                        what raises ValueError/ModelFileError
IMAGE is a file name in OUT_DIR, or raw:NAME.u8:HEIGHT:WIDTH:CHANNELS for pixels given as an array.
OPTIONS is `name=kind:value` joined by `;` (kind: int, float, bool, str, none), or `-`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from typing import Any, Dict, List, Sequence

import numpy as np
from PIL import Image

from pali_engine import Engine, ModelFileError
from pali_engine.image import preprocess

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
BUNDLED = os.path.join(REPO, "pali_engine", "models", "pali-default.onnx")
SHAPES = os.path.join(REPO, "examples", "shapes.png")


def field(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class References:
    def __init__(self, out: str):
        self.out = out
        self.lines: List[str] = []
        self.arrays = 0

    def line(self, *fields: Any) -> None:
        self.lines.append("\t".join(field(f) for f in fields))

    def array(self, values: np.ndarray, suffix: str) -> str:
        self.arrays += 1
        name = f"array{self.arrays:04d}.{suffix}"
        dtype = {"f32": "<f4", "i64": "<i8", "u8": "u1"}[suffix]
        np.ascontiguousarray(values, dtype=dtype).tofile(os.path.join(self.out, name))
        return name

    def write(self) -> None:
        with open(os.path.join(self.out, "references.tsv"), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self.lines) + "\n")


def options_field(options: Dict[str, Any]) -> str:
    parts = []
    for name, value in options.items():
        if value is None:
            parts.append(f"{name}=none:")
        elif isinstance(value, bool):
            parts.append(f"{name}=bool:{int(value)}")
        elif isinstance(value, int):
            parts.append(f"{name}=int:{value}")
        elif isinstance(value, float):
            parts.append(f"{name}=float:{value!r}")
        else:
            parts.append(f"{name}=str:{value}")
    return ";".join(parts) or "-"


# ---------------------------------------------------------------- images

def write_images(out: str) -> Dict[str, Any]:
    """Test images of every kind the C++ decoder must read as PIL does: name -> what Python is given."""
    rng = np.random.default_rng(7)
    images: Dict[str, Any] = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        image.save(os.path.join(out, name), **kwargs)
        images[name] = os.path.join(out, name)

    shutil.copy(SHAPES, os.path.join(out, "shapes.png"))
    images["shapes.png"] = os.path.join(out, "shapes.png")
    smooth = np.clip(np.add.outer(np.arange(90), np.arange(130))[:, :, None] * [1.0, 1.5, 0.7] +
                     rng.normal(0, 12, (90, 130, 3)), 0, 255).astype(np.uint8)
    save("wide.png", Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)))
    save("tall.png", Image.fromarray(rng.integers(0, 256, (45, 20, 3), dtype=np.uint8)))
    save("tiny.png", Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)))
    save("large.png", Image.fromarray(np.resize(smooth, (301, 207, 3))))
    save("needle.png", Image.fromarray(rng.integers(0, 256, (420, 3, 3), dtype=np.uint8)))
    rgba = rng.integers(0, 256, (40, 36, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0
    rgba[10:20, :, 3] = 255
    save("rgba.png", Image.fromarray(rgba))
    save("grey.png", Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8)))
    save("grey_alpha.png", Image.fromarray(rng.integers(0, 256, (24, 31, 2), dtype=np.uint8)))
    palette = Image.fromarray(smooth[:48, :48]).convert("P", palette=Image.ADAPTIVE, colors=40)
    save("palette.png", palette)
    palette.info["transparency"] = 3
    save("palette_trns.png", palette, transparency=3)
    save("bilevel.png", Image.fromarray(rng.integers(0, 2, (17, 19), dtype=np.uint8) * 255).convert("1"))
    rgb16 = rng.integers(0, 65536, (21, 26, 3), dtype=np.uint16)
    save("rgb16.png", Image.frombytes("RGB", (26, 21), rgb16.astype(">u2").tobytes(), "raw", "RGB;16B"))
    grey16 = rng.integers(0, 600, (22, 18), dtype=np.uint16)
    save("grey16.png", Image.fromarray(grey16))
    save("photo.jpg", Image.fromarray(smooth), quality=90)
    save("photo444.jpg", Image.fromarray(smooth[:64, :80]), quality=95, subsampling=0)
    save("grey.jpg", Image.fromarray(smooth[:, :, 0]), quality=85)
    save("cmyk.jpg", Image.fromarray(smooth[:32, :40]).convert("CMYK"), quality=90)
    for name, shape in (("raw_rgba", (23, 29, 4)), ("raw_grey", (16, 26, 1)), ("raw_rgb", (19, 11, 3))):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        if shape[2] == 4:
            array[:5, :, 3] = 0
        array.tofile(os.path.join(out, name + ".u8"))
        images[f"raw:{name}.u8:{shape[0]}:{shape[1]}:{shape[2]}"] = array if shape[2] != 1 else array[:, :, 0]
    return images


def image_references(refs: References, images: Dict[str, Any]) -> None:
    settings = [(64, "bilinear", "pad", (0.5,) * 3, (0.5,) * 3),
                (64, "bicubic", "stretch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                (37, "lanczos", "pad", (0.5,) * 3, (0.25, 0.5, 1.0)),
                (23, "nearest", "stretch", (0.0,) * 3, (1.0,) * 3),
                (96, "bicubic", "pad", (0.5,) * 3, (0.5,) * 3)]
    for name, image in images.items():
        for size, resample, resize, mean, std in settings:
            x = preprocess(image, size, mean, std, resample, resize)
            refs.line("preprocess", name, size, resample, resize, ",".join(map(repr, mean)), ",".join(map(repr, std)),
                      refs.array(x, "f32"))


# ---------------------------------------------------------------- engines

def generate_references(refs: References, model: str, dtype: str, images: Dict[str, Any], cases) -> None:
    engine = Engine.load(model, dtype=dtype)
    for names, prompts, options in cases:
        results = engine.generate([images[n] for n in names], list(prompts), **options)
        refs.line("generate", model, dtype, options_field(options), len(names),
                  *[x for pair in zip(names, prompts) for x in pair])
        for i, per_input in enumerate(results):
            for k, r in enumerate(per_input if isinstance(per_input, list) else [per_input]):
                refs.line("result", i, k, r.text, ",".join(map(str, r.tokens)), repr(r.score))


def engine_references(refs: References, model: str, images: Dict[str, Any], names: Sequence[str],
                      prompt_batches: Sequence[Sequence[str]], logits_cases, generate_cases, stream_cases,
                      decode_cases, object_cases) -> Engine:
    engine = Engine.load(model)
    backend = engine._backend
    for name in names:
        refs.line("pixels", model, name, refs.array(backend.pixel_values([images[name]])[0], "f32"))
    for prompts in prompt_batches:
        ids, mask = backend.encode_prompts(list(prompts))
        refs.line("prompts", model, ids.shape[0], ids.shape[1], refs.array(ids, "i64"), refs.array(mask, "i64"),
                  *prompts)
    for name, prompt in logits_cases:
        ids, mask = backend.encode_prompts([prompt])
        pixels = backend.pixel_values([images[name]])
        if engine.config.get("architecture") == "paligemma":
            logits = engine.logits(pixels, ids, mask, np.zeros_like(ids))[0, -1]
        else:
            logits = engine.logits(pixels, ids, mask, np.zeros((1, 1), np.int64))[0, 0]
        refs.line("logits", model, name, prompt, refs.array(logits, "f32"))
    generate_references(refs, model, "float32", images, generate_cases)
    for name, prompt, options in stream_cases:
        refs.line("stream", model, name, prompt, options_field(options),
                  *list(engine.stream(images[name], prompt, **options)))
    for ids in decode_cases:
        refs.line("decode", model, ",".join(map(str, ids)), engine.tokenizer.decode(ids))
    for width, height, text in object_cases:
        objects = backend.parse_objects(text, (width, height))
        refs.line("objects", model, width, height, text,
                  *["\x1f".join([*map(repr, o.box), o.label, " ".join(map(str, o.codes or []))]) for o in objects])
    return engine


# ---------------------------------------------------------------- errors

def error_of(call) -> tuple:
    try:
        call()
    except ModelFileError as error:
        return "model_file", str(error)
    except ValueError as error:
        return "invalid_argument", str(error)
    raise AssertionError("expected an error")


def error_references(refs: References, out: str, images: Dict[str, Any]) -> None:
    engine = Engine.load(BUNDLED)
    shapes = images["shapes.png"]
    bad_options = [{"num_beams": 0}, {"num_beams": 2.5}, {"max_new_tokens": 0}, {"top_p": 1.5}, {"top_k": -1},
                   {"temperature": 0.0, "do_sample": True}, {"do_sample": 1}, {"early_stopping": "sometimes"},
                   {"seed": -1}, {"length_penalty": 1e40}, {"beams": 2, "topk": 1},
                   {"num_return_sequences": 3, "num_beams": 2}, {"repetition_penalty": 0.0},
                   {"do_sample": True, "num_beams": 2}, {"min_new_tokens": -2}, {"max_new_tokens": "ten"}]
    for options in bad_options:
        kind, message = error_of(lambda: engine.generate(shapes, "caption en", **options))
        refs.line("error", "options", kind, message, BUNDLED, options_field(options))
    kind, message = error_of(lambda: engine.stream(shapes, "caption en", num_return_sequences=2, num_beams=2))
    refs.line("error", "stream", kind, message, BUNDLED, options_field({"num_return_sequences": 2, "num_beams": 2}))
    for prompts in (["caption en " + "circle " * 40], ["caption en", "describe " * 30]):
        kind, message = error_of(lambda: engine.generate([shapes] * len(prompts), prompts))
        refs.line("error", "prompts", kind, message, BUNDLED, *prompts)
    kind, message = error_of(lambda: engine.generate([shapes, shapes], ["caption en"]))
    refs.line("error", "batch", kind, message, BUNDLED, "2", "1")
    kind, message = error_of(lambda: engine.generate([], []))
    refs.line("error", "batch", kind, message, BUNDLED, "0", "0")

    with open(os.path.join(out, "not_image.txt"), "w") as f:
        f.write("hello\n")
    with open(SHAPES, "rb") as f:
        png = f.read()
    with open(os.path.join(out, "truncated.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    for name in ("missing.png", "truncated.png", ""):
        path = os.path.join(out, name)
        kind, message = error_of(lambda: preprocess(path))
        refs.line("error", "image", kind, message, path)
    # Python names the file it could not identify with a file object's repr: the C++ message's prefix is this.
    refs.line("error", "image_prefix", "invalid_argument",
              f"cannot read image file {os.path.join(out, 'not_image.txt')!r}: cannot identify image file",
              os.path.join(out, "not_image.txt"))

    with open(BUNDLED, "rb") as f:
        bundled = f.read()
    with open(os.path.join(out, "truncated.onnx"), "wb") as f:
        f.write(bundled[: len(bundled) // 3])
    no_metadata = os.path.join(out, "no_metadata.onnx")
    metadata_variants = write_model_variants(out)
    cases = [(os.path.join(out, "missing.onnx"), {}), (out, {}), (os.path.join(out, "truncated.onnx"), {}),
             (no_metadata, {}), *[(path, {}) for path in metadata_variants],
             (BUNDLED, {"threads": 5000})]
    for path, kwargs in cases:
        kind, message = error_of(lambda: Engine.load(path, **kwargs))
        refs.line("error", "load", kind, message, path, kwargs.get("threads", ""))


def write_model_variants(out: str) -> List[str]:
    """The bundled model with its metadata or tensors spoiled, each in its own file."""
    import onnx

    base = onnx.load(BUNDLED)
    paths = []

    def save(name: str, model) -> None:
        path = os.path.join(out, name)
        onnx.save(model, path)
        paths.append(path)

    def with_metadata(change) -> "onnx.ModelProto":
        model = onnx.ModelProto()
        model.CopyFrom(base)
        props = {p.key: p.value for p in model.metadata_props}
        change(props)
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        return model

    empty = onnx.ModelProto()
    empty.CopyFrom(base)
    del empty.metadata_props[:]
    onnx.save(empty, os.path.join(out, "no_metadata.onnx"))
    save("no_format.onnx", with_metadata(lambda p: p.pop("pali.format")))
    save("format_9.onnx", with_metadata(lambda p: p.update({"pali.format": "9"})))
    save("bad_config.onnx", with_metadata(lambda p: p.update({"pali.config": p["pali.config"].replace(
        '"d_model": 256', '"d_model": -3')})))
    save("other_arch.onnx", with_metadata(lambda p: p.update({"pali.config": p["pali.config"].replace(
        '"architecture": "pali"', '"architecture": "llava"')})))
    save("no_tokenizer.onnx", with_metadata(lambda p: p.pop("pali.tokenizer")))
    save("bad_base64.onnx", with_metadata(lambda p: p.update({"pali.tokenizer": "abc$"})))
    save("bad_tokenizer.onnx", with_metadata(lambda p: p.update({"pali.tokenizer": "aGVsbG8gd29ybGQ="})))
    extra = onnx.ModelProto()
    extra.CopyFrom(base)
    extra.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused.weight"))
    save("extra_tensor.onnx", extra)
    missing = onnx.ModelProto()
    missing.CopyFrom(base)
    del missing.graph.initializer[-1]
    save("missing_tensor.onnx", missing)
    return paths


# ---------------------------------------------------------------- PaliGemma

def build_paligemma(out: str) -> str:
    """A tiny random PaliGemma 1, built with transformers and converted (tests/paligemma_fixtures.py)."""
    sys.path.insert(0, TESTS)
    import torch
    from paligemma_fixtures import build_checkpoint, train_tokenizer

    from pali_engine.export.paligemma import convert

    torch.set_num_threads(2)
    root = os.path.join(out, "paligemma")
    train_tokenizer(os.path.join(root, "tokenizer", "tokenizer.model"))
    with contextlib_quiet():
        build_checkpoint(1, os.path.join(root, "hf"), os.path.join(root, "tokenizer", "tokenizer.model"))
    path = os.path.join(out, "paligemma.onnx")
    convert(os.path.join(root, "hf"), path, validate=False)
    shutil.rmtree(root)
    return path


class contextlib_quiet:
    """stderr silenced (transformers' progress bars)."""

    def __enter__(self):
        self._stderr = sys.stderr
        sys.stderr = io.StringIO()

    def __exit__(self, *exc):
        sys.stderr = self._stderr


# ---------------------------------------------------------------- main

PALI_PROMPTS = [["caption en"], ["caption en", "answer en how many circles?", "detect circle ; star", "ocr"],
                ["héllo wörld ✓ 你好", "  two  spaces\tand a tab ", ""], ["detect " + "circle ; " * 6]]
PALI_GENERATE = [
    (["shapes.png"], ["caption en"], {}),
    (["shapes.png"], ["caption en"], {"num_beams": 3}),
    (["shapes.png", "wide.png", "photo.jpg"], ["caption en", "detect circle ; star", "answer en how many circles?"],
     {"max_new_tokens": 12}),
    (["shapes.png"], ["caption en"], {"num_beams": 4, "num_return_sequences": 3, "length_penalty": 0.5,
                                      "early_stopping": "never"}),
    (["tall.png", "shapes.png"], ["caption en", "detect star"], {"num_beams": 2, "early_stopping": True}),
    (["shapes.png"], ["caption en"], {"do_sample": True, "seed": 1234, "top_k": 5, "temperature": 1.3,
                                      "num_return_sequences": 2}),
    (["shapes.png"], ["caption en"], {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "min_new_tokens": 12,
                                      "max_new_tokens": 16}),
    (["rgba.png"], ["caption en"], {"do_sample": True, "seed": 2**64 - 1, "top_p": 0.7}),
]
PALI_STREAM = [("shapes.png", "caption en", {}), ("wide.png", "detect circle ; star", {"max_new_tokens": 10}),
               ("shapes.png", "caption en", {"num_beams": 3})]
PALI_DECODE = [[1291, 1333, 1301], [0, 1291, 0, 1333, 1, 1301], [5000, 1291, -1, 1333], [], [1]]
PALI_OBJECTS = [(64, 64, "<loc0240><loc0192><loc0559><loc0512> circle ; <loc0352><loc0591><loc0512><loc0783> star"),
                (50, 30, "<loc0000><loc0000><loc1023><loc1023>  big  box ;<loc0100><loc0200><loc0300><loc9999>x"),
                (20, 45, "no boxes <loc12> here <loc0001><loc0002><loc0003><loc0004>\u3000label\u00a0;tail")]
PALIGEMMA_PROMPTS = [["caption en"], ["caption en", "detect cat ; dog", "<image>answer en how many circles are there?"],
                     ["segment <loc0012><seg003> the <mask> car <unk><bos>", "  spaces  ", "ü ✓"]]
PALIGEMMA_GENERATE = [
    (["shapes.png"], ["caption en"], {"max_new_tokens": 10}),
    (["wide.png", "rgba.png"], ["detect cat ; dog", "caption en"], {"max_new_tokens": 8, "num_beams": 3,
                                                                     "num_return_sequences": 2}),
]
PALIGEMMA_OBJECTS = [
    (50, 30, "<loc0100><loc0200><loc0300><loc0400> cat ; <loc0000><loc0000><loc1023><loc1024>dog"),
    (64, 64, "<loc0010><loc0020><loc0500><loc0600> " + "".join(f"<seg{i:03d}> " for i in range(16)) + "car ; "
     "<loc0001><loc0002><loc0003><loc0004><seg001><seg002> partial"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the folder to write into (created)")
    parser.add_argument("--paligemma", action="store_true", help="also build and check a tiny PaliGemma")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    refs = References(args.out)
    images = write_images(args.out)
    image_references(refs, images)
    engine_references(refs, BUNDLED, images, list(images), PALI_PROMPTS,
                      [("shapes.png", "caption en"), ("wide.png", "detect circle ; star"), ("photo.jpg", "ocr")],
                      PALI_GENERATE, PALI_STREAM, PALI_DECODE, PALI_OBJECTS)
    for dtype in ("float16", "int8"):
        generate_references(refs, BUNDLED, dtype, images, PALI_GENERATE[:2])
    error_references(refs, args.out, images)
    if args.paligemma:
        path = build_paligemma(args.out)
        engine_references(refs, path, images, ["shapes.png", "wide.png", "rgba.png", "needle.png", "tiny.png",
                                               "raw:raw_rgba.u8:23:29:4", "grey_alpha.png"],
                          PALIGEMMA_PROMPTS, [("shapes.png", "caption en"), ("wide.png", "detect cat ; dog")],
                          PALIGEMMA_GENERATE, [("shapes.png", "caption en", {"max_new_tokens": 6})],
                          [[2, 5, 1, 7], [0, 0, 9]], PALIGEMMA_OBJECTS)
    refs.write()
    print(f"{len(refs.lines)} references, {refs.arrays} arrays in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
