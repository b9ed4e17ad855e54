"""Layer ops through the Python package, against a float64 numpy reference
written here (vLLM's RMSNorm / RotaryEmbedding / SiluAndMul definitions).

Tolerance, |got - ref| <= atol + rtol * |ref| per element (the numbers of
the Rust tests and the ops' docs):
* rms_norm, fused_add_rms_norm: float32 (2**-19, 1e-30), float16
  (1.25 * 2**-10, 2**-24), bfloat16 (1.25 * 2**-7, 1e-30); the new residual
  is exact (the float32 sum rounded once);
* rotary_embedding: the same rtol/atol (float32: rtol 2**-22) plus
  2**-21 * hypot(x, y) of the rotated pair;
* silu_and_mul: float32 (2**-20, 1e-37), float16 / bfloat16 as above.
"""

import zlib

import ml_dtypes
import numpy as np
import pytest

import xpu_ops
from xpu_ops import Error, Status

DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
ULP = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
ATOL = {"float32": 1e-30, "float16": 2.0**-24, "bfloat16": 1e-30}


def rtol(dt, f32):
    return f32 if dt == "float32" else 1.25 * ULP[dt]


def rng_for(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def rand(rng, shape, dt, scale=1.0):
    return (rng.uniform(-1, 1, shape) * scale).astype(np.float32).astype(DTYPES[dt])


def f64(a):
    return np.asarray(a).astype(np.float64)


def assert_close(got, want, tol, what):
    got, want = f64(got), f64(want)
    err = np.abs(got - want)
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{what}: {bad.sum()} elements off, worst got {got[bad][:3]} want {want[bad][:3]}"
    )


# --------------------------------------------------------------------------
# Reference


def ref_rms_norm(x, w, eps):
    x = f64(x)
    scale = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + float(np.float32(eps)))
    return x * scale * f64(w)


def ref_rotate(x, cos, sin, is_neox):
    """x [..., tokens, heads, rot_dim] (float64) rotated with cos/sin [tokens, rot_dim/2]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    if is_neox:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out


def silu(x):
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------
# rms_norm / fused_add_rms_norm


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("hidden", [1, 17, 64, 1000, 4096])
@pytest.mark.parametrize("strided", [False, True])
def test_rms_norm(tier, dt, hidden, strided):
    rng = rng_for("rms", dt, hidden, strided)
    tokens = 7
    big = rand(rng, (tokens, hidden + 5), dt, 3.0)
    x = big[:, :hidden] if strided else np.ascontiguousarray(big[:, :hidden])
    w = rand(rng, (hidden,), dt, 2.0)
    out = np.full((tokens, hidden), 9, DTYPES[dt])
    xpu_ops.rms_norm(out, x, w, 1e-6)
    want = ref_rms_norm(x, w, 1e-6)
    assert_close(out, want, ATOL[dt] + rtol(dt, 2.0**-19) * np.abs(want), f"rms_norm {dt}")
    # In place: out is input.
    y = x.copy()
    xpu_ops.rms_norm(y, y, w, 1e-6)
    assert np.array_equal(y.view(np.uint8), out.view(np.uint8))


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 100), (1, 2048)])
def test_fused_add_rms_norm(tier, dt, shape):
    rng = rng_for("fused", dt, shape)
    x = rand(rng, shape, dt, 3.0)
    r = rand(rng, shape, dt, 3.0)
    w = rand(rng, shape[-1:], dt, 2.0)
    want_res = (f64(x) + f64(r)).astype(np.float32).astype(DTYPES[dt])
    want = ref_rms_norm(want_res, w, 1e-5)
    xi, ri = x.copy(), r.copy()
    xpu_ops.fused_add_rms_norm(xi, ri, w, 1e-5)
    assert np.array_equal(ri.view(np.uint8), want_res.view(np.uint8)), "residual is exact"
    assert_close(xi, want, ATOL[dt] + rtol(dt, 2.0**-19) * np.abs(want), f"fused {dt}")


# --------------------------------------------------------------------------
# rotary_embedding


def cos_sin_cache(max_pos, rot_dim, dt):
    inv_freq = 10000.0 ** (-np.arange(0, rot_dim, 2) / rot_dim)
    ang = np.arange(max_pos)[:, None] * inv_freq[None, :]
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=-1).astype(np.float32).astype(DTYPES[dt])


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (128, 32), (80, 40), (256, 64)])
@pytest.mark.parametrize("pos_dtype", [np.int64, np.int32])
def test_rotary_embedding_qkv_views(tier, dt, is_neox, head_size, rot_dim, pos_dtype):
    rng = rng_for("rope", dt, is_neox, head_size, rot_dim, pos_dtype)
    tokens, nq, nk, max_pos = 9, 4, 2, 100
    qkv = rand(rng, (tokens, (nq + 2 * nk) * head_size), dt, 2.0)
    orig = qkv.copy()
    q = qkv[:, : nq * head_size]  # [T, nq*hs], row stride of the qkv buffer
    k = qkv[:, nq * head_size : (nq + nk) * head_size].reshape(tokens, nk, head_size)
    cache = cos_sin_cache(max_pos, rot_dim, "float32" if dt == "float32" else dt)
    pos = rng.integers(0, max_pos, tokens).astype(pos_dtype)
    xpu_ops.rotary_embedding(pos, q, k, head_size, cache, is_neox)

    half = rot_dim // 2
    cos, sin = f64(cache[pos, :half]), f64(cache[pos, half:])
    for sl, heads in [(slice(0, nq * head_size), nq), (slice(nq * head_size, (nq + nk) * head_size), nk)]:
        x = f64(orig[:, sl]).reshape(tokens, heads, head_size)
        got = f64(qkv[:, sl]).reshape(tokens, heads, head_size)
        want = ref_rotate(x[..., :rot_dim], cos, sin, is_neox)
        if is_neox:
            partner = np.concatenate([x[..., half:rot_dim], x[..., :half]], axis=-1)
        else:
            partner = x[..., :rot_dim].reshape(tokens, heads, half, 2)[..., ::-1].reshape(tokens, heads, rot_dim)
        m = np.hypot(x[..., :rot_dim], partner)
        tol = ATOL[dt] + rtol(dt, 2.0**-22) * np.abs(want) + 2.0**-21 * m
        assert_close(got[..., :rot_dim], want, tol, f"rotary {dt}")
        assert np.array_equal(got[..., rot_dim:], x[..., rot_dim:]), "pass-through dims changed"
    v = slice((nq + nk) * head_size, None)
    assert np.array_equal(qkv[:, v].view(np.uint8), orig[:, v].view(np.uint8)), "v was written"


def test_rotary_embedding_2d_positions_and_no_key(tier):
    rng = rng_for("rope2d")
    b, s, nh, hs = 2, 3, 2, 16
    q = rand(rng, (b, s, nh, hs), "float32")
    q0 = q.copy()
    cache = cos_sin_cache(8, hs, "float32")
    pos = rng.integers(0, 8, (b, s))
    xpu_ops.rotary_embedding(pos, q, None, hs, cache, True)
    cos, sin = f64(cache[pos.reshape(-1), : hs // 2]), f64(cache[pos.reshape(-1), hs // 2 :])
    want = ref_rotate(f64(q0).reshape(b * s, nh, hs), cos, sin, True).reshape(q.shape)
    assert_close(q, want, 2.0**-21 * 4, "rotary 2d")


# --------------------------------------------------------------------------
# silu_and_mul


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("d", [1, 15, 16, 512, 3000])
def test_silu_and_mul(tier, dt, d):
    rng = rng_for("silu", dt, d)
    x = rand(rng, (2, 3, 2 * d), dt, 12.0)
    out = np.zeros((2, 3, d), DTYPES[dt])
    xpu_ops.silu_and_mul(out, x)
    xf = f64(x)
    want = silu(xf[..., :d]) * xf[..., d:]
    assert_close(out, want, ATOL[dt] + rtol(dt, 2.0**-20) * np.abs(want), f"silu {dt}")


# --------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_and_writes_nothing():
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    out = np.full((4, 8), 5, np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.rms_norm(out, x, w, -1.0)
    assert e.value.status == Status.INVALID_VALUE and "epsilon" in str(e.value)
    with pytest.raises(Error) as e:
        xpu_ops.rms_norm(out, x, np.ones(7, np.float32), 1e-6)
    assert e.value.status == Status.SHAPE_MISMATCH and "weight" in str(e.value)
    with pytest.raises(Error) as e:
        xpu_ops.rms_norm(out.astype(np.float16), x, w, 1e-6)
    assert e.value.status == Status.DTYPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.fused_add_rms_norm(out, out, w, 1e-6)
    assert e.value.status == Status.ALIASING
    assert (out == 5).all()

    q = np.ones((3, 32), np.float32)
    cache = cos_sin_cache(10, 16, "float32")
    with pytest.raises(Error) as e:
        xpu_ops.rotary_embedding(np.array([0, 10, 1]), q, None, 16, cache, True)
    assert e.value.status == Status.INDEX_OUT_OF_RANGE and "positions[1] = 10" in str(e.value)
    with pytest.raises(Error) as e:
        xpu_ops.rotary_embedding(np.array([0, 1, 2]), q, None, 12, cache, True)
    assert e.value.status == Status.SHAPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.rotary_embedding(np.array([0, 1, 2]), q, q[:, :16], 16, cache, True)
    assert e.value.status == Status.ALIASING
    assert (q == 1).all()

    s = np.full((4, 4), 3, np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.silu_and_mul(s, np.ones((4, 9), np.float32))
    assert e.value.status == Status.SHAPE_MISMATCH and "even" in str(e.value)
    with pytest.raises(Error) as e:
        xpu_ops.silu_and_mul(s, np.ones((4, 8), np.int32))
    assert e.value.status == Status.DTYPE_MISMATCH
    assert (s == 3).all()
