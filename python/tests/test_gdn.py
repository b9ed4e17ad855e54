"""Linear-attention ops through the Python package, against float64 numpy
references written here (vLLM's causal_conv1d semantics, fla's gated delta
rule recurrence), on every ISA tier, plus bad input.

Tolerances (the Rust tests' numbers, see tests/conv.rs and tests/gdn.rs):
* conv outputs: 1e-4 + rtol(out dtype) * |ref| with rtol 2e-6 (float32),
  2**-10 (float16), 2**-7 (bfloat16); the conv state is exact;
* gating g: 1e-6 + 1e-5 |ref|; beta_output, l2norm, rms_norm_gated: one
  rounding to the output dtype on top of ~1e-5 relative;
* gated delta rule outputs and states: 3e-5 + (1e-4 + rtol) * |ref|; chunked
  vs recurrent rmse/rms <= 2e-3 for bfloat16, 1e-5 for float32.
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
RTOL = {"float32": 2e-6, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def rng_for(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def rand(rng, shape, dt, scale=1.0):
    return (rng.uniform(-1, 1, shape) * scale).astype(np.float32).astype(DTYPES[dt])


def f64(a):
    return np.asarray(a).astype(np.float64)


def assert_close(got, want, atol, rtol, what):
    got, want = f64(got), f64(want)
    bad = ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    assert not bad.any(), f"{what}: {bad.sum()} off, got {got[bad][:3]} want {want[bad][:3]}"


def silu(x):
    return x / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------
# causal_conv1d


def ref_conv(window, xs, w, b, act):
    """window (dim, width-1) and tokens xs (dim, n) -> outputs (dim, n), u."""
    u = np.concatenate([window, xs], axis=1)
    width = w.shape[1]
    n = xs.shape[1]
    y = np.stack([(u[:, t : t + width] * w).sum(1) for t in range(n)], axis=1)
    if b is not None:
        y = y + b[:, None]
    return (silu(y) if act else y), u


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("width", [2, 4, 6])
def test_causal_conv1d_fn(tier, dt, width):
    rng = rng_for("fn", dt, width)
    dim, lens = 40, [3, 0, 70, 1, 5]
    total = sum(lens)
    x = rand(rng, (total, dim), dt).T  # channel-contiguous (dim, total)
    w = rand(rng, (dim, width), dt)
    b = rand(rng, (dim,), dt)
    states = rand(rng, (8, width - 1, dim), dt).transpose(0, 2, 1)  # vLLM layout
    qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    idx = np.array([3, 5, 0, -1, 6], dtype=np.int32)
    hi = np.array([True, False, False, True, True])
    want_x, want_s = f64(x).copy(), f64(states).copy()
    out_want = np.zeros_like(want_x)
    for n, (s0, s1) in enumerate(zip(qsl[:-1], qsl[1:])):
        if idx[n] == -1 or s0 == s1:
            continue
        win = want_s[idx[n], :, : width - 1] if hi[n] else np.zeros((dim, width - 1))
        y, u = ref_conv(win, want_x[:, s0:s1], f64(w), f64(b), True)
        out_want[:, s0:s1] = y
        want_s[idx[n], :, : width - 1] = u[:, -(width - 1) :]
    st = states.copy()
    out = xpu_ops.causal_conv1d_fn(x, w, b, st, qsl, idx, hi, "silu", -1)
    live = np.ones(total, bool)
    live[qsl[3] : qsl[4]] = False  # the padded sequence's outputs are untouched (zeros)
    assert_close(out[:, live], out_want[:, live], 1e-4, RTOL[dt], f"{tier} {dt} out")
    assert (f64(out[:, ~live]) == 0).all()
    np.testing.assert_array_equal(f64(st), want_s.astype(DTYPES[dt]).astype(np.float64))


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6])
def test_causal_conv1d_update_spec_decode(tier, width):
    rng = rng_for("upd", width)
    batch, dim, n = 3, 24, 3
    state_len = width - 2 + n + 1
    x = rand(rng, (batch, dim, n), "float32")
    w = rand(rng, (dim, width), "float32")
    st = rand(rng, (batch, dim, state_len), "float32")
    acc = np.array([1, 3, 2], dtype=np.int32)
    want_s = f64(st).copy()
    want_o = np.zeros((batch, dim, n))
    for i in range(batch):
        off = acc[i] - 1
        win = want_s[i, :, off : off + width - 1]
        y, u = ref_conv(win, f64(x[i]), f64(w), None, False)
        want_o[i] = y
        keep = width - 2 + n
        want_s[i, :, :keep] = u[:, -keep:]
    got = xpu_ops.causal_conv1d_update(x, st, w, None, None, None, acc)
    assert got is x
    assert_close(x, want_o, 1e-4, RTOL["float32"], f"{tier} width {width}")
    np.testing.assert_array_equal(st, want_s.astype(np.float32))


def test_conv_bad_input_leaves_outputs_untouched():
    rng = rng_for("bad")
    x = rand(rng, (2, 16), "float32")
    st = rand(rng, (2, 16, 3), "float32")
    w7 = rand(rng, (16, 7), "float32")
    x0, s0 = x.copy(), st.copy()
    with pytest.raises(Error) as e:
        xpu_ops.causal_conv1d_update(x, st, w7)
    assert e.value.status == Status.UNSUPPORTED and "width" in e.value.message
    w = rand(rng, (16, 4), "float32")
    with pytest.raises(Error) as e:
        xpu_ops.causal_conv1d_update(x, st, w, conv_state_indices=np.array([0, 2], np.int32))
    assert e.value.status == Status.INDEX_OUT_OF_RANGE and "conv_state_indices[1] = 2" in e.value.message
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(st, s0)


# --------------------------------------------------------------------------
# gating and norms


@pytest.mark.parametrize("dt", list(DTYPES))
def test_gating_and_norms(tier, dt):
    rng = rng_for("gn", dt)
    t, h = 9, 8
    A_log, dt_bias = rand(rng, (h,), dt, 2.0), rand(rng, (h,), dt, 2.0)
    a, b = rand(rng, (t, h), dt, 30.0), rand(rng, (t, h), dt, 8.0)
    g, beta = xpu_ops.fused_gdn_gating(A_log, a, b, dt_bias)
    x = f64(a) + f64(dt_bias)
    sp = np.where(x <= 20.0, np.log1p(np.exp(np.minimum(x, 20.0))), x)
    assert g.shape == (1, t, h) and g.dtype == np.float32
    assert_close(g[0], -np.exp(f64(A_log)) * sp, 1e-6, 1e-5, f"{tier} g")
    assert_close(beta[0], 1.0 / (1.0 + np.exp(-f64(b))), 1e-6, 1e-5, f"{tier} beta")

    xs = rand(rng, (5, 3, 128), dt, 3.0)
    y = xpu_ops.l2norm(xs)
    want = f64(xs) / np.sqrt((f64(xs) ** 2).sum(-1, keepdims=True) + 1e-6)
    assert_close(y, want, 2e-6, RTOL[dt], f"{tier} l2norm")

    z = rand(rng, (5, 3, 128), dt, 4.0)
    wt = rand(rng, (128,), dt, 1.5)
    for nbg in (True, False):
        out = xpu_ops.rms_norm_gated(xs, wt, None, z, 1e-6, 64, nbg)
        v = f64(xs) if nbg else f64(xs) * silu(f64(z))
        grp = v.reshape(5, 3, 2, 64)
        r = grp / np.sqrt((grp**2).mean(-1, keepdims=True) + 1e-6)
        ref = r.reshape(5, 3, 128) * f64(wt)
        if nbg:
            ref = ref * silu(f64(z))
        assert_close(out, ref, 1e-5, max(RTOL[dt], 1e-5), f"{tier} rms_norm_gated nbg={nbg}")


# --------------------------------------------------------------------------
# gated delta rule


def ref_gdn(q, k, v, g, beta, scale, s0):
    """One sequence, fp64: q, k [T, H, K], v [T, HV, V], g, beta [T, HV],
    s0 [HV, V, K] -> o [T, HV, V], final state."""
    t_len, h = q.shape[:2]
    hv = v.shape[1]
    s = s0.copy()
    o = np.zeros(v.shape)
    for t in range(t_len):
        for j in range(hv):
            hk = j // (hv // h)
            qq = q[t, hk] / np.sqrt((q[t, hk] ** 2).sum() + 1e-6) * scale
            kk = k[t, hk] / np.sqrt((k[t, hk] ** 2).sum() + 1e-6)
            s[j] *= np.exp(g[t, j])
            d = beta[t, j] * (v[t, j] - s[j] @ kk)
            s[j] += np.outer(d, kk)
            o[t, j] = s[j] @ qq
    return o, s


@pytest.mark.parametrize("dt", ["float32", "bfloat16"])
def test_gated_delta_rule_recurrent_and_chunked(tier, dt):
    rng = rng_for("gdn", dt)
    h, hv, kd, vd = 2, 4, 16, 8
    lens = [1, 65, 0, 20]
    total = sum(lens)
    q, k = rand(rng, (1, total, h, kd), dt), rand(rng, (1, total, h, kd), dt)
    v = rand(rng, (1, total, hv, vd), dt)
    g = (-0.01 - 0.05 * rng.uniform(0, 1, (1, total, hv))).astype(np.float32)
    beta = (0.5 + 0.4 * rng.uniform(-1, 1, (1, total, hv))).astype(np.float32).astype(DTYPES[dt])
    pool = rand(rng, (6, hv, vd, kd), "float32", 0.5)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    idx = np.array([4, 1, 2, -1], dtype=np.int32)
    scale = kd**-0.5
    want_o = np.zeros((total, hv, vd))
    want_pool = f64(pool).copy()
    for n in range(len(lens)):
        s0, s1 = cu[n], cu[n + 1]
        if s0 == s1 or idx[n] < 0:
            continue
        o, s = ref_gdn(f64(q[0, s0:s1]), f64(k[0, s0:s1]), f64(v[0, s0:s1]), f64(g[0, s0:s1]),
                       f64(beta[0, s0:s1]), float(np.float32(scale)), want_pool[idx[n]])
        want_o[s0:s1] = o
        want_pool[idx[n]] = s
    rt = RTOL[dt]
    p1 = pool.copy()
    o1, _ = xpu_ops.fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, None, p1, True, cu, idx, None, use_qk_l2norm_in_kernel=True)
    assert o1.dtype == v.dtype
    assert_close(o1[0], want_o, 3e-5, 1e-4 + rt, f"{tier} {dt} recurrent o")
    assert_close(p1, want_pool, 3e-5, 1e-4, f"{tier} {dt} recurrent state")
    p2 = pool.copy()
    o2, fs = xpu_ops.chunk_gated_delta_rule(
        q, k, v, g, beta, None, p2, True, cu, idx, None, use_qk_l2norm_in_kernel=True)
    assert fs is p2
    assert_close(o2[0], want_o, 3e-5, 1e-4 + rt, f"{tier} {dt} chunk o")
    assert_close(p2, want_pool, 3e-5, 1e-4, f"{tier} {dt} chunk state")
    rel = np.sqrt(((f64(o2) - f64(o1)) ** 2).sum() / (f64(o1) ** 2).sum())
    assert rel <= (2e-3 if dt == "bfloat16" else 1e-5), rel


def test_gated_delta_rule_bad_input():
    rng = rng_for("gdn-bad")
    q = rand(rng, (1, 4, 3, 8), "float32")
    v = rand(rng, (1, 4, 4, 8), "float32")  # 4 value heads, 3 key heads
    g = np.zeros((1, 4, 4), np.float32)
    pool = np.zeros((2, 4, 8, 8), np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.fused_recurrent_gated_delta_rule(q, q, v, g, None, None, pool)
    assert e.value.status == Status.SHAPE_MISMATCH and "multiple of H" in e.value.message
    q2 = rand(rng, (1, 4, 2, 8), "float32")
    bf_pool = np.zeros((2, 4, 8, 8), ml_dtypes.bfloat16)
    with pytest.raises(Error) as e:
        xpu_ops.chunk_gated_delta_rule(q2, q2, v, g, None, None, bf_pool, True)
    assert e.value.status == Status.DTYPE_MISMATCH and "fp32" in e.value.message
    assert not f64(bf_pool).any()
