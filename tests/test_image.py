"""Tests of image preprocessing (pali_engine/image.py): accepted inputs,
conversions (transparency on white), normalisation, padding or stretching to
a square, resizing, and the errors for bad inputs (paths that are not files)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pali_engine.image import pad_to_square, preprocess, preprocess_batch, square_frame, to_rgb_array


def rgb(h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_array_normalisation():
    a = rgb()
    x = preprocess(a, 64)
    assert x.dtype == np.float32 and x.shape == (3, 64, 64)
    np.testing.assert_allclose(x, a.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
    assert x.min() >= -1.0 and x.max() <= 1.0
    x2 = preprocess(a, 64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(x2, a.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_pil_path_and_array_agree(tmp_path):
    a = rgb()
    p = tmp_path / "img.png"
    Image.fromarray(a).save(p)
    ref = preprocess(a, 64)
    np.testing.assert_array_equal(preprocess(Image.fromarray(a), 64), ref)
    np.testing.assert_array_equal(preprocess(str(p), 64), ref)
    np.testing.assert_array_equal(preprocess(p, 64), ref)


def test_grayscale_and_rgba_conversions():
    g = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    ref = preprocess(np.repeat(g[:, :, None], 3, axis=2), 32)
    np.testing.assert_array_equal(preprocess(g, 32), ref)
    np.testing.assert_array_equal(preprocess(g[:, :, None], 32), ref)
    np.testing.assert_array_equal(preprocess(Image.fromarray(g, "L"), 32), ref)
    a = rgb(32, 32)
    opaque = np.concatenate([a, np.full((32, 32, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(preprocess(opaque, 32), preprocess(a, 32))
    np.testing.assert_array_equal(preprocess(Image.fromarray(opaque, "RGBA"), 32), preprocess(a, 32))
    pal = Image.fromarray(a).convert("P")
    assert preprocess(pal, 32).shape == (3, 32, 32)


def test_transparency_is_composited_on_white():
    shape = np.zeros((32, 32, 4), np.uint8)  # transparent black everywhere ...
    shape[8:24, 8:24] = (215, 35, 35, 255)  # ... but an opaque red square
    expected = np.full((32, 32, 3), 255, np.uint8)
    expected[8:24, 8:24] = (215, 35, 35)
    np.testing.assert_array_equal(to_rgb_array(shape), expected)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(shape, "RGBA")), expected)
    grey_alpha = to_rgb_array(Image.fromarray(shape, "RGBA").convert("LA"))
    assert grey_alpha[0, 0].tolist() == [255, 255, 255] and grey_alpha[16, 16].tolist() != [255, 255, 255]
    half = np.array([[[0, 0, 0, 128]]], np.uint8)
    assert to_rgb_array(half).tolist() == [[[127, 127, 127]]]  # 255 * (1 - 128/255), rounded
    palette = Image.fromarray(expected).convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))  # the white background's index
    assert to_rgb_array(palette)[0, 0].tolist() == [255, 255, 255]


def test_transparent_png_file_is_on_white(tmp_path):
    shape = np.zeros((20, 20, 4), np.uint8)
    shape[5:15, 5:15] = (35, 70, 215, 255)
    path = tmp_path / "icon.png"
    Image.fromarray(shape, "RGBA").save(path)
    a = to_rgb_array(str(path))
    assert a[0, 0].tolist() == [255, 255, 255] and a[10, 10].tolist() == [35, 70, 215]


def test_resize_only_when_needed():
    a = rgb(40, 50)
    x = preprocess(a, 64, resize="stretch")
    assert x.shape == (3, 64, 64)
    ref = np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR))
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
    square = rgb(64, 64)
    np.testing.assert_array_equal(preprocess(square, 64, resize="pad"), preprocess(square, 64, resize="stretch"))
    with pytest.raises(ValueError):
        preprocess(a, 64, resample="cubic-ish")
    with pytest.raises(ValueError, match="resize"):
        preprocess(a, 64, resize="crop")


def test_non_square_images_are_padded_with_their_border_colour():
    wide = np.full((30, 60, 3), (200, 210, 220), np.uint8)
    wide[10:20, 25:35] = (215, 35, 35)
    square = pad_to_square(wide)
    assert square.shape == (60, 60, 3)
    np.testing.assert_array_equal(square[15:45], wide)  # centred
    assert (square[:15] == (200, 210, 220)).all() and (square[45:] == (200, 210, 220)).all()
    ref = np.asarray(Image.fromarray(square).resize((64, 64), Image.BILINEAR))
    np.testing.assert_allclose(preprocess(wide, 64), ref.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    assert pad_to_square(tall).shape == (60, 60, 3) and (pad_to_square(tall)[:, :15] == (200, 210, 220)).all()
    assert square_frame(60, 30) == (60, 60, 0, 15)
    assert square_frame(30, 61) == (61, 61, 15, 0)
    assert square_frame(60, 30, "stretch") == (60, 30, 0, 0)
    assert preprocess(np.zeros((1, 1, 3), np.uint8), 64).shape == (3, 64, 64)


def test_batch():
    imgs = [rgb(seed=i) for i in range(3)]
    b = preprocess_batch(imgs, 64)
    assert b.shape == (3, 3, 64, 64) and b.dtype == np.float32
    np.testing.assert_array_equal(b[1], preprocess(imgs[1], 64))
    assert preprocess_batch(np.stack(imgs), 64).shape == (3, 3, 64, 64)
    assert preprocess_batch(imgs[0], 64).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        preprocess_batch([], 64)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 0), np.uint8), "empty"),
    (np.zeros((10, 10, 2), np.uint8), "channels"),
    (np.zeros((10, 10, 5), np.uint8), "channels"),
    (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 10, 3), np.int64), "uint8"),
    ("/nonexistent/image.png", "not found"),
    (12345, "unsupported"),
    ([1, 2, 3], "unsupported"),
    (None, "unsupported"),
])
def test_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        preprocess(bad, 64)


def test_unreadable_file(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read"):
        preprocess(str(p), 64)
    with pytest.raises(ValueError, match="empty"):
        preprocess(Image.new("RGB", (0, 0)), 64)


def test_paths_that_are_not_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        preprocess(str(tmp_path), 64)
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="device"):
            preprocess("/dev/null", 64)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_without_waiting(tmp_path):
    # PIL reading a FIFO with no writer waits forever; run it in a child with a deadline.
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    code = ("from pali_engine.image import preprocess\n"
            "try:\n"
            f"    preprocess({str(fifo)!r}, 64)\n"
            "except ValueError as error:\n"
            "    print(error)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a named pipe as an image hung")
    assert done.returncode == 0, done.stderr
    assert "named pipe" in done.stdout


def test_engine_load_resize_chooses_how_a_wide_image_becomes_square():
    from pali_engine import Engine

    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, 30:60] = 255
    padded = Engine.load()._backend.pixel_values([wide])
    stretched = Engine.load(resize="stretch")._backend.pixel_values([wide])
    assert not np.array_equal(padded, stretched)
    with pytest.raises(ValueError, match="resize"):
        Engine.load(resize="crop")


def test_detection_results_carry_their_boxes_in_image_pixels():
    from pali_engine import Engine
    from pali_engine.detection import parse_detections

    engine = Engine.load()
    shapes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "shapes.png")
    picture = Image.open(shapes).convert("RGB").resize((128, 128))
    result = engine.generate(picture, "detect circle ; star")
    expected = parse_detections(result.text, (128, 128))
    assert [o.label for o in result.objects] == [label for _, label in expected] == ["circle", "star"]
    for obj, ((x0, y0, x1, y1), _) in zip(result.objects, expected):
        assert obj.box == pytest.approx((x0 * 128, y0 * 128, x1 * 128, y1 * 128))
    assert engine.generate(picture, "caption en").objects == []


def test_a_path_image_result_reads_its_size_only_when_asked():
    from pali_engine import Engine

    shapes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "shapes.png")
    result = Engine.load().generate(shapes, "detect circle ; star")
    assert result._image_size is None
    assert result.image_size == Image.open(shapes).size
    assert [o.label for o in result.objects] == ["circle", "star"]
