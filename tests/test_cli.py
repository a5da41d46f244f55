"""The command line as a newcomer meets it (pali_engine/cli.py, export/evaluate.py):
install hints that work on a fresh machine, ``run --draw`` and ``--resize``,
and ``eval`` on the runtime install."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

from pali_engine import cli

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPOSITORY, "examples", "shapes.png")


def _extras() -> dict[str, set[str]]:
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(REPOSITORY, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    return {extra: {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in requirements}
            for extra, requirements in project["optional-dependencies"].items()}


def test_install_hints_pin_torch_and_name_only_the_project_s_extras():
    extras = _extras()
    known = extras["export"] | extras["ort"] | extras["bench"]
    for command, hint in cli.INSTALL_HINTS.items():
        words = hint.split()
        assert words[:2] == ["pip", "install"], command
        packages = words[2:]
        for package in packages:
            assert package.split("==")[0] in known, (command, package)
        assert "torch" not in packages, f"{command}: torch must be pinned"
        assert not any("[" in p for p in packages), f"{command}: extras resolve only from a package index"
    assert "torch==2.13.0" in cli.INSTALL_HINTS["bench"].split()
    bench = set(cli.INSTALL_HINTS["bench"].split()[2:])
    assert {"onnxruntime", "transformers", "ctranslate2", "matplotlib"} <= bench


def test_a_missing_package_names_the_pinned_install_command(monkeypatch, capsys):
    def needs_torch(args):
        raise ImportError("No module named 'torch'", name="torch")

    monkeypatch.setattr(cli, "_load_subcommand", lambda name: (lambda parser: None, needs_torch))
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert "'torch' is not installed" in err and "pip install torch==2.13.0" in err


def test_draw_without_boxes_says_so_and_keeps_the_answer(tmp_path, capsys):
    out = tmp_path / "boxes.png"
    assert cli.main(["run", EXAMPLE, "caption en", "--draw", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "a blue circle and a red star"
    assert "no boxes" in captured.err and "detect" in captured.err and "without marks" in captured.err
    assert out.exists()


def test_draw_failure_still_prints_the_answer(tmp_path, capsys):
    out = tmp_path / "no-such-folder" / "boxes.png"
    assert cli.main(["run", EXAMPLE, "detect circle ; star", "--draw", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("<loc") == 8 and "circle" in captured.out
    assert "cannot write" in captured.err and "Traceback" not in captured.err


def test_draw_writes_the_boxes(tmp_path, capsys):
    out = tmp_path / "boxes.png"
    assert cli.main(["run", EXAMPLE, "detect circle ; star", "--draw", str(out)]) == 0
    assert "drew 2 boxes" in capsys.readouterr().err
    assert Image.open(out).size == (256, 256)


def test_run_resize_stretch_gives_the_stretched_image_s_answer(tmp_path, capsys):
    from pali_engine import Engine
    from pali_engine.image import fit_to_input

    wide = tmp_path / "wide.png"
    Image.open(EXAMPLE).resize((128, 64)).save(wide)
    engine = Engine.load()
    for resize in ("pad", "stretch"):
        assert cli.main(["run", str(wide), "caption en", "--resize", resize, "--json"]) == 0
        text = json.loads(capsys.readouterr().out)["text"]
        assert text == engine.generate(fit_to_input(str(wide), 64, resize=resize), "caption en").text


def test_eval_defaults_to_the_engine_and_needs_no_torch(monkeypatch, capsys):
    from pali_engine.export import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    assert parser.parse_args([]).backend is None
    assert evaluate.default_backend(evaluate.DEFAULT_MODEL) == "engine"
    assert evaluate.default_backend("pali_engine/models/pali-default.onnx") == "engine"
    assert evaluate.default_backend("runs/mine/model.pt") == "torch"
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert evaluate.run(parser.parse_args(["--n", "2", "--tasks", "caption_en", "--json"])) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["caption_en"]["n"] == 2


def test_eval_task_names_are_explained():
    from pali_engine.export import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    assert "'caption en'" in parser.format_help().replace("\n", " ").replace("  ", " ")


def test_detection_boxes_of_a_padded_image_map_back_to_it():
    from pali_engine.detection import parse_detections

    # The model saw a 400x200 image centred on a 400x400 square: rows 100..300.
    text = "<loc0256><loc0000><loc0767><loc1023> wide box"
    (box, label), = parse_detections(text, image_size=(400, 200))
    assert label == "wide box"
    assert box == pytest.approx((0.0, (256 / 1023 * 400 - 100) / 200, 1.0, (767 / 1023 * 400 - 100) / 200))
    (stretched, _), = parse_detections(text, image_size=(400, 200), resize="stretch")
    assert stretched == pytest.approx((0.0, 256 / 1023, 1.0, 767 / 1023))
    (square, _), = parse_detections(text)
    assert square == pytest.approx(stretched)


def test_box_lines_grow_with_the_image(tmp_path):
    from pali_engine.detection import draw_detections

    text = "<loc0100><loc0100><loc0900><loc0900> circle"
    photo = np.full((3000, 4000, 3), 255, np.uint8)
    out = tmp_path / "photo.png"
    assert draw_detections(photo, text, str(out)) == 1
    drawn = np.asarray(Image.open(out))
    row = drawn[1500]  # through the middle: the left and right edges of the box
    magenta = np.flatnonzero((row == (255, 0, 255)).all(axis=1))
    left_edge = magenta[magenta < 2000]
    assert len(left_edge) >= 15  # about 1/200 of 4000 px; 2 px would be invisible at this size
