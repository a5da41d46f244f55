"""The ``pali-engine`` command line.

    pali-engine inspect FILE           config and tensor table of a model file
    pali-engine run IMAGE PROMPT       generate text for an image
    pali-engine convert HF_DIR -o OUT.onnx   a Hugging Face PaliGemma directory to a model file
    pali-engine serve                  an HTTP server: OpenAI-compatible chat API, playground page
    pali-engine train / eval / export / bench

Subcommands that need optional packages import them only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable, Sequence

from ._version import __version__

#: The packages a subcommand imports beyond the runtime install, as one pip command that works on
#: a fresh machine: torch pinned, because an unpinned torch resolves to a multi-gigabyte CUDA build.
#: ``run`` needs onnxruntime for --backend onnxruntime only, ``eval`` needs torch for --backend torch.
INSTALL_HINTS: dict[str, str] = {
    "run": "pip install onnxruntime",
    "train": "pip install torch==2.13.0",
    "eval": "pip install torch==2.13.0",
    "export": "pip install torch==2.13.0 onnx onnxscript",
    "convert": "pip install torch==2.13.0 onnx onnxscript onnxruntime safetensors",
    "bench": "pip install torch==2.13.0 onnx onnxscript onnxruntime transformers ctranslate2 matplotlib",
}

# name -> (module providing add_arguments(parser) and run(args) -> int, help)
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("pali_engine.cli", "print a model file's config and tensor table"),
    "run": ("pali_engine.cli", "generate text for an image and a prompt"),
    "train": ("pali_engine.export.train", "train a PaLI model on the synthetic shapes world"),
    "eval": ("pali_engine.export.evaluate", "score a model on the held-out synthetic split"),
    "export": ("pali_engine.export.onnx_export", "export a checkpoint to ONNX"),
    "convert": ("pali_engine.export.paligemma", "convert a Hugging Face PaliGemma directory to ONNX"),
    "bench": ("pali_engine.benchmarks.harness", "time the engine beside its peers on the same weights"),
    "serve": ("pali_engine.server.cli", "serve a model over HTTP (OpenAI-compatible API, playground page)"),
}


def _inspect_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="an ONNX model file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _inspect_run(args: argparse.Namespace) -> int:
    from .model_file import inspect

    info = inspect(args.file)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"file: {args.file}")
    print(f"producer: {info['producer_name'] or '-'}   ir_version: {info['ir_version']}   opset: {info['opset_version']}")
    metadata = dict(info["metadata"])
    config_text = metadata.pop("pali.config", None)
    if config_text is not None:
        print("config:")
        try:
            config = json.loads(config_text)
            width = max((len(k) for k in config), default=0)
            for key, value in config.items():
                print(f"  {key:<{width}}  {json.dumps(value, ensure_ascii=False)}")
        except json.JSONDecodeError:
            print(f"  (not valid JSON) {config_text[:200]}")
    for key, value in metadata.items():
        shown = value if len(value) <= 60 else f"{value[:40]}... ({len(value)} chars)"
        print(f"metadata {key}: {shown}")
    tensors = info["tensors"]
    total = 0
    rows = []
    for name, (dtype, shape) in tensors.items():
        count = 1
        for d in shape:
            count *= d
        total += count
        rows.append((name, dtype, "x".join(map(str, shape)) or "scalar", count))
    name_width = max((len(r[0]) for r in rows), default=4)
    print(f"tensors: {len(rows)}, parameters: {total:,}")
    print(f"  {'name':<{name_width}}  {'dtype':<8}  {'shape':<16}  {'elements':>12}")
    for name, dtype, shape, count in rows:
        print(f"  {name:<{name_width}}  {dtype:<8}  {shape:<16}  {count:>12,}")
    return 0


def _run_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="an image file")
    parser.add_argument("prompt", help='a task prompt: "caption en", "answer en how many circles?", "ocr", '
                        '"detect circle ; square"')
    parser.add_argument("--model", help="an ONNX model file (default: the bundled model)")
    from .backends import backend_names
    from .dtypes import DTYPES

    parser.add_argument("--backend", default="native", choices=backend_names())
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="weight storage of the native engine (default: the file's own when it is "
                             "quantized, else float32)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--beams", type=int, default=1, help="beam search width (1: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's limit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--draw", metavar="OUT.png", help="draw the boxes of a detect answer on the image")
    parser.add_argument("--vae", metavar="vae-oid.npz",
                        help="PaliGemma: big_vision's mask decoder weights, to draw segmentation masks")
    parser.add_argument("--resize", default=None, choices=("pad", "stretch"),
                        help="how a non-square image becomes square: pad with its border colour, or stretch "
                             "(default: the model's convention, pad for the bundled model)")


def _run_run(args: argparse.Namespace) -> int:
    from .engine import Engine, default_model_path

    if args.model is None:
        try:
            args.model = default_model_path()
        except FileNotFoundError as error:
            print(f"pali-engine run: {error}", file=sys.stderr)
            return 2
    engine = Engine.load(args.model, backend=args.backend, dtype=args.dtype, threads=args.threads,
                         resize=args.resize)
    args.resize = engine._backend.resize
    result = engine.generate(args.image, args.prompt, num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    # The answer first: a failure to draw must not lose it.
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "score": result.score,
                          "timings": result.timings}, ensure_ascii=False), flush=True)
    else:
        print(result.text, flush=True)
    if args.draw:
        if engine.config.get("architecture") == "paligemma":
            return _draw_paligemma(args, result.text)
        return _draw(args, result.text)
    return 0


def _draw_paligemma(args: argparse.Namespace, answer: str) -> int:
    from .segmentation import MaskDecoder, draw_objects

    try:
        decoder = MaskDecoder.load(args.vae) if args.vae else None
        count = draw_objects(args.image, answer, args.draw, decoder)
    except (OSError, ValueError) as error:
        print(f"pali-engine run: --draw: {error}", file=sys.stderr)
        return 1
    print(f"pali-engine run: drew {count} object{'s' if count != 1 else ''} on {args.draw}", file=sys.stderr)
    return 0


def _draw(args: argparse.Namespace, answer: str) -> int:
    from .detection import draw_detections

    try:
        count = draw_detections(args.image, answer, args.draw, resize=args.resize)
    except (OSError, ValueError) as error:
        print(f"pali-engine run: --draw: cannot write {args.draw}: {error}", file=sys.stderr)
        return 1
    if count:
        print(f"pali-engine run: drew {count} box{'es' if count != 1 else ''} on {args.draw}", file=sys.stderr)
    else:
        why = "the model found none" if args.prompt.split()[:1] == ["detect"] else \
            'only "detect LABEL ; LABEL" prompts give boxes'
        print(f"pali-engine run: --draw: the answer has no boxes ({why}); {args.draw} is the image "
              "without marks", file=sys.stderr)
    return 0


_LOCAL: dict[str, tuple[Callable, Callable]] = {
    "inspect": (_inspect_add_arguments, _inspect_run),
    "run": (_run_add_arguments, _run_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pali-engine", description="Fast inference for PaLI-family vision-language models."
    )
    parser.add_argument("--version", action="version", version=f"pali-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in _SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load_subcommand(name: str):
    if name in _LOCAL:
        return _LOCAL[name]
    module_name = _SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(_missing_package_message(name, error)) from None
    return module.add_arguments, module.run


def _missing_package_message(name: str, error: ImportError) -> str:
    missing = f"the package {error.name!r} is not installed" if error.name else str(error)
    hint = INSTALL_HINTS.get(name)
    return f"pali-engine {name}: {missing}" + (f"; install what it needs with: {hint}" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in _SUBCOMMANDS:
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    add_arguments, run = _load_subcommand(name)
    sub = argparse.ArgumentParser(prog=f"pali-engine {name}", description=_SUBCOMMANDS[name][1])
    add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(run(args) or 0)
    except ImportError as error:
        print(_missing_package_message(name, error), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"pali-engine {name}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
