"""The CPU ops, one by one, against NumPy float64 (or PyTorch) references.

Each test draws fresh random inputs from its own seed; sizes include ones that
are not multiples of the kernels' block sizes. Tolerances and why: docs/ops.md.
"""

from __future__ import annotations

import math
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pali_engine._core import ops


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test case, so every case draws different numbers."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def normalized_error(y, ref, bound):
    """max |y - ref| / bound, with bound the natural scale of each entry."""
    return float(np.max(np.abs(y.astype(np.float64) - ref) / (bound + 1e-30)))


# ---------------------------------------------------------------------------
# linear

LINEAR_SIZES = [  # (m, n, k)
    (1, 1, 1),
    (1, 17, 33),
    (2, 3, 65),
    (3, 33, 257),
    (4, 65, 17),
    (5, 16, 16),
    (8, 31, 100),
    (9, 17, 3),
    (13, 48, 257),
    (64, 257, 65),
    (97, 33, 300),
    (200, 130, 520),
]


def linear_case(m, n, k, fmt, bias=True):
    rng = rng_for("linear", m, n, k, fmt, bias)
    w = randn(rng, n, k)
    b = randn(rng, n) if bias else None
    x = randn(rng, m, k)
    return x, w, b


@pytest.mark.parametrize("m,n,k", LINEAR_SIZES)
@pytest.mark.parametrize("fmt", ["f32", "f16", "i8"])  # bf16 and i4 (rounded on avx512_bf16): test_linear_kernels.py
def test_linear_against_effective_weight(m, n, k, fmt):
    x, w, b = linear_case(m, n, k, fmt)
    lw = ops.prepare_linear(w, b, fmt)
    assert (lw.n, lw.k, lw.format, lw.has_bias) == (n, k, fmt, True)
    we = lw.effective_weight().astype(np.float64)
    ref = x.astype(np.float64) @ we.T + b
    bound = np.abs(x).astype(np.float64) @ np.abs(we).T + np.abs(b)
    assert normalized_error(ops.linear(x, lw), ref, bound) < 1e-5


@pytest.mark.parametrize("m,n,k", [(1, 17, 33), (4, 65, 257), (13, 48, 257), (97, 33, 300)])
def test_linear_formats_against_float32_weights(m, n, k):
    x, w, b = linear_case(m, n, k, "vs32")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T + b
    ax = np.abs(x64)
    # f32: rounding of the float32 sums only.
    y = ops.linear(x, ops.prepare_linear(w, b, "f32"))
    assert normalized_error(y, ref, ax @ np.abs(w64).T + np.abs(b)) < 1e-5
    # f16: each weight is off by at most 2^-11 of itself (|w| < 65504 here).
    y = ops.linear(x, ops.prepare_linear(w, b, "f16"))
    assert normalized_error(y, ref, ax @ np.abs(w64).T + np.abs(b)) < 2.0**-11 + 1e-5
    # i8: each weight is off by at most half a step, max|w_row| / 254.
    lw = ops.prepare_linear(w, b, "i8")
    half_step = np.abs(w64).max(axis=1) / 254.0
    err = np.abs(ops.linear(x, lw) - ref)
    assert np.all(err <= ax.sum(axis=1, keepdims=True) * half_step[None, :] * (1 + 1e-4) + 1e-5 * (ax @ np.abs(w64).T + np.abs(b)))


def test_f16_weights_match_numpy_rounding():
    rng = rng_for("f16 rounding")
    w = randn(rng, 37, 29, scale=3.0)
    lw = ops.prepare_linear(w, None, "f16")
    np.testing.assert_array_equal(lw.effective_weight(), w.astype(np.float16).astype(np.float32))
    # float16 input is taken as is.
    lw16 = ops.prepare_linear(w.astype(np.float16), None, "f16")
    np.testing.assert_array_equal(lw16.effective_weight(), lw.effective_weight())


def test_i8_quantization_is_symmetric_per_channel():
    rng = rng_for("i8 quant")
    w = randn(rng, 19, 40)
    w[3] = 0.0  # an all-zero row
    lw = ops.prepare_linear(w, None, "i8")
    scale = np.abs(w).max(axis=1) / 127.0
    scale[3] = 1.0
    q = np.clip(np.round(w / scale[:, None]), -127, 127)  # ties: see docs (half away from zero)
    np.testing.assert_allclose(lw.effective_weight(), q * scale[:, None], rtol=1e-6, atol=1e-7)
    assert np.all(lw.effective_weight()[3] == 0)


@pytest.mark.parametrize("m", [1, 4, 9, 70])
@pytest.mark.parametrize("fmt", ["f32", "f16", "i8"])  # bf16 and i4 (rounded on avx512_bf16): test_linear_kernels.py
def test_linear_accumulate(m, fmt):
    x, w, b = linear_case(m, 40, 50, fmt)
    lw = ops.prepare_linear(w, b, fmt)
    y0 = randn(rng_for("acc", m, fmt), m, 40)
    out = y0.copy()
    ret = ops.linear(x, lw, out=out, accumulate=True)
    assert ret is out
    ref = y0 + (x.astype(np.float64) @ lw.effective_weight().astype(np.float64).T + b)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m", [1, 3, 30])
def test_linear_no_bias(m):
    x, w, _ = linear_case(m, 20, 24, "nobias", bias=False)
    lw = ops.prepare_linear(w, None, "f32")
    assert not lw.has_bias
    np.testing.assert_allclose(ops.linear(x, lw), x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16", "i8", "i4", "i4_g128"])
@pytest.mark.parametrize("m", [1, 6, 40])
def test_linear_concat_matches_separate(fmt, m):
    rng = rng_for("concat", fmt, m)
    k = 45
    ws = [randn(rng, n, k) for n in (16, 7, 33)]
    bs = [randn(rng, 16), None, randn(rng, 33)]
    x = randn(rng, m, k)
    fused = ops.prepare_linear_concat(ws, bs, fmt)
    assert fused.n == 56
    parts = [ops.linear(x, ops.prepare_linear(w, b, fmt)) for w, b in zip(ws, bs)]
    np.testing.assert_allclose(ops.linear(x, fused), np.concatenate(parts, axis=1), rtol=1e-6, atol=1e-6)
    no_bias = ops.prepare_linear_concat(ws, None, fmt)
    assert not no_bias.has_bias


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16", "i8", "i4", "i4_g128"])
def test_linear_in_a_packed_arena_matches_its_own_memory(fmt):
    # Odd sizes one after another in the arena, then (f32) six 12 MB weights that
    # fill its 64 MB block and start another; every weight keeps its block alive
    # after the arena object is gone.
    rng = rng_for("arena", fmt)
    shapes = [(37, 45), (5, 3), (100, 257)] + ([(3000, 1024)] * 6 if fmt == "f32" else [(300, 1024)] * 2)
    arena = ops.PackedArena()
    weights = [(randn(rng, n, k), randn(rng, n)) for n, k in shapes]
    in_arena = [ops.prepare_linear(w, b, fmt, arena=arena) for w, b in weights]
    del arena
    for (w, b), lw in zip(weights, in_arena):
        x = randn(rng, 3, w.shape[1])
        np.testing.assert_array_equal(ops.linear(x, lw), ops.linear(x, ops.prepare_linear(w, b, fmt)))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_linear_from_unaligned_raw_buffer(dtype, offset):
    rng = rng_for("raw", dtype, offset)
    n, k = 21, 19
    w = randn(rng, n, k)
    if dtype == "bfloat16":
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact bf16 values
        w_exact = (bits.astype(np.uint32) << 16).view(np.float32)
        payload = bits.tobytes()
    else:
        w_exact = w.astype(dtype).astype(np.float32)
        payload = w.astype(dtype).tobytes()
    buf = b"\x00" * offset + payload + b"\x00" * 5
    lw = ops.prepare_linear_raw(buf, offset, dtype, n, k, "f32")
    np.testing.assert_array_equal(lw.effective_weight(), w_exact)


def test_linear_errors():
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError):
        ops.prepare_linear(w, np.zeros(5, np.float32), "f32")
    with pytest.raises(ValueError):
        ops.prepare_linear(w, None, "f8")
    with pytest.raises(ValueError):
        ops.prepare_linear(np.zeros((4, 3), np.int32), None, "f32")
    with pytest.raises(ValueError):
        ops.prepare_linear_concat([w, np.zeros((2, 5), np.float32)], None, "f32")
    lw = ops.prepare_linear(w, None, "f32")
    with pytest.raises(ValueError):
        ops.linear(np.zeros((2, 4), np.float32), lw)


def test_linear_threads_deterministic_and_concurrent():
    rng = rng_for("threads")
    w, x1, x4, x64 = randn(rng, 300, 200), randn(rng, 1, 200), randn(rng, 4, 200), randn(rng, 64, 200)
    lw = ops.prepare_linear(w, None, "f16")
    old = ops.get_threads()
    try:
        ops.set_threads(1)
        single = [ops.linear(x, lw) for x in (x1, x4, x64)]
        ops.set_threads(2)
        double = [ops.linear(x, lw) for x in (x1, x4, x64)]
    finally:
        ops.set_threads(old)
    for a, b in zip(single, double):
        np.testing.assert_array_equal(a, b)

    def work(i):
        ops.set_threads(1 + i % 2)
        return [ops.linear(x, lw) for x in (x1, x4, x64)]

    with ThreadPoolExecutor(4) as pool:
        for res in pool.map(work, range(8)):
            for a, b in zip(single, res):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# linear with int8 activations (W8A8 prefill)

INT8_KERNELS = ops.int8_kernels_available()


@pytest.fixture
def int8_kernel():
    """Runs a test body per integer kernel; restores the automatic choice after."""
    yield ops.set_int8_kernel
    ops.set_int8_kernel("auto")


def w8a8_reference(x, lw, b):
    """float64 reference of the W8A8 path, from the same float32 quantization steps."""
    we = lw.effective_weight()
    amax_w = np.abs(we).max(axis=1)
    sw = np.where(amax_w > 0, amax_w / np.float32(127), np.float32(1)).astype(np.float32)
    qw = np.rint(we.astype(np.float64) / sw[:, None])  # exact: we = qw * sw in float32
    amax = np.abs(x).max(axis=1)
    sx = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    qx = np.clip(np.rint(x / sx[:, None]), -127, 127).astype(np.float64)  # float32 division, as the kernels
    acc = qx @ qw.T
    ref = acc * (sx.astype(np.float64)[:, None] * sw.astype(np.float64)[None, :])
    if b is not None:
        ref = ref + b
    return ref, np.abs(acc) * (sx.astype(np.float64)[:, None] * sw[None, :]) + (np.abs(b) if b is not None else 0)


def prepare_w8a8(w, b):
    lw = ops.prepare_linear(w, b, "i8", int8_activations=True)
    assert lw.int8_activations and lw.format == "i8"
    return lw


@pytest.mark.parametrize("m,n,k", LINEAR_SIZES + [(9, 1, 1), (16, 5, 4), (67, 48, 640), (6, 1280, 256), (300, 70, 1001),
                                                  (140, 600, 200)])
def test_linear_int8_activations_against_integer_reference(m, n, k, int8_kernel):
    x, w, b = linear_case(m, n, k, "w8a8")
    x[m // 2] = 0.0  # an all-zero row: scale 1, every q 0
    lw = prepare_w8a8(w, b)
    ref, bound = w8a8_reference(x, lw, b)
    results = []
    for kernel in INT8_KERNELS:
        int8_kernel(kernel)
        y = ops.linear(x, lw)
        # Integer sums are exact; what is left is the float32 scaling of each sum.
        assert normalized_error(y, ref, bound) < 1e-6, kernel
        results.append(y)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])  # every kernel computes the same integers


@pytest.mark.parametrize("m,n,k", [(1, 17, 33), (9, 17, 33), (64, 257, 65), (200, 130, 520)])
def test_linear_int8_activations_error_against_float32(m, n, k):
    """Against the float32 product: each x off by at most half its row's step, each w by half its channel's."""
    x, w, b = linear_case(m, n, k, "w8a8 vs f32")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = ops.linear(x, prepare_w8a8(w, b))
    x_step = np.abs(x64).max(axis=1) / 127.0
    w_step = np.abs(w64).max(axis=1) / 127.0
    # |x w - x^ w^| <= |x - x^| |w^| + |x| |w - w^|, summed over k.
    limit = (x_step[:, None] / 2) * (np.abs(w64).sum(axis=1) + k * w_step / 2)[None, :] \
        + np.abs(x64).sum(axis=1)[:, None] * (w_step[None, :] / 2)
    assert np.all(np.abs(y - (x64 @ w64.T + b)) <= limit * (1 + 1e-5) + 1e-5)


def test_linear_int8_activations_weights_are_the_weight_only_ones():
    x, w, b = linear_case(3, 40, 50, "w8a8 weights")
    np.testing.assert_array_equal(prepare_w8a8(w, b).effective_weight(),
                                  ops.prepare_linear(w, b, "i8").effective_weight())
    concat = ops.prepare_linear_concat([w[:15], w[15:]], [b[:15], b[15:]], "i8", int8_activations=True)
    np.testing.assert_array_equal(ops.linear(x, concat), ops.linear(x, prepare_w8a8(w, b)))


@pytest.mark.parametrize("m", [3, 30])
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_int8_activations_strided_and_accumulate(m, accumulate, int8_kernel):
    rng = rng_for("w8a8 strided", m, accumulate)
    k, n = 37, 21
    w, b = randn(rng, n, k), randn(rng, n)
    lw = prepare_w8a8(w, b)
    xbuf, out = randn(rng, m, k + 9), randn(rng, m, n + 7)
    for kernel in INT8_KERNELS:
        int8_kernel(kernel)
        y = out.copy()
        ops.linear_strided(xbuf, 4, lw, y, 3, accumulate)
        expected = ops.linear(np.ascontiguousarray(xbuf[:, 4:4 + k]), lw)
        if accumulate:
            expected = expected + out[:, 3:3 + n]
        np.testing.assert_allclose(y[:, 3:3 + n], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y[:, :3], out[:, :3])
        np.testing.assert_array_equal(y[:, 3 + n:], out[:, 3 + n:])


@pytest.mark.parametrize("m", [1, 70])
def test_linear_int8_activations_threads_give_the_same_result(m):
    rng = rng_for("w8a8 threads", m)
    x, lw = randn(rng, m, 200), prepare_w8a8(randn(rng, 3000, 200), randn(rng, 3000))
    old = ops.get_threads()
    try:
        ops.set_threads(1)
        single = ops.linear(x, lw)
        ops.set_threads(2)
        np.testing.assert_array_equal(ops.linear(x, lw), single)
    finally:
        ops.set_threads(old)


def test_linear_int8_activations_errors(int8_kernel):
    for fmt in ("f32", "f16"):
        with pytest.raises(ValueError, match="i8"):
            ops.prepare_linear(np.ones((4, 3), np.float32), None, fmt, int8_activations=True)
    with pytest.raises(ValueError, match="not available"):
        int8_kernel("sse2")
    assert ops.int8_kernel() in INT8_KERNELS and "avx2" in INT8_KERNELS


# ---------------------------------------------------------------------------
# norms


@pytest.mark.parametrize("m,d", [(1, 1), (3, 7), (5, 16), (17, 33), (4, 768), (2, 1000)])
def test_layer_norm(m, d):
    rng = rng_for("ln", m, d)
    x = randn(rng, m, d) * 3 + 5  # an offset: the centred variance matters
    g, b = randn(rng, d), randn(rng, d)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(var + 1e-6) * g + b
    np.testing.assert_allclose(ops.layer_norm(x, g, b, 1e-6), ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(ops.layer_norm(x, None, None, 1e-6), (x64 - mu) / np.sqrt(var + 1e-6),
                               rtol=1e-5, atol=2e-5)


def rms_ref(x64, w, eps):
    return x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("m,d", [(1, 1), (3, 7), (5, 16), (17, 33), (4, 512), (2, 1001)])
def test_rms_norm(m, d):
    rng = rng_for("rms", m, d)
    x, w = randn(rng, m, d, scale=4.0), randn(rng, d)
    np.testing.assert_allclose(ops.rms_norm(x, w, 1e-6), rms_ref(x.astype(np.float64), w, 1e-6),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,d", [(1, 5), (7, 33), (3, 768)])
def test_add_rms_norm(m, d):
    rng = rng_for("addrms", m, d)
    res, delta, w = randn(rng, m, d), randn(rng, m, d), randn(rng, d)
    res0 = res.copy()
    y = ops.add_rms_norm(res, delta, w, 1e-6)
    np.testing.assert_array_equal(res, res0 + delta)
    np.testing.assert_allclose(y, rms_ref(res.astype(np.float64), w, 1e-6), rtol=1e-5, atol=1e-5)
    # Without delta: only the norm.
    y2 = ops.add_rms_norm(res, None, w, 1e-6)
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# activations


def gelu_tanh_ref(x64):
    return 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))


def silu_ref(x64):
    return x64 / (1 + np.exp(-x64))


ACT_REFS = {"gelu_tanh": gelu_tanh_ref, "silu": silu_ref, "relu": lambda x: np.maximum(x, 0)}


@pytest.mark.parametrize("act", ["gelu_tanh", "silu", "relu"])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 5000])
def test_activation(act, n):
    rng = rng_for("act", act, n)
    x = randn(rng, n, scale=4.0)
    x[: min(n, 4)] = np.array([0.0, -30.0, 30.0, -9.0], np.float32)[: min(n, 4)]
    np.testing.assert_allclose(ops.activation(x, act), ACT_REFS[act](x.astype(np.float64)),
                               rtol=2e-6, atol=1e-6)


def test_gelu_matches_torch():
    torch = pytest.importorskip("torch")
    x = randn(rng_for("gelu torch"), 1000, scale=5.0)
    ref = torch.nn.functional.gelu(torch.from_numpy(x).double(), approximate="tanh").numpy()
    np.testing.assert_allclose(ops.activation(x, "gelu_new"), ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("cap", [30.0, 50.0, 0.5])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 5000, 257216 + 3])
def test_softcap(cap, n):
    rng = rng_for("softcap", cap, n)
    x = randn(rng, n, scale=3 * cap)
    x[: min(n, 6)] = np.array([0.0, -0.0, 1e-30, -1e4, 1e4, -cap], np.float32)[: min(n, 6)]
    ref = cap * np.tanh(x.astype(np.float64) / cap)
    y = ops.softcap(x, cap)
    # A few float32 ulps of cap (1 - e and 1 + e round on the scale of 1), and of the result.
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=cap * 4e-7)
    assert np.all(y * x >= 0) and np.all(np.abs(y) <= cap)  # never the other sign, never past the cap


def test_softcap_errors():
    with pytest.raises(ValueError, match="softcap: bad arguments"):
        ops.softcap(np.ones(3, np.float32), 0.0)


@pytest.mark.parametrize("act", ["gelu_tanh", "silu"])
@pytest.mark.parametrize("m,f", [(1, 1), (3, 9), (4, 64), (5, 1027)])
def test_gated_activation(act, m, f):
    rng = rng_for("gated", act, m, f)
    x = randn(rng, m, 2 * f, scale=3.0)
    x64 = x.astype(np.float64)
    ref = ACT_REFS[act](x64[:, :f]) * x64[:, f:]
    np.testing.assert_allclose(ops.gated_activation(x, act), ref, rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# relative position buckets


def hf_relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """transformers' T5Attention._relative_position_bucket, verbatim."""
    import torch

    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (32, 64), (16, 32), (64, 256), (128, 128), (8, 20), (32, 1000)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    torch = pytest.importorskip("torch")
    rel = np.arange(-1000, 1001, dtype=np.int64)
    ref = hf_relative_position_bucket(torch.from_numpy(rel), bidirectional, num_buckets, max_distance).numpy()
    got = ops.relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(got, ref)
    # As HF computes it: memory_position - context_position over a [q, k] grid.
    q = torch.arange(300)[:, None]
    k = torch.arange(300)[None, :]
    grid = (k - q)
    ref2 = hf_relative_position_bucket(grid, bidirectional, num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(ops.relative_position_bucket(grid.numpy(), bidirectional, num_buckets, max_distance), ref2)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_table(bidirectional):
    rng = rng_for("table", bidirectional)
    nb, heads, md = 32, 5, 128
    emb = randn(rng, nb, heads)
    rel_offset, num_rel = 40, 97
    table = ops.relative_bias_table(emb, bidirectional, md, rel_offset, num_rel)
    buckets = ops.relative_position_bucket(np.arange(num_rel) - rel_offset, bidirectional, nb, md)
    np.testing.assert_array_equal(table, emb[buckets].T)


# ---------------------------------------------------------------------------
# attention


def attention_ref(q, k, v, heads, d, scale=1.0, q_col=0, k_col=0, v_col=0, mask=None, causal=False,
                  q_offset=0, table=None, rel_offset=0, div=1, kv_len=None, kv_heads=0, softcap=0.0,
                  prefix_lengths=None, sliding_window=0, kv_index=None):
    """float64 attention with transformers' masks: ((causal and window) or both in the prefix) and padding.

    Query batch b reads K/V batch kv_index[b] when given, else b // div."""
    B, Lq, _ = q.shape
    Lk = k.shape[1] if kv_len is None else kv_len
    group = heads // (kv_heads or heads)
    out = np.zeros((B, Lq, heads * d))
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    for b in range(B):
        kb = b // div if kv_index is None else kv_index[b]
        for h in range(heads):
            g = h // group
            Q = q[b, :, q_col + h * d: q_col + (h + 1) * d].astype(np.float64)
            K = k[kb, :Lk, k_col + g * d: k_col + (g + 1) * d].astype(np.float64)
            V = v[kb, :Lk, v_col + g * d: v_col + (g + 1) * d].astype(np.float64)
            s = scale * Q @ K.T
            if table is not None:
                s = s + table[h][j - (q_offset + i) + rel_offset]
            if softcap:
                s = softcap * np.tanh(s / softcap)
            allowed = np.ones((Lq, Lk), bool)
            if mask is not None:
                allowed &= mask[kb][None, :Lk] != 0
            if causal:
                seen = j <= q_offset + i
                if sliding_window:
                    seen &= q_offset + i - j < sliding_window
                if prefix_lengths is not None:
                    seen |= (q_offset + i < prefix_lengths[kb]) & (j < prefix_lengths[kb])
                allowed &= seen
            s = np.where(allowed, s, -np.inf)
            mx = s.max(-1, keepdims=True)
            ok = np.isfinite(mx)
            p = np.where(allowed, np.exp(s - np.where(ok, mx, 0)), 0.0)
            den = p.sum(-1, keepdims=True)
            out[b, :, h * d:(h + 1) * d] = np.where(ok, (p @ V) / np.where(ok, den, 1), 0.0)
    return out


def check_attention(got, ref):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("B,L,heads,d", [(1, 1, 1, 1), (2, 37, 3, 17), (1, 70, 2, 64), (2, 5, 4, 8)])
def test_attention_vit_like(B, L, heads, d):
    rng = rng_for("attn vit", B, L, heads, d)
    q, k, v = (randn(rng, B, L, heads * d) for _ in range(3))
    scale = 1 / math.sqrt(d)
    got = ops.attention(q, k, v, heads, d, scale)
    check_attention(got, attention_ref(q, k, v, heads, d, scale))


def test_attention_matches_torch_sdpa():
    torch = pytest.importorskip("torch")
    rng = rng_for("attn sdpa")
    B, L, H, d = 2, 50, 4, 32
    q, k, v = (randn(rng, B, L, H * d) for _ in range(3))
    t = lambda a: torch.from_numpy(a).double().view(B, L, H, d).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True)
    ref = ref.transpose(1, 2).reshape(B, L, H * d).numpy()
    check_attention(ops.attention(q, k, v, H, d, 1 / math.sqrt(d), causal=True), ref)


@pytest.mark.parametrize("mask_dtype", [np.int32, np.uint8])
def test_attention_fused_qkv_mask_and_bias(mask_dtype):
    # T5 encoder: one fused QKV buffer, padding mask, bidirectional relative bias.
    rng = rng_for("attn t5 enc", mask_dtype)
    B, L, H, d = 3, 90, 4, 16
    qkv = randn(rng, B, L, 3 * H * d)
    mask = np.ones((B, L), mask_dtype)
    mask[1, 60:] = 0
    mask[2, :7] = 0
    mask[2, 50:53] = 0
    emb = randn(rng, 32, H)
    rel_offset = L - 1
    table = ops.relative_bias_table(emb, True, 128, rel_offset, 2 * L - 1)
    got = ops.attention(qkv, qkv, qkv, H, d, 1.0, q_col=0, k_col=H * d, v_col=2 * H * d, key_mask=mask,
                        rel_bias=table, rel_offset=rel_offset)
    ref = attention_ref(qkv, qkv, qkv, H, d, 1.0, 0, H * d, 2 * H * d, mask=mask, table=table, rel_offset=rel_offset)
    check_attention(got, ref)


@pytest.mark.parametrize("q_len,q_offset", [(1, 0), (1, 77), (7, 20), (33, 0)])
def test_attention_causal_decoder_with_cache_and_bias(q_len, q_offset):
    rng = rng_for("attn dec", q_len, q_offset)
    B, H, d, cap = 2, 3, 24, 128
    kv_len = q_offset + q_len
    q = randn(rng, B, q_len, H * d)
    k = randn(rng, B, cap, H * d)  # a cache with capacity > kv_len
    v = randn(rng, B, cap, H * d)
    emb = randn(rng, 32, H)
    rel_offset = q_offset + q_len - 1
    num_rel = rel_offset + kv_len - q_offset
    table = ops.relative_bias_table(emb, False, 128, rel_offset, num_rel)
    got = ops.attention(q, k, v, H, d, 1.0, causal=True, q_offset=q_offset, rel_bias=table,
                        rel_offset=rel_offset, kv_len=kv_len)
    ref = attention_ref(q, k, v, H, d, 1.0, causal=True, q_offset=q_offset, table=table,
                        rel_offset=rel_offset, kv_len=kv_len)
    check_attention(got, ref)


@pytest.mark.parametrize("q_len", [1, 4])
def test_attention_cross_kv_batch_divisor(q_len):
    # 2 requests x 3 beams, cross-attention to each request's memory.
    rng = rng_for("attn cross", q_len)
    R, beams, H, d, Lk = 2, 3, 4, 20, 150
    q = randn(rng, R * beams, q_len, H * d)
    k, v = randn(rng, R, Lk, H * d), randn(rng, R, Lk, H * d)
    mask = np.ones((R, Lk), np.uint8)
    mask[1, 100:] = 0
    got = ops.attention(q, k, v, H, d, 1.0, key_mask=mask, kv_batch_divisor=beams)
    check_attention(got, attention_ref(q, k, v, H, d, 1.0, mask=mask, div=beams))


def test_attention_fully_masked_rows_are_zero():
    rng = rng_for("attn masked")
    B, L, H, d = 2, 10, 2, 8
    q, k, v = (randn(rng, B, L, H * d) for _ in range(3))
    mask = np.ones((B, L), np.int32)
    mask[1] = 0
    got = ops.attention(q, k, v, H, d, 1.0, key_mask=mask)
    assert np.all(np.isfinite(got))
    assert np.all(got[1] == 0)
    check_attention(got, attention_ref(q, k, v, H, d, 1.0, mask=mask))
    # Causal with the early keys masked: the first queries see nothing.
    mask = np.ones((B, L), np.int32)
    mask[:, :3] = 0
    got = ops.attention(q, k, v, H, d, 1.0, key_mask=mask, causal=True)
    assert np.all(got[:, :3] == 0) and np.all(np.isfinite(got))
    check_attention(got, attention_ref(q, k, v, H, d, 1.0, mask=mask, causal=True))


def test_attention_large_scores_online_softmax():
    # Scores of order 100 that grow along the keys: every block rescales the running sum.
    rng = rng_for("attn large")
    B, H, d, Lk = 1, 2, 16, 300
    q = randn(rng, B, 3, H * d, scale=4.0)
    k = randn(rng, B, Lk, H * d, scale=4.0) * np.linspace(0.1, 2.0, Lk, dtype=np.float32)[None, :, None]
    v = randn(rng, B, Lk, H * d)
    check_attention(ops.attention(q, k, v, H, d, 1.0), attention_ref(q, k, v, H, d, 1.0))


def test_attention_errors():
    q = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError):  # table too small for the distances
        ops.attention(q, q, q, 2, 4, rel_bias=np.zeros((2, 3), np.float32), rel_offset=2)
    with pytest.raises(ValueError):  # kv batch mismatch
        ops.attention(q, q[:1], q[:1], 2, 4, kv_batch_divisor=1)


# ---------------------------------------------------------------------------
# log_softmax and top-k


@pytest.mark.parametrize("m,v", [(1, 1), (3, 7), (4, 1000), (2, 32128)])
def test_log_softmax(m, v):
    rng = rng_for("lsm", m, v)
    x = randn(rng, m, v, scale=10.0)
    if v > 1:
        x[0, 0] = -np.inf
    x64 = x.astype(np.float64)
    mx = x64.max(-1, keepdims=True)
    ref = x64 - mx - np.log(np.exp(x64 - mx).sum(-1, keepdims=True))
    got = ops.log_softmax(x)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=2e-5)


def test_log_softmax_all_minus_inf_row():
    x = np.full((2, 9), -np.inf, np.float32)
    x[1] = 0.0
    got = ops.log_softmax(x)
    assert np.all(got[0] == -np.inf)
    np.testing.assert_allclose(got[1], -math.log(9), rtol=1e-6)


@pytest.mark.parametrize("m,v,k", [(1, 1, 1), (3, 10, 10), (4, 100, 1), (5, 257, 8), (2, 32128, 50), (3, 40, 30)])
def test_topk_ties_by_lower_index(m, v, k):
    rng = rng_for("topk", m, v, k)
    x = rng.integers(-5, 5, size=(m, v)).astype(np.float32)  # many ties
    vals, idx = ops.topk(x, k)
    ref_idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(vals, np.take_along_axis(x, ref_idx, -1))
    assert idx.dtype == np.int64


def test_topk_random_and_nan():
    torch = pytest.importorskip("torch")
    rng = rng_for("topk random")
    x = randn(rng, 4, 5000)
    vals, idx = ops.topk(x, 16)
    tv, ti = torch.topk(torch.from_numpy(x), 16)
    np.testing.assert_array_equal(vals, tv.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    x[1, 77] = np.nan
    vals, idx = ops.topk(x, 3)
    assert idx[1, 0] == 77 and np.isnan(vals[1, 0])
    with pytest.raises(ValueError):
        ops.topk(x, 5001)


# ---------------------------------------------------------------------------
# patch embedding


def patchify(pixels, p):
    B, C, S, _ = pixels.shape
    g = S // p
    return pixels.reshape(B, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)


@pytest.mark.parametrize("B,C,S,P,W", [(1, 3, 4, 4, 5), (2, 3, 12, 4, 20), (1, 1, 15, 5, 33), (2, 3, 32, 8, 48)])
@pytest.mark.parametrize("fmt", ["f32", "f16"])
def test_patch_embed(B, C, S, P, W, fmt):
    rng = rng_for("patch", B, C, S, P, W, fmt)
    pixels = randn(rng, B, C, S, S)
    conv_w, conv_b = randn(rng, W, C, P, P), randn(rng, W)
    pos = randn(rng, (S // P) ** 2, W)
    proj = ops.prepare_linear(conv_w.reshape(W, -1), conv_b, fmt)
    we = proj.effective_weight().astype(np.float64)
    ref = patchify(pixels.astype(np.float64), P) @ we.T + conv_b + pos
    np.testing.assert_allclose(ops.patch_embed(pixels, P, proj, pos), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ops.patch_embed(pixels, P, proj), ref - pos, rtol=1e-5, atol=1e-4)


def test_patch_embed_matches_torch_conv():
    torch = pytest.importorskip("torch")
    rng = rng_for("patch conv")
    B, C, S, P, W = 2, 3, 16, 4, 24
    pixels, conv_w, conv_b = randn(rng, B, C, S, S), randn(rng, W, C, P, P), randn(rng, W)
    ref = torch.nn.functional.conv2d(torch.from_numpy(pixels).double(), torch.from_numpy(conv_w).double(),
                                     torch.from_numpy(conv_b).double(), stride=P)
    ref = ref.flatten(2).transpose(1, 2).numpy()
    proj = ops.prepare_linear(conv_w.reshape(W, -1), conv_b, "f32")
    np.testing.assert_allclose(ops.patch_embed(pixels, P, proj), ref, rtol=1e-5, atol=1e-4)


def test_patch_embed_u8_normalizes():
    rng = rng_for("patch u8")
    B, C, S, P, W = 2, 3, 12, 4, 10
    img = rng.integers(0, 256, size=(B, S, S, C), dtype=np.uint8)
    mean = np.array([0.5, 0.4, 0.3], np.float32)
    std = np.array([0.5, 0.25, 0.2], np.float32)
    conv_w, conv_b, pos = randn(rng, W, C, P, P), randn(rng, W), randn(rng, (S // P) ** 2, W)
    proj = ops.prepare_linear(conv_w.reshape(W, -1), conv_b, "f32")
    norm = ((img.astype(np.float64) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    ref = patchify(norm, P) @ conv_w.reshape(W, -1).astype(np.float64).T + conv_b + pos
    np.testing.assert_allclose(ops.patch_embed_u8(img, P, mean, std, proj, pos), ref, rtol=1e-5, atol=1e-4)


def test_attention_no_keys_gives_zeros():
    q = randn(rng_for("attn empty"), 2, 3, 8)
    k = np.zeros((2, 4, 8), np.float32)
    got = ops.attention(q, k, k, 2, 4, kv_len=0)
    assert got.shape == (2, 3, 8) and np.all(got == 0)


@pytest.mark.parametrize("q_len,beams", [(3, 2), (1, 5), (2, 3)])
def test_attention_pairs_across_beams_with_causal_bias(q_len, beams):
    # Rows of different beams (and positions) that share K/V go through the keys in
    # pairs: a pair may mix positions, so each row keeps its own causal end and bias.
    rng = rng_for("attn pairs", q_len, beams)
    R, H, d, q_offset = 2, 3, 12, 70
    kv_len = q_offset + q_len
    q = randn(rng, R * beams, q_len, H * d)
    k, v = randn(rng, R, kv_len + 5, H * d), randn(rng, R, kv_len + 5, H * d)
    mask = np.ones((R, kv_len + 5), np.int32)
    mask[0, 3:9] = 0
    rel_offset = q_offset + q_len - 1
    num_rel = rel_offset + kv_len - q_offset
    table = ops.relative_bias_table(randn(rng, 32, H), False, 128, rel_offset, num_rel)
    kw = dict(causal=True, q_offset=q_offset, rel_offset=rel_offset, kv_len=kv_len)
    got = ops.attention(q, k, v, H, d, 1.0, key_mask=mask, rel_bias=table, kv_batch_divisor=beams, **kw)
    ref = attention_ref(q, k, v, H, d, 1.0, mask=mask, table=table, div=beams, **kw)
    check_attention(got, ref)


@pytest.mark.parametrize("m", [1, 5, 40])
@pytest.mark.parametrize("fmt", ["f32", "i8"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_strided_column_slices(m, fmt, accumulate):
    rng = rng_for("strided", m, fmt, accumulate)
    k, n = 33, 20
    w, b = randn(rng, n, k), randn(rng, n)
    lw = ops.prepare_linear(w, b, fmt)
    xbuf = randn(rng, m, k + 9)
    out = randn(rng, m, n + 7)
    before = out.copy()
    ops.linear_strided(xbuf, 4, lw, out, 3, accumulate)
    ref = xbuf[:, 4:4 + k].astype(np.float64) @ lw.effective_weight().astype(np.float64).T + b
    if accumulate:
        ref = ref + before[:, 3:3 + n]
    np.testing.assert_allclose(out[:, 3:3 + n], ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out[:, :3], before[:, :3])  # untouched around the slice
    np.testing.assert_array_equal(out[:, 3 + n:], before[:, 3 + n:])


@pytest.mark.parametrize("heads,kv_heads", [(4, 1), (6, 2), (3, 3), (8, 4)])
@pytest.mark.parametrize("d", [8, 19, 64])
def test_attention_grouped_and_multi_query(heads, kv_heads, d):
    rng = rng_for("attention gqa", heads, kv_heads, d)
    B, L = 2, 23
    q = rng.standard_normal((B, L, heads * d)).astype(np.float32)
    k = rng.standard_normal((B, L, kv_heads * d)).astype(np.float32)
    v = rng.standard_normal((B, L, kv_heads * d)).astype(np.float32)
    got = ops.attention(q, k, v, heads, d, scale=d ** -0.5, kv_heads=kv_heads, causal=True)
    check_attention(got, attention_ref(q, k, v, heads, d, scale=d ** -0.5, kv_heads=kv_heads, causal=True))


@pytest.mark.parametrize("q_len,q_offset", [(29, 0), (1, 28), (3, 26), (140, 0), (1, 139)])
@pytest.mark.parametrize("window", [0, 1, 7, 200])
def test_attention_prefix_lm_sliding_window_and_softcap(q_len, q_offset, window):
    # A prefix-LM decoder as PaliGemma 2 runs it: prefixes of different lengths
    # per request (beams share theirs), padding, soft-capping, GQA, a sliding window.
    rng = rng_for("attention prefix", q_len, q_offset, window)
    requests, beams, heads, kv_heads, d = 2, 2, 4, 2, 16
    kv_len = q_offset + q_len
    q = rng.standard_normal((requests * beams, q_len, heads * d)).astype(np.float32) * 3
    k = rng.standard_normal((requests, kv_len, kv_heads * d)).astype(np.float32)
    v = rng.standard_normal((requests, kv_len, kv_heads * d)).astype(np.float32)
    prefix = np.array([min(kv_len, 11), min(kv_len, 20)], np.int64)
    mask = np.ones((requests, kv_len), np.int32)
    mask[0, :2] = 0  # left padding of the shorter prompt
    args = dict(scale=0.3, kv_heads=kv_heads, softcap=5.0, causal=True, q_offset=q_offset, sliding_window=window)
    got = ops.attention(q, k, v, heads, d, key_mask=mask, prefix_lengths=prefix, kv_batch_divisor=beams, **args)
    ref = attention_ref(q, k, v, heads, d, mask=mask, prefix_lengths=prefix, div=beams, **args)
    check_attention(got, ref)


def test_attention_prefix_and_window_need_causal_and_consistent_heads():
    q = np.zeros((1, 2, 8), np.float32)
    kv = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="kv_heads"):
        ops.attention(q, np.zeros((1, 2, 6), np.float32), np.zeros((1, 2, 6), np.float32), 4, 2, kv_heads=3)
    with pytest.raises(ValueError, match="causal"):
        ops.attention(q, kv, kv, 4, 2, kv_heads=2, sliding_window=4)
    with pytest.raises(ValueError, match="causal"):
        ops.attention(q, kv, kv, 4, 2, kv_heads=2, prefix_lengths=np.array([1]))
    with pytest.raises(ValueError, match="softcap"):
        ops.attention(q, kv, kv, 4, 2, kv_heads=2, softcap=-1.0)


@pytest.mark.parametrize("split", [0, 1, 17, 40])
def test_attention_over_two_key_sets_merges_to_the_whole(split):
    # A beam's decode step: the request's shared prompt keys, then its own keys.
    rng = rng_for("attention merge", split)
    requests, beams, heads, kv_heads, d, prompt, own = 2, 3, 4, 2, 16, 40, 9
    q = rng.standard_normal((requests * beams, 1, heads * d)).astype(np.float32) * 2
    shared = rng.standard_normal((requests, prompt, 2 * kv_heads * d)).astype(np.float32)
    mine = rng.standard_normal((requests * beams, own, 2 * kv_heads * d)).astype(np.float32)
    mask = np.ones((requests, prompt), np.int32)
    mask[1, :split] = 0
    args = dict(scale=0.25, kv_heads=kv_heads, softcap=3.0, causal=True, sliding_window=30, with_lse=True)
    kv = kv_heads * d
    out_a, lse_a = ops.attention(q, shared, shared, heads, d, k_col=0, v_col=kv, key_mask=mask,
                                 kv_batch_divisor=beams, q_offset=prompt + own - 1, **args)
    out_b, lse_b = ops.attention(q, mine, mine, heads, d, k_col=0, v_col=kv, q_offset=own - 1, **args)
    merged = ops.merge_attention(out_a, lse_a, out_b, lse_b, heads)
    # The same keys in one set per row.
    whole = np.concatenate([np.repeat(shared, beams, axis=0), mine], axis=1)
    whole_mask = np.concatenate([np.repeat(mask, beams, axis=0), np.ones((requests * beams, own), np.int32)], 1)
    del args["with_lse"]
    ref = attention_ref(q, whole, whole, heads, d, k_col=0, v_col=kv, mask=whole_mask, q_offset=prompt + own - 1,
                        **args)
    check_attention(merged, ref)


# ---------------------------------------------------------------------------
# attention with a K/V batch per query batch (kv_batch_index)


def test_attention_kv_batch_index_rows_of_uneven_requests():
    # Cross-attention after a search dropped finished rows: requests keep 0..5
    # rows, not in request order, one request has none left.
    rng = rng_for("attn kv index cross")
    requests, H, d, Lk = 4, 3, 19, 141
    index = np.array([3, 0, 0, 3, 3, 1, 3, 3, 0], np.int64)
    for q_len in (1, 3):
        q = randn(rng, len(index), q_len, H * d)
        k, v = randn(rng, requests, Lk, H * d), randn(rng, requests, Lk, H * d)
        mask = np.ones((requests, Lk), np.int32)
        mask[0, 100:] = 0
        mask[3, :7] = 0
        got = ops.attention(q, k, v, H, d, 1.0, key_mask=mask, kv_batch_index=index)
        check_attention(got, attention_ref(q, k, v, H, d, 1.0, mask=mask, kv_index=index))


@pytest.mark.parametrize("q_offset,window", [(33, 0), (33, 7), (5, 4)])
def test_attention_kv_batch_index_prefix_lm_grouped_softcap_and_lse(q_offset, window):
    # A Gemma decode step over each row's request prompt: prefix lengths and the
    # padding mask follow the row's K/V batch; the log-sum-exp stays per row.
    rng = rng_for("attn kv index prefix", q_offset, window)
    requests, heads, kv_heads, d, q_len = 3, 4, 2, 13, 1
    kv_len = q_offset + q_len
    index = np.array([2, 2, 0, 1, 1, 1, 2], np.int64)
    q = randn(rng, len(index), q_len, heads * d, scale=3.0)
    k, v = randn(rng, requests, kv_len, kv_heads * d), randn(rng, requests, kv_len, kv_heads * d)
    prefix = np.array([min(kv_len, 9), kv_len, min(kv_len, 3)], np.int64)
    mask = np.ones((requests, kv_len), np.int32)
    mask[2, :2] = 0
    args = dict(scale=0.3, kv_heads=kv_heads, softcap=4.0, causal=True, q_offset=q_offset, sliding_window=window)
    got, lse = ops.attention(q, k, v, heads, d, key_mask=mask, prefix_lengths=prefix, kv_batch_index=index,
                             with_lse=True, **args)
    check_attention(got, attention_ref(q, k, v, heads, d, mask=mask, prefix_lengths=prefix, kv_index=index, **args))
    # Each row's log-sum-exp is the one it has alone against its K/V batch.
    for b, kb in enumerate(index):
        _, alone = ops.attention(q[b:b + 1], k[kb:kb + 1], v[kb:kb + 1], heads, d, key_mask=mask[kb:kb + 1],
                                 prefix_lengths=prefix[kb:kb + 1], with_lse=True, **args)
        np.testing.assert_allclose(lse[b], alone[0], rtol=1e-5, atol=1e-5)


def test_attention_kv_batch_index_equals_the_divisor_and_any_thread_count():
    # index b // beams is kv_batch_divisor = beams, bit for bit; a request with
    # many rows (several blocks of query rows) next to requests with one row
    # gives the same result on any number of threads.
    rng = rng_for("attn kv index threads")
    R, beams, H, d, Lk = 3, 5, 2, 24, 77
    q = randn(rng, R * beams, 2, H * d)
    k, v = randn(rng, R, Lk, H * d), randn(rng, R, Lk, H * d)
    by_divisor = ops.attention(q, k, v, H, d, 0.5, kv_batch_divisor=beams)
    by_index = ops.attention(q, k, v, H, d, 0.5, kv_batch_index=np.arange(R * beams) // beams)
    np.testing.assert_array_equal(by_index, by_divisor)

    index = np.array([1] * 37 + [0, 2, 2], np.int64)
    q = randn(rng, len(index), 1, H * d)
    ref = attention_ref(q, k, v, H, d, 0.5, kv_index=index)
    old = ops.get_threads()
    try:
        results = []
        for threads in (1, 2, 3, 5):
            ops.set_threads(threads)
            results.append(ops.attention(q, k, v, H, d, 0.5, kv_batch_index=index))
    finally:
        ops.set_threads(old)
    check_attention(results[0], ref)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


def test_attention_kv_batch_index_errors():
    q = np.zeros((3, 1, 8), np.float32)
    kv = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(ValueError, match="outside the 2 K/V batches"):
        ops.attention(q, kv, kv, 2, 4, kv_batch_index=np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="outside the 2 K/V batches"):
        ops.attention(q, kv, kv, 2, 4, kv_batch_index=np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="one or the other"):
        ops.attention(q, kv, kv, 2, 4, kv_batch_index=np.array([0, 1, 1]), kv_batch_divisor=3)
    with pytest.raises(ValueError, match="kv_batches > 0"):
        ops.attention(q, kv[:0], kv[:0], 2, 4, kv_batch_index=np.array([0, 0, 0]))
    with pytest.raises(ValueError, match=r"kv_batch_index must be \[q batch\]"):
        ops.attention(q, kv, kv, 2, 4, kv_batch_index=np.array([0, 1]))
