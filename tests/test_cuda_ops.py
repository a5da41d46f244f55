"""The CUDA ops (pali_engine._core_cuda.cuda_ops) against float64 NumPy references.

Skipped as a whole where the CUDA module does not import or sees no device.

Each case draws fresh random inputs from its own seed, with sizes that are not
multiples of the kernels' tiles and vector widths (so the scalar and vector
paths and the tile edges all run). The binding fills every output buffer with
NaN bit patterns before the op runs, so an element a kernel forgets to write
fails the comparison.

Tolerances: float32 within about 1e-5 of the float64 reference, relative to the
largest reference value (normwise). float16/bfloat16: the inputs are first
rounded to the dtype (the reference uses the rounded inputs), and the error
against the float64 reference may be at most twice PyTorch's error for the same
op at the same precision against the same reference (PyTorch on the CPU when it
has no CUDA).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.cuda


def _load_cuda_module():
    try:
        from pali_engine import _native

        core = _native.core_for("cuda")
    except Exception as error:  # noqa: BLE001 - any failure to load means "no CUDA here"
        return None, f"CUDA module not available: {error}"
    try:
        count = core.cuda_device_count()
    except Exception as error:  # noqa: BLE001
        return None, f"cuda_device_count failed: {error}"
    if count == 0:
        return None, "no CUDA device"
    return core, ""


_CORE, _SKIP_REASON = _load_cuda_module()
if _CORE is None:
    pytest.skip(_SKIP_REASON, allow_module_level=True)

cops = _CORE.cuda_ops
cpu_ops = _CORE.ops  # the CPU ops of the same module, for cross-checks

HALF = ["float16", "bfloat16"]
ALL = ["float32", *HALF]
F32_TOL = 1e-5


# ---------------------------------------------------------------------------
# helpers


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def round_to(x, dtype):
    """x rounded to `dtype` (nearest even) and back to float32."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def rel_err(y, ref):
    """max |y - ref| / max |ref| (NaN anywhere gives inf)."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    if not np.all(np.isfinite(y) == np.isfinite(ref)):
        return math.inf
    fin = np.isfinite(ref)
    if not np.array_equal(y[~fin], ref[~fin]):
        return math.inf
    scale = max(float(np.max(np.abs(ref[fin]), initial=0.0)), 1e-30)
    return float(np.max(np.abs(y[fin] - ref[fin]), initial=0.0)) / scale


def torch_or_skip():
    return pytest.importorskip("torch")


def torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def torch_device(torch):
    return "cuda" if torch.cuda.is_available() else "cpu"


def check(y, ref, dtype, torch_y=None, tol32=F32_TOL):
    """float32: normwise error <= tol32; half: <= 2x PyTorch's error at that precision."""
    err = rel_err(y, ref)
    if dtype == "float32":
        assert err <= tol32, f"float32 error {err:.3g} > {tol32:.3g}"
    else:
        assert torch_y is not None
        terr = rel_err(torch_y, ref)
        assert err <= 2 * terr + 1e-6, f"{dtype} error {err:.3g} > 2 x PyTorch's {terr:.3g}"
    return err


def to_np(t):
    return t.detach().float().cpu().numpy()


# ---------------------------------------------------------------------------
# module


def test_device_and_versions():
    name, cc, sms = cops.device_name()
    assert isinstance(name, str) and cc >= 70 and sms > 0
    rt, drv, cublas = cops.runtime_versions()
    assert rt > 0 and drv > 0 and cublas > 0


def test_timing_returns_one_time_per_launch():
    x = randn(rng_for("timing"), 4, 64)
    y, times = cops.layer_norm(x, None, None, 1e-6, "float32", iters=5)
    assert y.shape == x.shape and len(times) == 5 and all(t > 0 for t in times)


# ---------------------------------------------------------------------------
# LayerNorm, RMSNorm


NORM_SIZES = [(1, 1), (3, 7), (5, 33), (2, 64), (7, 768), (4, 1000), (3, 4096), (2, 12288)]


def layer_norm_ref(x, g, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


@pytest.mark.parametrize("m,d", NORM_SIZES)
@pytest.mark.parametrize("dtype", ALL)
def test_layer_norm(m, d, dtype):
    rng = rng_for("ln", m, d, dtype)
    x = round_to(randn(rng, m, d, scale=3.0) + 2.0, dtype)
    g = round_to(randn(rng, d), dtype)
    b = round_to(randn(rng, d), dtype)
    y = cops.layer_norm(x, g, b, 1e-6, dtype)
    ref = layer_norm_ref(x, g, b, 1e-6)
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, dev = torch_dtype(torch, dtype), torch_device(torch)
        t = lambda a: torch.from_numpy(a).to(dev, td)  # noqa: E731
        ty = to_np(torch.nn.functional.layer_norm(t(x), (d,), t(g), t(b), 1e-6))
    check(y, ref, dtype, ty)


def test_layer_norm_no_affine_matches_cpu_op():
    x = randn(rng_for("ln cpu"), 9, 300)
    y = cops.layer_norm(x, None, None, 1e-5, "float32")
    assert rel_err(y, cpu_ops.layer_norm(x, None, None, 1e-5)) <= F32_TOL
    assert rel_err(y, layer_norm_ref(x, 1.0, 0.0, 1e-5)) <= F32_TOL


def rms_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("m,d", NORM_SIZES)
@pytest.mark.parametrize("dtype", ALL)
def test_rms_norm(m, d, dtype):
    rng = rng_for("rms", m, d, dtype)
    x = round_to(randn(rng, m, d, scale=2.0), dtype)
    w = round_to(randn(rng, d), dtype)
    y = cops.rms_norm(x, w, 1e-6, dtype)
    ref = rms_ref(x, w, 1e-6)
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, dev = torch_dtype(torch, dtype), torch_device(torch)
        tx = torch.from_numpy(x).to(dev, td)
        tw = torch.from_numpy(w).to(dev, td)
        # HF T5LayerNorm: statistics in float32, result cast back, then weight.
        var = tx.float().pow(2).mean(-1, keepdim=True)
        ty = to_np(tw * (tx.float() * torch.rsqrt(var + 1e-6)).to(td))
    check(y, ref, dtype, ty)


@pytest.mark.parametrize("m,d", NORM_SIZES)
@pytest.mark.parametrize("dtype,residual_dtype", [("float32", "float32"), ("float16", "float16"),
                                                  ("bfloat16", "bfloat16"), ("float16", "float32"),
                                                  ("bfloat16", "float32")])
def test_add_rms_norm(m, d, dtype, residual_dtype):
    rng = rng_for("addrms", m, d, dtype, residual_dtype)
    r = round_to(randn(rng, m, d, scale=2.0), residual_dtype)
    delta = round_to(randn(rng, m, d), dtype)
    w = round_to(randn(rng, d), dtype)
    y, r_new = cops.add_rms_norm(r, delta, w, 1e-6, dtype, residual_dtype)
    r_ref = r.astype(np.float64) + delta
    assert rel_err(r_new, r_ref) <= (F32_TOL if residual_dtype == "float32" else 2.0**-7)
    ref = rms_ref(r_ref, w, 1e-6)
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, rd, dev = torch_dtype(torch, dtype), torch_dtype(torch, residual_dtype), torch_device(torch)
        tr = torch.from_numpy(r).to(dev, rd) + torch.from_numpy(delta).to(dev, td).to(rd)
        var = tr.float().pow(2).mean(-1, keepdim=True)
        ty = to_np(torch.from_numpy(w).to(dev, td) * (tr.float() * torch.rsqrt(var + 1e-6)).to(td))
    check(y, ref, dtype, ty)


def test_norms_reject_rows_beyond_shared_memory():
    x = np.zeros((1, 12289), np.float32)
    with pytest.raises(ValueError):
        cops.layer_norm(x, None, None)
    with pytest.raises(ValueError):
        cops.rms_norm(x, None)


def test_add_rms_norm_without_delta_leaves_residual():
    r = randn(rng_for("addrms none"), 3, 40)
    y, r_new = cops.add_rms_norm(r, None, None, 1e-6, "float32", "float32")
    np.testing.assert_array_equal(r_new, r)
    assert rel_err(y, rms_ref(r, 1.0, 1e-6)) <= F32_TOL


# ---------------------------------------------------------------------------
# activations


def gelu_tanh_ref(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACT_SIZES = [(1, 1), (3, 5), (2, 64), (7, 1000), (4, 2048)]


@pytest.mark.parametrize("m,f", ACT_SIZES)
@pytest.mark.parametrize("dtype", ALL)
def test_gelu_tanh(m, f, dtype):
    x = round_to(randn(rng_for("gelu", m, f, dtype), m, f, scale=3.0), dtype)
    y = cops.activation(x, "gelu_tanh", dtype)
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        tx = torch.from_numpy(x).to(torch_device(torch), torch_dtype(torch, dtype))
        ty = to_np(torch.nn.functional.gelu(tx, approximate="tanh"))
    check(y, gelu_tanh_ref(x), dtype, ty)


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_other_activations(act):
    x = randn(rng_for("act", act), 5, 77, scale=4.0)
    x64 = x.astype(np.float64)
    ref = x64 / (1 + np.exp(-x64)) if act == "silu" else np.maximum(x64, 0)
    check(cops.activation(x, act, "float32"), ref, "float32")


@pytest.mark.parametrize("m,f", ACT_SIZES)
@pytest.mark.parametrize("dtype", ALL)
def test_gated_activation(m, f, dtype):
    x = round_to(randn(rng_for("gated", m, f, dtype), m, 2 * f, scale=2.0), dtype)
    y = cops.gated_activation(x, "gelu_tanh", dtype)
    ref = gelu_tanh_ref(x[:, :f]) * x[:, f:]
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        tx = torch.from_numpy(x).to(torch_device(torch), torch_dtype(torch, dtype))
        ty = to_np(torch.nn.functional.gelu(tx[:, :f], approximate="tanh") * tx[:, f:])
    check(y, ref, dtype, ty)
    if dtype == "float32":
        assert rel_err(y, cpu_ops.gated_activation(x, "gelu_tanh")) <= F32_TOL


# ---------------------------------------------------------------------------
# linear


LINEAR_SIZES = [(1, 1, 1), (1, 17, 33), (3, 33, 257), (8, 31, 100), (13, 48, 257), (97, 130, 300),
                (256, 768, 768)]


@pytest.mark.parametrize("m,n,k", LINEAR_SIZES)
@pytest.mark.parametrize("dtype", ALL)
def test_linear(m, n, k, dtype):
    rng = rng_for("linear", m, n, k, dtype)
    x = round_to(randn(rng, m, k), dtype)
    w = round_to(randn(rng, n, k, scale=1 / math.sqrt(k)), dtype)
    b = round_to(randn(rng, n), dtype)
    y = cops.linear(x, w, b, None, dtype)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, dev = torch_dtype(torch, dtype), torch_device(torch)
        t = lambda a: torch.from_numpy(a).to(dev, td)  # noqa: E731
        ty = to_np(torch.nn.functional.linear(t(x), t(w), t(b)))
    check(y, ref, dtype, ty)


@pytest.mark.parametrize("dtype", ALL)
def test_linear_accumulate_and_no_bias(dtype):
    rng = rng_for("linear acc", dtype)
    m, n, k = 5, 40, 70
    x = round_to(randn(rng, m, k), dtype)
    w = round_to(randn(rng, n, k, scale=0.1), dtype)
    y0 = round_to(randn(rng, m, n), dtype)
    y = cops.linear(x, w, None, y0, dtype)
    ref = y0 + x.astype(np.float64) @ w.astype(np.float64).T
    tol = F32_TOL if dtype == "float32" else (2.0**-10 if dtype == "float16" else 2.0**-7)
    assert rel_err(y, ref) <= tol
    y = cops.linear(x, w, None, None, dtype)
    assert rel_err(y, x.astype(np.float64) @ w.astype(np.float64).T) <= tol


def test_linear_zero_k_gives_bias():
    b = randn(rng_for("k0"), 6)
    y = cops.linear(np.zeros((3, 0), np.float32), np.zeros((6, 0), np.float32), b, None, "float32")
    np.testing.assert_array_equal(y, np.broadcast_to(b, (3, 6)))


# ---------------------------------------------------------------------------
# patch embedding


def patchify_ref(img, p):
    """img: float64 [B, C, S, S] -> [B, N, C*P*P]."""
    bsz, c, s, _ = img.shape
    g = s // p
    x = img.reshape(bsz, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(bsz, g * g, c * p * p)


PATCH_CASES = [(1, 3, 28, 14, 32), (2, 3, 30, 5, 17), (1, 1, 16, 16, 8), (2, 3, 224, 14, 96)]


@pytest.mark.parametrize("bsz,c,s,p,width", PATCH_CASES)
@pytest.mark.parametrize("dtype", ALL)
def test_patch_embed_u8(bsz, c, s, p, width, dtype):
    rng = rng_for("pe u8", bsz, c, s, p, width, dtype)
    img = rng.integers(0, 256, size=(bsz, s, s, c), dtype=np.uint8)
    mean = np.array([0.5, 0.4, 0.3][:c], np.float32)
    std = np.array([0.5, 0.25, 0.2][:c], np.float32)
    n = (s // p) ** 2
    w = round_to(randn(rng, width, c * p * p, scale=1 / math.sqrt(c * p * p)), dtype)
    b = round_to(randn(rng, width), dtype)
    pos = round_to(randn(rng, n, width), dtype)
    y = cops.patch_embed_u8(img, p, mean, std, w, b, pos, dtype)
    norm = (img.astype(np.float64) / 255.0 - mean) / std
    ref = patchify_ref(norm.transpose(0, 3, 1, 2), p) @ w.astype(np.float64).T + b + pos
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, dev = torch_dtype(torch, dtype), torch_device(torch)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev, td)  # noqa: E731
        pt = t(patchify_ref(norm.transpose(0, 3, 1, 2), p))
        ty = to_np(torch.nn.functional.linear(pt, t(w), t(b)) + t(pos))
    check(y, ref, dtype, ty)


@pytest.mark.parametrize("dtype", ALL)
def test_patch_embed_float_chw(dtype):
    rng = rng_for("pe f32", dtype)
    bsz, c, s, p, width = 2, 3, 42, 14, 40
    img = randn(rng, bsz, c, s, s)
    w = round_to(randn(rng, width, c * p * p, scale=0.05), dtype)
    b = round_to(randn(rng, width), dtype)
    y = cops.patch_embed(img, p, w, b, None, None, None, dtype)
    ref = patchify_ref(img.astype(np.float64), p) @ w.astype(np.float64).T + b
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        td, dev = torch_dtype(torch, dtype), torch_device(torch)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev, td)  # noqa: E731
        ty = to_np(torch.nn.functional.linear(t(patchify_ref(img, p)), t(w), t(b)))
    check(y, ref, dtype, ty)
    if dtype == "float32":
        got_cpu = cpu_ops.patch_embed(img, p, cpu_ops.prepare_linear(w, b, "f32"))
        assert rel_err(y, got_cpu) <= F32_TOL


# ---------------------------------------------------------------------------
# attention


def attention_ref(q, k, v, heads, d, scale, q_col=0, k_col=0, v_col=0, mask=None, causal=False, q_offset=0,
                  table=None, rel_offset=0, div=1, kv_len=None, kv_index=None):
    """float64 reference; q [B, Lq, R], k/v [Bk or slots, L, R]; returns [B, Lq, heads*d]."""
    bsz, lq = q.shape[:2]
    lk = k.shape[1] if kv_len is None else kv_len
    out = np.zeros((bsz, lq, heads * d))
    for b in range(bsz):
        kvb = b // div
        slots = np.full(lk, kvb) if kv_index is None else kv_index[b, :lk]
        for h in range(heads):
            qi = q[b, :, q_col + h * d:q_col + (h + 1) * d].astype(np.float64)
            kj = k[slots, np.arange(lk), k_col + h * d:k_col + (h + 1) * d].astype(np.float64)
            vj = v[slots, np.arange(lk), v_col + h * d:v_col + (h + 1) * d].astype(np.float64)
            s = scale * qi @ kj.T
            pos = q_offset + np.arange(lq)[:, None]
            j = np.arange(lk)[None, :]
            if table is not None:
                s = s + table[h][j - pos + rel_offset]
            allowed = np.ones((lq, lk), bool)
            if mask is not None:
                allowed &= mask[kvb, :lk][None, :] != 0
            if causal:
                allowed &= j <= pos
            s = np.where(allowed, s, -np.inf)
            mx = s.max(axis=1, keepdims=True, initial=-np.inf)
            mx = np.where(np.isfinite(mx), mx, 0.0)
            e = np.where(allowed, np.exp(s - mx), 0.0)
            den = e.sum(axis=1, keepdims=True)
            o = np.where(den > 0, (e @ vj) / np.where(den > 0, den, 1.0), 0.0)
            out[b, :, h * d:(h + 1) * d] = o
    return out


def torch_attention(q, k, v, heads, d, scale, dtype, mask=None, causal=False, q_offset=0, table=None,
                    rel_offset=0, div=1, kv_index=None, kv_len=None):
    """PyTorch scaled_dot_product_attention at `dtype` on the same (rounded) inputs."""
    torch = torch_or_skip()
    td, dev = torch_dtype(torch, dtype), torch_device(torch)
    bsz, lq = q.shape[:2]
    lk = k.shape[1] if kv_len is None else kv_len
    if kv_index is None:
        kv_index = np.repeat(np.arange(k.shape[0]), div)[:, None].repeat(lk, axis=1)
    kg = k[kv_index[:, :lk], np.arange(lk)[None, :]]  # [B, lk, R]
    vg = v[kv_index[:, :lk], np.arange(lk)[None, :]]

    def heads_first(a, n):
        return torch.from_numpy(np.ascontiguousarray(a[..., :heads * d])).to(dev, td).view(bsz, n, heads, d).transpose(1, 2)

    bias = np.zeros((bsz, heads, lq, lk))
    pos = q_offset + np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    if table is not None:
        bias = bias + table[:, (j - pos + rel_offset)][None]
    allowed = np.ones((bsz, 1, lq, lk), bool)
    if mask is not None:
        allowed &= (mask[np.arange(bsz) // div, :lk] != 0)[:, None, None, :]
    if causal:
        allowed &= (j <= pos)[None, None]
    bias = np.where(allowed, bias, -np.inf)
    out = torch.nn.functional.scaled_dot_product_attention(
        heads_first(q, lq), heads_first(kg, lk), heads_first(vg, lk),
        attn_mask=torch.from_numpy(bias).to(dev, td), scale=scale)
    return to_np(out.transpose(1, 2).reshape(bsz, lq, heads * d))


ATTN_CASES = [  # (batch, heads, q_len, kv_len, head_dim)
    (1, 1, 1, 1, 64),
    (2, 3, 37, 53, 64),
    (1, 2, 100, 100, 128),
    (3, 2, 5, 70, 72),
    (2, 1, 33, 129, 80),
    (1, 2, 64, 31, 96),
]


@pytest.mark.parametrize("bsz,heads,lq,lk,d", ATTN_CASES)
@pytest.mark.parametrize("dtype", ALL)
def test_attention_plain(bsz, heads, lq, lk, d, dtype):
    rng = rng_for("attn", bsz, heads, lq, lk, d, dtype)
    q = round_to(randn(rng, bsz, lq, heads * d), dtype)
    k = round_to(randn(rng, bsz, lk, heads * d), dtype)
    v = round_to(randn(rng, bsz, lk, heads * d), dtype)
    scale = 1 / math.sqrt(d)
    y = cops.attention(q, k, v, heads, d, scale, dtype=dtype)
    ref = attention_ref(q, k, v, heads, d, scale)
    ty = torch_attention(q, k, v, heads, d, scale, dtype) if dtype != "float32" else None
    check(y, ref, dtype, ty)
    if dtype == "float32":
        assert rel_err(y, cpu_ops.attention(q, k, v, heads, d, scale)) <= F32_TOL


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("mask_dtype", [np.int32, np.uint8])
def test_attention_fused_unaligned_qkv_mask_and_bias(dtype, mask_dtype):
    # One fused buffer with a spare leading column: every row starts off a
    # 16-byte boundary, so the kernels' scalar loads run.
    rng = rng_for("attn fused", dtype, mask_dtype.__name__)
    bsz, heads, d, length = 2, 3, 64, 45
    hd = heads * d
    qkv = round_to(randn(rng, bsz, length, 3 * hd + 1), dtype)
    mask = (rng.random((bsz, length)) > 0.3).astype(mask_dtype)
    mask[:, 0] = 1
    table = randn(rng, heads, 2 * length - 1)
    got = cops.attention(qkv, qkv, qkv, heads, d, 1.0, q_col=1, k_col=1 + hd, v_col=1 + 2 * hd, key_mask=mask,
                         rel_bias=table, rel_offset=length - 1, dtype=dtype)
    ref = attention_ref(qkv, qkv, qkv, heads, d, 1.0, 1, 1 + hd, 1 + 2 * hd, mask=mask, table=table,
                        rel_offset=length - 1)
    ty = None
    if dtype != "float32":
        ty = torch_attention(qkv[..., 1:1 + hd], qkv[..., 1 + hd:1 + 2 * hd], qkv[..., 1 + 2 * hd:], heads, d, 1.0,
                             dtype, mask=mask, table=table, rel_offset=length - 1)
    check(got, ref, dtype, ty)


@pytest.mark.parametrize("lq,q_offset", [(1, 0), (7, 0), (40, 0), (3, 20), (33, 100)])
@pytest.mark.parametrize("dtype", ALL)
def test_attention_causal_with_bias(lq, q_offset, dtype):
    rng = rng_for("attn causal", lq, q_offset, dtype)
    heads, d = 2, 64
    lk = q_offset + lq
    q = round_to(randn(rng, 2, lq, heads * d), dtype)
    k = round_to(randn(rng, 2, lk + 5, heads * d), dtype)  # capacity beyond kv_len
    v = round_to(randn(rng, 2, lk + 5, heads * d), dtype)
    rel_offset = q_offset + lq - 1
    table = randn(rng, heads, rel_offset + lk - q_offset)
    got = cops.attention(q, k, v, heads, d, 1.0, causal=True, q_offset=q_offset, rel_bias=table,
                         rel_offset=rel_offset, kv_len=lk, dtype=dtype)
    ref = attention_ref(q, k, v, heads, d, 1.0, causal=True, q_offset=q_offset, table=table, rel_offset=rel_offset,
                        kv_len=lk)
    ty = None
    if dtype != "float32":
        ty = torch_attention(q, k, v, heads, d, 1.0, dtype, causal=True, q_offset=q_offset, table=table,
                             rel_offset=rel_offset, kv_len=lk)
    check(got, ref, dtype, ty)


@pytest.mark.parametrize("dtype", ALL)
def test_attention_cross_kv_batch_divisor(dtype):
    rng = rng_for("attn cross", dtype)
    requests, beams, heads, d, lk = 2, 3, 4, 64, 57
    q = round_to(randn(rng, requests * beams, 1, heads * d), dtype)
    k = round_to(randn(rng, requests, lk, heads * d), dtype)
    v = round_to(randn(rng, requests, lk, heads * d), dtype)
    mask = np.ones((requests, lk), np.int32)
    mask[1, 40:] = 0
    ref = attention_ref(q, k, v, heads, d, 1.0, mask=mask, div=beams)
    ty = torch_attention(q, k, v, heads, d, 1.0, dtype, mask=mask, div=beams) if dtype != "float32" else None
    for fn in (cops.attention, cops.attention_decode):
        got = fn(q, k, v, heads, d, 1.0, key_mask=mask, kv_batch_divisor=beams, dtype=dtype)
        check(got, ref, dtype, ty)


def test_attention_fully_masked_and_empty_give_zeros():
    rng = rng_for("attn masked")
    heads, d = 2, 64
    q = randn(rng, 2, 9, heads * d)
    k = randn(rng, 2, 20, heads * d)
    mask = np.ones((2, 20), np.uint8)
    mask[1] = 0
    for fn in (cops.attention, cops.attention_decode):
        qq = q if fn is cops.attention else q[:, :1]
        got = fn(qq, k, k, heads, d, 1.0, key_mask=mask)
        assert np.all(got[1] == 0)
        assert rel_err(got[0], attention_ref(qq, k, k, heads, d, 1.0, mask=mask)[0]) <= F32_TOL
        got = fn(qq, k, k, heads, d, 1.0, kv_len=0)
        assert np.all(got == 0)


def test_attention_large_scores():
    rng = rng_for("attn large")
    q = randn(rng, 1, 50, 64, scale=30.0)
    k = randn(rng, 1, 300, 64, scale=30.0)
    v = randn(rng, 1, 300, 64)
    check(cops.attention(q, k, v, 1, 64, 1.0), attention_ref(q, k, v, 1, 64, 1.0), "float32")
    check(cops.attention_decode(q[:, :1], k, v, 1, 64, 1.0), attention_ref(q[:, :1], k, v, 1, 64, 1.0), "float32")


def test_attention_errors():
    q = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(ValueError):
        cops.attention(q, q, q, 2, 4)  # head_dim 4 not supported
    q = np.zeros((1, 3, 64), np.float32)
    with pytest.raises(ValueError):
        cops.attention(q, q, q, 1, 64, rel_bias=np.zeros((1, 3), np.float32), rel_offset=2)
    with pytest.raises(ValueError):
        cops.attention_decode(q, q, q, 1, 64)  # q_len 3


DECODE_CASES = [  # (batch, heads, kv_len, head_dim)
    (1, 1, 1, 64),
    (2, 3, 7, 64),
    (4, 2, 64, 128),
    (3, 2, 65, 72),
    (2, 4, 300, 64),
    (1, 2, 2049, 128),  # more tiles than splits
    (6, 12, 1000, 64),
]


@pytest.mark.parametrize("bsz,heads,lk,d", DECODE_CASES)
@pytest.mark.parametrize("dtype", ALL)
def test_attention_decode_beam_table_and_bias(bsz, heads, lk, d, dtype):
    # Self-attention of one decode step at position lk - 1 over a cache of
    # `slots` rows with capacity > lk; each hypothesis reads its positions
    # from the slots its beam table names.
    rng = rng_for("decode", bsz, heads, lk, d, dtype)
    slots, cap = bsz + 1, lk + 3
    q = round_to(randn(rng, bsz, 1, heads * d), dtype)
    k = round_to(randn(rng, slots, cap, heads * d), dtype)
    v = round_to(randn(rng, slots, cap, heads * d), dtype)
    table = rng.integers(0, slots, size=(bsz, cap)).astype(np.int32)
    q_offset = lk - 1
    bias = randn(rng, heads, lk)
    got = cops.attention_decode(q, k, v, heads, d, 1.0, causal=True, q_offset=q_offset, rel_bias=bias,
                                rel_offset=q_offset, kv_len=lk, kv_index=table, dtype=dtype)
    ref = attention_ref(q, k, v, heads, d, 1.0, causal=True, q_offset=q_offset, table=bias, rel_offset=q_offset,
                        kv_len=lk, kv_index=table)
    ty = None
    if dtype != "float32":
        ty = torch_attention(q, k, v, heads, d, 1.0, dtype, causal=True, q_offset=q_offset, table=bias,
                             rel_offset=q_offset, kv_index=table, kv_len=lk)
    check(got, ref, dtype, ty)
    # The prefill kernel takes the same table.
    got_prefill = cops.attention(q, k, v, heads, d, 1.0, causal=True, q_offset=q_offset, rel_bias=bias,
                                 rel_offset=q_offset, kv_len=lk, kv_index=table, dtype=dtype)
    check(got_prefill, ref, dtype, ty)


def test_beam_table_reorder():
    rng = rng_for("beam table")
    batch, stride, length = 5, 12, 7
    old = rng.integers(0, batch, size=(batch, stride)).astype(np.int32)
    parents = rng.integers(0, batch, size=batch).astype(np.int32)
    new = cops.beam_table_reorder(old, parents, length)
    expected = old.copy()
    expected[:, :length] = old[parents, :length]
    expected[:, length] = np.arange(batch)
    np.testing.assert_array_equal(new, expected)


# ---------------------------------------------------------------------------
# log_softmax + top-k


def log_softmax_ref(x):
    x = x.astype(np.float64)
    mx = x.max(-1, keepdims=True)
    return x - mx - np.log(np.exp(x - mx).sum(-1, keepdims=True))


def topk_ref(x, k):
    idx = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")[..., :k]  # ties: lower index first
    return np.take_along_axis(x, idx, -1), idx


SOFTMAX_CASES = [(1, 1, 1), (3, 10, 5), (4, 1000, 8), (8, 32128, 8), (5, 32128, 64), (2, 257152, 16), (16, 3000, 33)]


@pytest.mark.parametrize("m,v,k", SOFTMAX_CASES)
@pytest.mark.parametrize("dtype", ALL)
def test_log_softmax_topk(m, v, k, dtype):
    rng = rng_for("lsm", m, v, k, dtype)
    x = round_to(randn(rng, m, v, scale=4.0), dtype)
    values, indices, y = cops.log_softmax_topk(x, k, True, True, dtype)
    ref = log_softmax_ref(x)
    ty = None
    if dtype != "float32":
        torch = torch_or_skip()
        tx = torch.from_numpy(x).to(torch_device(torch), torch_dtype(torch, dtype))
        ty = to_np(torch.log_softmax(tx, -1))
    check(y, ref, dtype, ty)
    # Top-k of the (rounded) input, ties (frequent in half precision) by the lower index.
    _, ref_idx = topk_ref(x, k)
    np.testing.assert_array_equal(indices, ref_idx)
    np.testing.assert_allclose(values, np.take_along_axis(y, ref_idx, -1), rtol=0, atol=0)
    if dtype == "float32":
        cv, ci = cpu_ops.topk(x, k)
        np.testing.assert_array_equal(indices, ci)


def test_topk_raw_values_ties_nan_and_sorted_input():
    x = np.array([[1.0, 3.0, 3.0, np.nan, -np.inf, 3.0, 0.0, -0.0],
                  [-np.inf] * 8,
                  np.arange(8, dtype=np.float32)], np.float32)
    values, indices, y = cops.log_softmax_topk(x, 4, False, True, "float32")
    np.testing.assert_array_equal(indices[0], [3, 1, 2, 5])
    assert np.isnan(values[0, 0]) and np.all(values[0, 1:] == 3.0)
    np.testing.assert_array_equal(indices[1], [0, 1, 2, 3])
    assert np.all(values[1] == -np.inf) and np.all(y[1] == -np.inf)
    np.testing.assert_array_equal(indices[2], [7, 6, 5, 4])
    # +0 and -0 tie: the lower index wins.
    _, idx, _ = cops.log_softmax_topk(np.array([[-0.0, 0.0, -1.0]], np.float32), 2, False, False, "float32")
    np.testing.assert_array_equal(idx[0], [0, 1])
    # Ascending input: every element is inserted (the slow case) and the result is still right.
    x = np.arange(50000, dtype=np.float32)[None]
    vals, idx, _ = cops.log_softmax_topk(x, 64, False, False, "float32")
    np.testing.assert_array_equal(idx[0], np.arange(49999, 49999 - 64, -1))


def test_log_softmax_only():
    x = randn(rng_for("lsm only"), 3, 777)
    values, indices, y = cops.log_softmax_topk(x, 0, True, True, "float32")
    assert values.shape == (3, 0)
    check(y, log_softmax_ref(x), "float32")


def test_topk_errors():
    x = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError):
        cops.log_softmax_topk(x, 65)
    with pytest.raises(ValueError):
        cops.log_softmax_topk(x[:, :3], 4)
