"""Tests of image preprocessing (pali_engine/image.py): accepted inputs,
conversions, normalisation, resizing and the errors for bad inputs."""

import numpy as np
import pytest
from PIL import Image

from pali_engine.image import preprocess, preprocess_batch


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
    rgba = np.concatenate([a, np.full((32, 32, 1), 128, np.uint8)], axis=2)
    np.testing.assert_array_equal(preprocess(rgba, 32), preprocess(a, 32))
    np.testing.assert_array_equal(preprocess(Image.fromarray(rgba, "RGBA"), 32), preprocess(a, 32))
    pal = Image.fromarray(a).convert("P")
    assert preprocess(pal, 32).shape == (3, 32, 32)


def test_resize_only_when_needed():
    a = rgb(40, 50)
    x = preprocess(a, 64)
    assert x.shape == (3, 64, 64)
    ref = np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR))
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        preprocess(a, 64, resample="cubic-ish")


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
