"""The float linear kernels (avx2, avx512, avx512_bf16, amx, neon, portable) in every
weight format (f32, f16, bf16, i8, i4 in groups of 32, 64 and 128) against
float64 references, and the bf16 and i4 formats' rounding against NumPy.
i4 weights take x quantized to int8 in blocks of 32 (W4A8, ops/linear_int4_decode.h)
in decode (m <= 8) on every kernel and in prefill on avx512 and avx512_bf16;
the reference takes x so quantized, and those kernels (with and without VNNI)
agree bit for bit.

Each kernel this CPU runs is chosen in turn (ops.set_linear_kernel); sizes
cover decode (m <= 8) and prefill, K odd and not a multiple of any block or
group, N not a multiple of the 16-output panels.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from pali_engine._core import ops

KERNELS = ops.linear_kernels_available()
#: The kernels whose prefill of bf16 and i4 weights multiplies bfloat16 pairs (vdpbf16ps, AMX tiles).
BF16_PREFILL_KERNELS = ("avx512_bf16", "amx")
#: The kernels whose prefill of i4 weights is W4A8 too (x quantized to int8 blocks, integer products).
W4A8_PREFILL_KERNELS = ("avx512", "avx512_bf16")
FORMATS = ["f32", "f16", "bf16", "i8", "i4", "i4_g64", "i4_g128"]
SIZES = [  # (m, n, k)
    (1, 1, 1),
    (1, 17, 33),
    (2, 3, 65),
    (3, 33, 257),
    (4, 65, 17),
    (7, 48, 129),
    (8, 31, 100),
    (9, 17, 3),
    (13, 48, 257),
    (26, 40, 1000),
    (64, 257, 65),
    (97, 33, 300),
    (200, 130, 520),
    (41, 35, 3333),  # K in several of amx's blocks
]


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


@pytest.fixture
def linear_kernel():
    """Chooses a kernel for a test body; restores the automatic choice after."""
    yield ops.set_linear_kernel
    ops.set_linear_kernel("auto")


def rounds_x_to_bf16(kernel: str, fmt: str, m: int) -> bool:
    """avx512_bf16's and amx's prefill of bf16 weights, and amx's of i4 weights, multiplies bfloat16 pairs."""
    return m > 8 and ((kernel in BF16_PREFILL_KERNELS and fmt == "bf16") or (kernel == "amx" and fmt.startswith("i4")))


def quantizes_x_to_int8(kernel: str, fmt: str, m: int) -> bool:
    """i4 weights take x in int8 blocks of 32 (W4A8): in decode on every kernel, in prefill on AVX-512 without AMX."""
    return fmt.startswith("i4") and (m <= 8 or kernel in W4A8_PREFILL_KERNELS)


def int8_blocks(x: np.ndarray) -> np.ndarray:
    """x as the int4 decode takes it: per row and block of 32 inputs, scale = max|x| / 127
    (1 for an all-zero block), q = round_half_even(x / scale) in [-127, 127], dequantized."""
    m, k = x.shape
    k_pad = -(-k // 32) * 32
    xp = np.zeros((m, k_pad), np.float32)
    xp[:, :k] = x
    blocks = xp.reshape(m, k_pad // 32, 32)
    amax = np.abs(blocks).max(axis=2)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127)
    return (q * scale[..., None]).reshape(m, k_pad)[:, :k]


def x_as_taken(kernel: str, fmt: str, x: np.ndarray) -> np.ndarray:
    m = x.shape[0]
    if quantizes_x_to_int8(kernel, fmt, m):
        return int8_blocks(x)
    return bf16_round(x) if rounds_x_to_bf16(kernel, fmt, m) else x


@pytest.mark.parametrize("m,n,k", SIZES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_kernel_against_the_effective_weight(m, n, k, fmt, linear_kernel):
    rng = rng_for("kernels", m, n, k, fmt)
    w, b, x = randn(rng, n, k), randn(rng, n), randn(rng, m, k)
    y0 = randn(rng, m, n)
    lw = ops.prepare_linear(w, b, fmt)
    we = lw.effective_weight().astype(np.float64)
    for kernel in KERNELS:
        linear_kernel(kernel)
        # avx512_bf16's and amx's prefill of bf16 and i4 weights multiplies x
        # (and i4's weights) rounded to bfloat16.
        rounded = rounds_x_to_bf16(kernel, fmt, m)
        xr = x_as_taken(kernel, fmt, x)
        wr = bf16_round(we.astype(np.float32)).astype(np.float64) if rounded else we
        ref = xr.astype(np.float64) @ wr.T + b
        bound = np.abs(xr).astype(np.float64) @ np.abs(wr).T + np.abs(b)
        got = ops.linear(x, lw)
        assert np.max(np.abs(got - ref) / bound) < 1e-5, kernel
        out = y0.copy()
        ops.linear(x, lw, out=out, accumulate=True)
        err = np.abs(out - (ref + y0)) / (bound + np.abs(y0))
        assert np.max(err) < 1e-5, (kernel, "accumulate")


@pytest.mark.parametrize("m", [1, 5, 40])
@pytest.mark.parametrize("fmt", ["bf16", "i4", "i4_g128"])
def test_every_kernel_on_strided_column_slices(m, fmt, linear_kernel):
    rng = rng_for("strided", m, fmt)
    k, n = 67, 20
    w, b = randn(rng, n, k), randn(rng, n)
    lw = ops.prepare_linear(w, b, fmt)
    xbuf = randn(rng, m, k + 9)
    for kernel in KERNELS:
        linear_kernel(kernel)
        out = randn(rng, m, n + 7)
        before = out.copy()
        ops.linear_strided(xbuf, 4, lw, out, 3, False)
        x = xbuf[:, 4:4 + k]
        rounded = rounds_x_to_bf16(kernel, fmt, m)
        xr = x_as_taken(kernel, fmt, x)
        we = bf16_round(lw.effective_weight()) if rounded else lw.effective_weight()
        ref = xr.astype(np.float64) @ we.astype(np.float64).T + b
        np.testing.assert_allclose(out[:, 3:3 + n], ref, rtol=1e-5, atol=1e-4, err_msg=kernel)
        np.testing.assert_array_equal(out[:, :3], before[:, :3])
        np.testing.assert_array_equal(out[:, 3 + n:], before[:, 3 + n:])


def test_bf16_weights_round_to_nearest_even_and_take_bfloat16_as_is():
    rng = rng_for("bf16 rounding")
    w = randn(rng, 37, 29) * 3
    lw = ops.prepare_linear(w, None, "bf16")
    np.testing.assert_array_equal(lw.effective_weight(), bf16_round(w))
    bits = (bf16_round(w).view(np.uint32) >> 16).astype(np.uint16)
    raw = ops.prepare_linear_raw(bits.tobytes(), 0, "bfloat16", 37, 29, "bf16")
    np.testing.assert_array_equal(raw.effective_weight(), bf16_round(w))
    assert lw.weight_bytes == 3 * 30 * 16 * 2  # K padded to pairs, N to panels


def int4_reference(w: np.ndarray, group: int) -> np.ndarray:
    """The i4 rule of ops/linear.h in NumPy: per output and group, scale = v / -8 in float16."""
    n, k = w.shape
    k_pad = -(-k // group) * group
    wp = np.zeros((n, k_pad), np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, k_pad // group, group)
    extreme = np.take_along_axis(g, np.abs(g).argmax(axis=2)[..., None], axis=2)[..., 0]
    scale = (extreme / np.float32(-8)).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.sign(g / scale[..., None]) * np.floor(np.abs(g / scale[..., None]) + 0.5), -8, 7)
    return (q * scale[..., None]).reshape(n, k_pad)[:, :k]


@pytest.mark.parametrize("fmt,group", [("i4", 32), ("i4_g64", 64), ("i4_g128", 128)])
def test_int4_quantization_follows_the_rule(fmt, group):
    rng = rng_for("int4 rule", fmt)
    w = randn(rng, 19, 300)
    w[3] = 0  # an all-zero output: scale 1, zero weights
    w[5, :group] = 0  # an all-zero group
    lw = ops.prepare_linear(w, None, fmt)
    assert lw.format == fmt
    eff = lw.effective_weight()
    np.testing.assert_allclose(eff, int4_reference(w, group), rtol=1e-6, atol=1e-7)
    assert np.all(eff[3] == 0) and np.all(eff[5, :group] == 0)
    # Each weight is within half a step of its group's scale, the extreme exactly hit (but for float16 rounding).
    err = np.abs(eff - w)
    step = np.abs(int4_reference(w, group) - w).max()
    assert err.max() <= step + 1e-7
    assert lw.weight_bytes == 2 * -(-300 // group) * group * 16 // 2


def test_int4_and_bf16_error_against_float32_weights():
    """What the formats cost on Gaussian weights: the figures docs/ops.md states."""
    rng = rng_for("format error")
    w = randn(rng, 256, 1024)
    rel = {fmt: np.linalg.norm(ops.prepare_linear(w, None, fmt).effective_weight() - w) / np.linalg.norm(w)
           for fmt in ("bf16", "i4", "i4_g64", "i4_g128")}
    assert rel["bf16"] < 2.0 ** -8
    assert rel["i4"] < rel["i4_g64"] < rel["i4_g128"] < 0.12


def test_kernels_agree_with_each_other(linear_kernel):
    rng = rng_for("agree")
    w, b, x = randn(rng, 70, 333), randn(rng, 70), randn(rng, 21, 333)
    for fmt in FORMATS:
        lw = ops.prepare_linear(w, b, fmt)
        outs = {}
        for kernel in KERNELS:
            linear_kernel(kernel)
            if not rounds_x_to_bf16(kernel, fmt, 21) and not quantizes_x_to_int8(kernel, fmt, 21):
                outs[kernel] = ops.linear(x, lw)
        first = next(iter(outs.values()))
        for kernel, y in outs.items():
            np.testing.assert_allclose(y, first, rtol=2e-5, atol=2e-5, err_msg=f"{fmt} {kernel}")


@pytest.fixture
def int8_kernel():
    """Chooses an int8 kernel for a test body; restores the automatic choice after."""
    yield ops.set_int8_kernel
    ops.set_int8_kernel("auto")


@pytest.mark.parametrize("fmt", ["i4", "i4_g64", "i4_g128"])
@pytest.mark.parametrize("n,k", [(45, 301), (19, 4141)])
def test_int4_w4a8_kernels_agree_bit_for_bit(fmt, n, k, linear_kernel, int8_kernel):
    """Every kernel that takes i4 weights in W4A8 (all in decode; avx512 and avx512_bf16 in
    prefill), and under the AVX-512 ones every integer kernel (VNNI or not), gives the same y to
    the last bit, edge cases included: an all-zero row (scale 1), a huge value beside tiny ones,
    K not a multiple of 32, prefill row counts that leave a partial pass of rows, a K that the
    prefill takes in several chunks."""
    rng = rng_for("int4 decode agree", fmt, n, k)
    w, b = randn(rng, n, k), randn(rng, n)
    lw = ops.prepare_linear(w, b, fmt)
    x = randn(rng, 21, k)
    x[2] = 0
    x[5, 7] = 1e6
    x[6] *= 1e-30
    x[17] = 0
    for m in list(range(1, 10)) + [12, 13, 21, 25]:
        outs = {}
        for kernel in KERNELS:
            if not quantizes_x_to_int8(kernel, fmt, m):
                continue
            linear_kernel(kernel)
            for integer in ops.int8_kernels_available():
                int8_kernel(integer)
                outs[kernel, integer] = ops.linear(x[:m], lw)
        first = next(iter(outs.values()))
        assert np.all(np.isfinite(first))
        for key, y in outs.items():
            np.testing.assert_array_equal(y, first, err_msg=f"{fmt} m={m} {key}")
        ref = int8_blocks(x[:m]).astype(np.float64) @ lw.effective_weight().astype(np.float64).T + b
        bound = np.abs(int8_blocks(x[:m])).astype(np.float64) @ np.abs(lw.effective_weight()).T + np.abs(b)
        assert np.max(np.abs(first - ref) / bound) < 1e-5


def test_int4_decode_error_of_int8_activations():
    """What quantizing x costs beside the int4 weights' own error (docs/ops.md): on
    Gaussian x and weights, a small fraction of the weights' error."""
    rng = rng_for("int4 activation error")
    w, x = randn(rng, 512, 2304), randn(rng, 4, 2304)
    lw = ops.prepare_linear(w, None, "i4")
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    float_x = x.astype(np.float64) @ lw.effective_weight().T.astype(np.float64)
    got = ops.linear(x, lw)
    weight_error = np.linalg.norm(float_x - exact) / np.linalg.norm(exact)
    activation_error = np.linalg.norm(got - float_x) / np.linalg.norm(exact)
    assert activation_error < 0.1 * weight_error, (activation_error, weight_error)


def test_kernel_choice_errors(linear_kernel):
    assert KERNELS[-1] == "portable" and ops.linear_kernel() in KERNELS
    with pytest.raises(ValueError, match="not available"):
        linear_kernel("sse2")
    linear_kernel("auto")
    # avx512_bf16 is the default on AMD CPUs only (where vdpbf16ps outruns the FMAs).
    amd = "AuthenticAMD" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    chosen = [k for k in KERNELS if k != "portable" and (k != "avx512_bf16" or amd)]
    best = chosen[-1:] or ["portable"]
    expected = "portable" if os.environ.get("PALI_ENGINE_CPU_KERNELS") == "portable" else best[0]
    assert ops.linear_kernel() == expected
    with pytest.raises(ValueError, match="unknown weight format"):
        ops.prepare_linear(np.zeros((2, 2), np.float32), None, "i4_g16")
