"""PaliGemma's segmentation answers: the VQ-VAE mask decoder against a PyTorch
reference of the same network on random weights of its real shapes, parsing,
and masks placed in their boxes."""

from __future__ import annotations

import numpy as np
import pytest

from pali_engine.segmentation import DECODER_SHAPES, MaskDecoder, box_mask, parse_segmentation

torch = pytest.importorskip("torch")


def random_params(seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in DECODER_SHAPES.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        params[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    params["_vq_vae._embedding"] = rng.standard_normal((128, 512)).astype(np.float32)
    return params


class ResBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(128, 128, 1))

    def forward(self, x):
        return x + self.net(x)


def torch_decoder(params):
    """big_vision's vae-oid decoder written in PyTorch, under the checkpoint's names."""
    layers = [torch.nn.Conv2d(512, 128, 1), torch.nn.ReLU(), ResBlock(), ResBlock()]
    for c_in, c_out in ((128, 128), (128, 64), (64, 32), (32, 16)):
        layers += [torch.nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), torch.nn.ReLU()]
    layers.append(torch.nn.Conv2d(16, 1, 1))
    decoder = torch.nn.Sequential(*layers).double()
    state = {name[len("decoder."):]: torch.from_numpy(value).double() for name, value in params.items()
             if name.startswith("decoder.")}
    decoder.load_state_dict(state)
    embedding = torch.from_numpy(params["_vq_vae._embedding"]).double()

    def run(codes):
        x = embedding[torch.as_tensor(codes)].reshape(1, 4, 4, 512).permute(0, 3, 1, 2)
        with torch.no_grad():
            return decoder(x)[0, 0].numpy()

    return run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_decoder_equals_the_pytorch_network(seed):
    params = random_params(seed)
    codes = np.random.default_rng(seed + 10).integers(0, 128, 16)
    ours = MaskDecoder(params).decode(codes)
    theirs = torch_decoder(params)(codes)
    assert ours.shape == (64, 64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_decoder_file_round_trip_and_errors(tmp_path):
    params = random_params()
    path = tmp_path / "vae-oid.npz"
    np.savez(path, **params)
    codes = list(range(16))
    np.testing.assert_array_equal(MaskDecoder.load(path).decode(codes), MaskDecoder(params).decode(codes))
    broken = dict(params)
    del broken["decoder.6.weight"]
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ValueError, match="broken.npz.*decoder.6.weight"):
        MaskDecoder.load(tmp_path / "broken.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz"):
        MaskDecoder.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="16 codes"):
        MaskDecoder(params).decode([1, 2, 3])


def test_parse_segmentation_and_place_the_mask():
    seg = "".join(f"<seg{c:03d}>" for c in range(16))
    text = f"<loc0256><loc0128><loc0768><loc0512>{seg} cat ; <loc0000><loc0000><loc1023><loc1023> dog"
    objects = parse_segmentation(text, (200, 100))
    assert [o.label for o in objects] == ["cat", "dog"]
    assert objects[0].codes == list(range(16)) and objects[1].codes is None
    assert objects[0].box == pytest.approx((25.0, 25.0, 100.0, 75.0))
    decoder = MaskDecoder(random_params())
    mask = box_mask(decoder, objects[0], (200, 100))
    assert mask.shape == (100, 200)
    assert not mask[:25].any() and not mask[:, 100:].any()  # nothing outside the box
    expected = decoder.decode(objects[0].codes) > 0
    assert mask[25:75, 25:100].mean() == pytest.approx(expected.mean(), abs=0.1)
    assert not box_mask(decoder, objects[1], (200, 100)).any()
