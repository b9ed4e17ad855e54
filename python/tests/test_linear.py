"""FC / GEMM ops through the Python package, against numpy references written
here: F.linear in float64, the upstream checkpoint formats dequantized
straight from their packed int32 tensors (AutoGPTQ, AutoAWQ,
compressed-tensors pack-quantized), and vLLM's int8 quantization formulas.

Tolerance (the library's documented bound): |y - ref| <= 4 sqrt(K) 2^-24
sum|x w| + one ulp of the output dtype. Dequantization, int8 quantization and
the int8 GEMM's integer dot are exact.
"""

import ml_dtypes
import numpy as np
import pytest

import xpu_ops
from xpu_ops import Error, Status

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
ULP = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def assert_linear_close(y, x, w, bias=None):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T + (0 if bias is None else bias.astype(np.float64))
    mag = np.abs(x64) @ np.abs(w64).T
    k = x.shape[-1]
    tol = 4 * np.sqrt(k) * 2.0**-24 * mag + ULP[y.dtype.name] * np.maximum(np.abs(ref), 2.0**-14)
    err = np.abs(y.astype(np.float64) - ref)
    assert (err <= tol).all(), f"max err {err.max()} (tol there {tol.flat[err.argmax()]})"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("m,n,k", [(1, 37, 53), (16, 64, 129), (40, 70, 300), (0, 5, 8)])
def test_linear(tier, dtype, m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    x = rng.uniform(-1, 1, (m, k)).astype(dtype)
    w = rng.uniform(-1, 1, (n, k)).astype(dtype)
    b = rng.uniform(-1, 1, n).astype(dtype)
    assert_linear_close(xpu_ops.linear(x, w, b), x, w, b)
    out = np.zeros((m, n), np.float32)
    assert xpu_ops.linear(x, w, None, out=out) is out
    assert_linear_close(out, x, w)


def test_linear_bad_input_leaves_out_untouched():
    x = np.ones((2, 8), np.float32)
    out = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.linear(x, np.ones((3, 7), np.float32), out=out)
    assert e.value.status == Status.SHAPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.linear(x, np.ones((3, 8), np.float16), out=out)
    assert e.value.status == Status.DTYPE_MISMATCH
    assert (out == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("m,n,k", [(1, 37, 53), (17, 65, 513), (40, 70, 300), (0, 5, 8)])
def test_linear_packed(tier, dtype, m, n, k):
    rng = np.random.default_rng(m * 7 + n + k)
    x = rng.uniform(-1, 1, (m, k)).astype(dtype)
    w = rng.uniform(-1, 1, (n, k)).astype(dtype)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    p = xpu_ops.PackedLinearWeight(w)
    assert p.shape == (n, k)
    w_copy = w.copy()
    w[:] = 0  # the packed weight holds its own copy
    assert_linear_close(xpu_ops.linear_packed(x, p, b), x, w_copy, b)
    out = np.zeros((m, n), np.float32)
    assert xpu_ops.linear_packed(x, p, None, out=out) is out
    assert_linear_close(out, x, w_copy)


def test_linear_packed_bad_input_leaves_out_untouched():
    p = xpu_ops.PackedLinearWeight(np.ones((3, 8), np.float32))
    out = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.linear_packed(np.ones((2, 7), np.float32), p, out=out)
    assert e.value.status == Status.SHAPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.linear_packed(np.ones((2, 8), np.float16), p, out=np.zeros((2, 3), np.float16))
    assert e.value.status == Status.DTYPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.PackedLinearWeight(np.ones((3, 8), np.int32))
    assert e.value.status == Status.DTYPE_MISMATCH
    assert (out == 7.0).all()


def test_linear_packed_wrong_tier():
    tiers = [t for t in ("avx512", "amx") if t in xpu_ops_tiers()]
    if tiers != ["avx512", "amx"]:
        pytest.skip("needs the avx512 and amx tiers")
    w = np.ones((3, 64), ml_dtypes.bfloat16)
    x = np.ones((2, 64), ml_dtypes.bfloat16)
    try:
        xpu_ops.set_isa("amx")
        p = xpu_ops.PackedLinearWeight(w)
        xpu_ops.set_isa("avx512")
        out = np.full((2, 3), 7.0, np.float32)
        with pytest.raises(Error) as e:
            xpu_ops.linear_packed(x, p, out=out)
        assert e.value.status == Status.UNSUPPORTED
        assert (out == 7.0).all()
        xpu_ops.set_isa("amx")
        assert (xpu_ops.linear_packed(x, p, out=out) == 64.0).all()
    finally:
        xpu_ops.set_isa("auto")


def xpu_ops_tiers():
    from conftest import available_tiers

    return available_tiers()


# --------------------------------------------------------------------------
# Upstream weight formats: numpy packers and independent dequantisation.


def pack_along(vals, bits, axis):
    """int32 words holding 32 / bits values of `vals` (unsigned) along `axis`,
    value i of a word at bits i * bits."""
    pack = 32 // bits
    v = np.moveaxis(vals.astype(np.uint32), axis, -1)
    pad = (-v.shape[-1]) % pack
    v = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)])
    v = v.reshape(v.shape[:-1] + (-1, pack))
    words = np.zeros(v.shape[:-1], np.uint32)
    for i in range(pack):
        words |= v[..., i] << np.uint32(bits * i)
    return np.moveaxis(words.view(np.int32), -1, axis)


def unpack_along(words, bits, axis, count):
    pack = 32 // bits
    w = np.moveaxis(words.view(np.uint32), axis, -1)
    vals = np.stack([(w >> np.uint32(bits * i)) & np.uint32((1 << bits) - 1) for i in range(pack)], -1)
    vals = vals.reshape(w.shape[:-1] + (-1,))[..., :count]
    return np.moveaxis(vals.astype(np.int64), -1, axis)


def check_imported(res, w_ref, bits, x_dtype):
    n, k = w_ref.shape
    deq = xpu_ops.wna16_dequantize(res["qweight"], res["scales"], res["zeros"], res["perm"], bits=bits, k=k)
    np.testing.assert_array_equal(deq, w_ref.astype(np.float32))
    rng = np.random.default_rng(k)
    x = rng.uniform(-1, 1, (3, k)).astype(x_dtype)
    y = xpu_ops.wna16_linear(x, res["qweight"], res["scales"], res["zeros"], res["perm"],
                             out=np.empty((3, n), np.float32), bits=bits)
    assert_linear_close(y, x, w_ref.astype(np.float32))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_import(tier, bits, fmt, act_order):
    rng = np.random.default_rng(bits + 10 * act_order)
    k, n, gs = 256, 32, 64
    groups = k // gs
    q = rng.integers(0, 1 << bits, (k, n))
    zs = rng.integers(0, 1 << bits, (groups, n))
    scales = rng.uniform(-0.05, 0.05, (groups, n)).astype(np.float16)
    g_idx = (np.arange(k) // gs).astype(np.int32)
    if act_order:
        g_idx = np.empty(k, np.int32)
        g_idx[rng.permutation(k)] = np.arange(k) // gs
    qweight, qzeros = pack_along(q, bits, 0), pack_along(zs, bits, 1)
    # Dequantize straight from the packed checkpoint.
    qv = unpack_along(qweight, bits, 0, k)
    zv = unpack_along(qzeros, bits, 1, n) + (1 if fmt == "gptq" else 0)
    w_ref = ((qv - zv[g_idx]) * scales[g_idx].astype(np.float64)).T
    res = xpu_ops.gptq_to_wna16(qweight, qzeros, scales, g_idx, bits=bits, checkpoint_format=fmt)
    assert (res["perm"] is not None) == act_order
    check_imported(res, w_ref, bits, np.float16)


def test_awq_import(tier):
    rng = np.random.default_rng(3)
    k, n, gs = 256, 64, 128
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (k // gs, n))
    scales = rng.uniform(-0.05, 0.05, (k // gs, n)).astype(np.float16)

    def pack_awq(v):
        # Nibble i of word j holds column 8 j + order[i].
        v = v.reshape(v.shape[0], -1, 8)[:, :, order]
        return pack_along(v.reshape(v.shape[0], -1), 4, 1)

    qweight, qzeros = pack_awq(q), pack_awq(z)
    inv = np.argsort(order)
    unpack = lambda w: unpack_along(w, 4, 1, n).reshape(w.shape[0], -1, 8)[:, :, inv].reshape(w.shape[0], n)
    g = np.arange(k) // gs
    w_ref = ((unpack(qweight) - unpack(qzeros)[g]) * scales[g].astype(np.float64)).T
    check_imported(xpu_ops.awq_to_wna16(qweight, qzeros, scales), w_ref, 4, ml_dtypes.bfloat16)


@pytest.mark.parametrize("bits,k,gs,asym,act", [(4, 256, 128, False, False), (4, 192, 32, True, True), (8, 50, 50, False, False), (8, 256, 64, True, False)])
def test_compressed_tensors_import(tier, bits, k, gs, asym, act):
    rng = np.random.default_rng(k + bits)
    n, half = 24, 1 << (bits - 1)
    groups = k // gs
    q = rng.integers(-half, half, (n, k))
    zp = rng.integers(-half, half, (n, groups))
    scale = rng.uniform(-0.05, 0.05, (n, groups)).astype(ml_dtypes.bfloat16)
    packed = pack_along(q + half, bits, 1)
    zpack = pack_along(zp + half, bits, 0)
    g_idx = None
    g = np.arange(k) // gs
    if act:
        g_idx = np.empty(k, np.int32)
        g_idx[rng.permutation(k)] = np.arange(k) // gs
        g = g_idx
    qv = unpack_along(packed, bits, 1, k) - half
    zv = unpack_along(zpack, bits, 0, n) - half if asym else np.zeros((n, groups), np.int64)
    w_ref = (qv - zv[:, g]) * scale[:, g].astype(np.float64)
    res = xpu_ops.compressed_tensors_to_wna16(packed, scale, (n, k), zpack if asym else None, g_idx, num_bits=bits)
    check_imported(res, w_ref, bits, np.float32)


def test_wna16_bad_inputs():
    res = xpu_ops.gptq_to_wna16(np.zeros((8, 16), np.int32), np.zeros((2, 2), np.int32), np.ones((2, 16), np.float16))
    x = np.ones((2, 64), np.float32)
    out = np.full((2, 16), 3.0, np.float32)
    with pytest.raises(Error) as e:  # 3 groups do not divide K = 64
        xpu_ops.wna16_linear(x, res["qweight"], np.ones((16, 3), np.float16), out=out)
    assert e.value.status == Status.SHAPE_MISMATCH
    with pytest.raises(Error) as e:  # wrong packed size
        xpu_ops.wna16_linear(x, np.zeros((16, 32), np.uint8), res["scales"], out=out)
    assert e.value.status == Status.SHAPE_MISMATCH
    assert (out == 3.0).all()
    with pytest.raises(Error) as e:  # unequal act-order groups
        g = (np.arange(64) // 32).astype(np.int32)
        g[0] = 1
        xpu_ops.gptq_to_wna16(np.zeros((8, 16), np.int32), np.zeros((2, 2), np.int32), np.ones((2, 16), np.float16), g)
    assert e.value.status == Status.UNSUPPORTED


# --------------------------------------------------------------------------
# W8A8 int8 (formulas of vLLM's tests/kernels/quantization/test_int8_quant.py,
# with round-half-even and saturation exactly as the CUDA kernels).


def rne_sat8(v, azp=0):
    r = np.rint(np.nan_to_num(v, nan=0.0).astype(np.float64))
    r = np.clip(r, -(2.0**31), 2.0**31 - 1) + azp
    return np.clip(r, -128, 127).astype(np.int8)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)], ids=lambda d: d.name)
def test_scaled_int8_quant_exact(tier, dtype):
    rng = np.random.default_rng(1)
    x = (rng.random((7, 1025)) * 1000 - 300).astype(dtype)
    x32 = x.astype(np.float32)
    # Static.
    q, _, _ = xpu_ops.scaled_int8_quant(x, np.array([2.1], np.float32))
    np.testing.assert_array_equal(q, rne_sat8(x32 / np.float32(2.1)))
    q, _, _ = xpu_ops.scaled_int8_quant(x, np.array([0.1], np.float32), np.array([54], np.int32), symmetric=False)
    np.testing.assert_array_equal(q, rne_sat8(x32 / np.float32(0.1), 54))
    # Dynamic symmetric: scale = absmax / 127, q = x * (127 / absmax).
    q, s, _ = xpu_ops.scaled_int8_quant(x)
    absmax = np.abs(x32).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(s, absmax / np.float32(127))
    np.testing.assert_array_equal(q, rne_sat8(x32 * (np.float32(127) / absmax)))
    # Dynamic asymmetric.
    q, s, z = xpu_ops.scaled_int8_quant(x, symmetric=False)
    lo, hi = x32.min(axis=1, keepdims=True), x32.max(axis=1, keepdims=True)
    s_ref = (hi - lo) / np.float32(255)
    z_ref = np.rint(np.float32(-128) - lo / s_ref).astype(np.int32)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(q, rne_sat8(x32 / s_ref, z_ref))


@pytest.mark.parametrize("azp", [False, True])
def test_int8_scaled_mm(tier, azp):
    rng = np.random.default_rng(5)
    m, n, k = 9, 70, 200
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    ws = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.uniform(-1, 1, n).astype(np.float32)
    q, s, z = xpu_ops.scaled_int8_quant(x, symmetric=not azp)
    out = np.empty((m, n), np.float32)
    dot = q.astype(np.int64) @ w.astype(np.int64).T
    if azp:
        adj = w.astype(np.int32).sum(axis=1, dtype=np.int32)
        xpu_ops.int8_scaled_mm_azp(out, q, w.T, s, ws, adj, z, bias)
        dot = dot - z.astype(np.int64) * adj[None, :]
    else:
        xpu_ops.int8_scaled_mm(out, q, w.T, s, ws, bias)
    # The op's f32 epilogue: fl(fl(fl(dot) * a_scale) * b_scale) + bias.
    want = (dot.astype(np.float32) * s) * ws[None, :] + bias
    np.testing.assert_array_equal(out, want)
    with pytest.raises(Error) as e:  # b must be column-major
        xpu_ops.int8_scaled_mm(out, q, np.ascontiguousarray(w.T), s, ws)
    assert e.value.status == Status.INVALID_STRIDE
