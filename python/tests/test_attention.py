"""Attention ops through the Python package, against a float64 numpy
reference written here from the upstream definitions (vLLM's
``ref_single_query_cached_kv_attention`` with its ``1e-6`` in the softmax
denominator, vllm-flash-attn's masks, merge_attn_states' formula), with the
same rounding points as the kernels: probabilities rounded to the query dtype
before P.V, v2's ``tmp_out`` in the query dtype.

Tolerance, |got - ref| <= atol * max|v| + rtol * |ref| per element (the
numbers of the Rust tests and the ops' docs): float32 (5e-6, 5e-6), float16
(8e-4, 1e-3), bfloat16 (6e-3, 8e-3); LSE within 2e-4 * (1 + |lse|).
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
TOL = {"float32": (5e-6, 5e-6), "float16": (8e-4, 1e-3), "bfloat16": (6e-3, 8e-3)}
FP8 = {"fp8_e4m3": np.dtype(ml_dtypes.float8_e4m3fn), "fp8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}


def rng_for(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def f64(a):
    return np.asarray(a).astype(np.float64)


def rnd(x, dt):
    """x rounded to dtype dt (through float32), back in float64."""
    return np.asarray(x, np.float64).astype(np.float32).astype(DTYPES[dt]).astype(np.float64)


def assert_close(got, want, dt, what, vmax=1.0):
    atol, rtol = TOL[dt]
    got, want = f64(got), f64(want)
    both_nan = np.isnan(got) & np.isnan(want)
    err = np.abs(got - want)
    bad = ~((err <= atol * vmax + rtol * np.abs(want)) | both_nan)
    assert not bad.any(), f"{what}: {bad.sum()} off, got {got[bad][:4]} want {want[bad][:4]}"


# --------------------------------------------------------------------------
# Paged caches (vLLM layout), built directly: key [nb, Hkv, D/x, bs, x],
# value [nb, Hkv, D, bs]; unused slots hold NaN.


def build_paged(rng, dt, kv, lens, hkv, d, bs, scale=0.02):
    stored = FP8.get(kv, DTYPES[dt])
    x = 16 // stored.itemsize
    need = [(l + bs - 1) // bs for l in lens]
    nb = sum(need) + 2
    ids = rng.permutation(nb).astype(np.int32)
    width = max(need) + 1
    table = np.full((len(lens), width), -1, np.int32)
    k_rows = np.zeros((len(lens), max(lens + [1]), hkv, d))
    v_rows = np.zeros_like(k_rows)
    kc = np.full((nb, hkv, d // x, bs, x), np.nan, np.float32).astype(stored)
    vc = np.full((nb, hkv, d, bs), np.nan, np.float32).astype(stored)
    nxt = 0
    for s, l in enumerate(lens):
        for i in range(need[s]):
            table[s, i] = ids[nxt]
            nxt += 1
        for t in range(l):
            b, o = table[s, t // bs], t % bs
            kr = rng.uniform(-1, 1, (hkv, d))
            vr = rng.uniform(-1, 1, (hkv, d))
            if kv in FP8:
                kq = (kr / scale).astype(np.float32).astype(stored)
                vq = (vr / scale).astype(np.float32).astype(stored)
                k_rows[s, t], v_rows[s, t] = f64(kq) * np.float32(scale), f64(vq) * np.float32(scale)
            else:
                kq, vq = kr.astype(np.float32).astype(stored), vr.astype(np.float32).astype(stored)
                k_rows[s, t], v_rows[s, t] = f64(kq), f64(vq)
            kc[b, :, :, o, :] = kq.reshape(hkv, d // x, x)
            vc[b, :, :, o] = vq
    if kv in FP8:  # vLLM keeps fp8 caches as uint8
        kc, vc = kc.view(np.uint8), vc.view(np.uint8)
    return kc, vc, table, k_rows, v_rows


def ref_paged(q, k_rows, v_rows, lens, scale, dt, hkv, alibi=None, parts=None):
    """vLLM's decode attention per sequence and head; with parts (512) also
    the v2 partition state and reduction."""
    s_, h, d = q.shape
    g = h // hkv
    out = np.zeros((s_, h, d))
    for s in range(s_):
        l = lens[s]
        for hh in range(h):
            kvh = hh // g
            logits = scale * (k_rows[s, :l, kvh] @ f64(q[s, hh]))
            if alibi is not None:
                logits += alibi[hh] * (np.arange(l) - l + 1)
            ranges = [(0, l)] if parts is None else [(p, min(p + parts, l)) for p in range(0, l, parts)]
            tmp, ms, es = [], [], []
            for a, b in ranges:
                m = logits[a:b].max(initial=-np.finfo(np.float32).max)
                e = np.exp(logits[a:b] - m)
                p = rnd(e / (e.sum() + 1e-6), dt)
                tmp.append(rnd(p @ v_rows[s, a:b, kvh], dt) if parts else p @ v_rows[s, a:b, kvh])
                ms.append(np.float32(m))
                es.append(np.float32(e.sum()))
            if parts is None or len(ranges) == 1:
                out[s, hh] = tmp[0] if ranges else 0.0
            else:
                ms, es = f64(ms), f64(es)
                w = es * np.exp(ms - ms.max())
                out[s, hh] = (np.array(tmp) * w[:, None]).sum(0) / (w.sum() + 1e-6)
    return out


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("kv", ["auto", "fp8_e4m3"])
def test_paged_v1_v2(tier, dt, kv):
    rng = rng_for("paged", dt, kv)
    h, hkv, d, bs = 8, 2, 64, 16
    lens = [1, 15, 16, 17, 600]
    kc, vc, table, k_rows, v_rows = build_paged(rng, dt, kv, lens, hkv, d, bs)
    q = rng.uniform(-2, 2, (len(lens), h, d)).astype(np.float32).astype(DTYPES[dt])
    alibi = (0.5 ** np.arange(1, h + 1)).astype(np.float32)
    scale = d**-0.5
    sl = np.array(lens, np.int32)
    ks = 0.02 if kv != "auto" else None
    want = ref_paged(q, k_rows, v_rows, lens, scale, dt, hkv, alibi)
    out = np.full(q.shape, np.nan, np.float32).astype(DTYPES[dt])
    xpu_ops.paged_attention_v1(
        out, q, kc, vc, hkv, scale, table, sl, bs, max(lens), alibi, kv, ks, ks
    )
    assert_close(out, rnd(want, dt), dt, f"v1 {tier}")

    want2 = ref_paged(q, k_rows, v_rows, lens, scale, dt, hkv, alibi, parts=512)
    np_ = (max(lens) + 511) // 512
    es = np.zeros((len(lens), h, np_), np.float32)
    ml = np.zeros_like(es)
    tmp = np.zeros((len(lens), h, np_, d), DTYPES[dt])
    out2 = np.full(q.shape, np.nan, np.float32).astype(DTYPES[dt])
    xpu_ops.paged_attention_v2(
        out2, es, ml, tmp, q, kc, vc, hkv, scale, table, sl, bs, max(lens), alibi, kv, ks, ks
    )
    assert_close(out2, rnd(want2, dt), dt, f"v2 {tier}")


def test_paged_bad_input():
    rng = rng_for("bad")
    kc, vc, table, _, _ = build_paged(rng, "float32", "auto", [20], 2, 32, 16)
    q = np.zeros((1, 4, 32), np.float32)
    out = np.full(q.shape, 7.0, np.float32)
    bad = table.copy()
    bad[0, 0] = 999
    with pytest.raises(Error) as e:
        xpu_ops.paged_attention_v1(out, q, kc, vc, 2, 0.1, bad, np.array([20], np.int32), 16, 20)
    assert e.value.status == Status.INDEX_OUT_OF_RANGE and "block_tables" in e.value.message
    with pytest.raises(Error) as e:
        xpu_ops.paged_attention_v1(out, q, kc, vc, 3, 0.1, table, np.array([20], np.int32), 16, 20)
    assert e.value.status == Status.SHAPE_MISMATCH
    with pytest.raises(Error) as e:
        xpu_ops.paged_attention_v1(
            out, q, kc, vc, 2, 0.1, table, np.array([20], np.int32), 16, 20,
            blocksparse_vert_stride=4,
        )
    assert e.value.status == Status.UNSUPPORTED
    assert (out == 7.0).all()


# --------------------------------------------------------------------------
# Varlen over a flash-layout cache [nb, bs, Hkv, D]


def build_flash(rng, dt, stored, k_lens, hkv, d, bs, scale=0.02):
    sdt = stored if stored is not None else DTYPES[dt]
    need = [(l + bs - 1) // bs for l in k_lens]
    nb = sum(need) + 1
    ids = rng.permutation(nb).astype(np.int32)
    table = np.zeros((len(k_lens), max(need) + 1), np.int32)
    kc = np.full((nb, bs, hkv, d), np.nan, np.float32).astype(sdt)
    vc = np.full((nb, bs, hkv, d), np.nan, np.float32).astype(sdt)
    k_rows, v_rows = [], []
    nxt = 0
    for s, l in enumerate(k_lens):
        table[s, : need[s]] = ids[nxt : nxt + need[s]]
        nxt += need[s]
        kr = rng.uniform(-1, 1, (l, hkv, d))
        vr = rng.uniform(-1, 1, (l, hkv, d))
        div = scale if stored is not None else 1.0
        kq, vq = (kr / div).astype(np.float32).astype(sdt), (vr / div).astype(np.float32).astype(sdt)
        k_rows.append(f64(kq) * (np.float32(scale) if stored is not None else 1.0))
        v_rows.append(f64(vq) * (np.float32(scale) if stored is not None else 1.0))
        for t in range(l):
            kc[table[s, t // bs], t % bs] = kq[t]
            vc[table[s, t // bs], t % bs] = vq[t]
    return kc, vc, table, k_rows, v_rows


def ref_varlen(q, cu, k_lens, k_rows, v_rows, scale, dt, causal, window, softcap, sinks):
    total, h, d = q.shape
    hkv = k_rows[0].shape[1]
    g = h // hkv
    out = np.zeros((total, h, d))
    lse = np.full((h, total), np.nan)
    for s in range(len(k_lens)):
        q0, ql, kl = cu[s], cu[s + 1] - cu[s], k_lens[s]
        for i in range(ql):
            pos = i + kl - ql
            hi = kl if not causal else min(kl, pos + 1)
            if window[1] >= 0:
                hi = min(hi, pos + window[1] + 1)
            lo = max(0, pos - window[0]) if window[0] >= 0 else 0
            for hh in range(h):
                kvh = hh // g
                idx = np.arange(lo, hi) if lo < hi else np.arange(0)
                sc = scale * (k_rows[s][idx, kvh] @ f64(q[q0 + i, hh]))
                if softcap > 0:
                    sc = softcap * np.tanh(sc / softcap)
                parts = list(sc) + ([float(sinks[hh])] if sinks is not None else [])
                if not parts:
                    out[q0 + i, hh] = 0.0
                    lse[hh, q0 + i] = -np.inf
                    continue
                m = max(parts)
                e = np.exp(sc - m)
                total_e = e.sum() + (np.exp(float(sinks[hh]) - m) if sinks is not None else 0.0)
                out[q0 + i, hh] = (rnd(e, dt) @ v_rows[s][idx, kvh]) / total_e
                lse[hh, q0 + i] = m + np.log(total_e)
    return out, lse


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize(
    "case",
    [
        dict(causal=True, window=(-1, -1), softcap=0.0, sinks=False, fp8=None),
        dict(causal=True, window=(24, -1), softcap=0.0, sinks=True, fp8=None),
        dict(causal=False, window=(-1, 3), softcap=20.0, sinks=False, fp8="float8_e4m3fn"),
    ],
)
def test_varlen(tier, dt, case):
    rng = rng_for("varlen", dt, str(case))
    h, hkv, d, bs = 8, 2, 64, 16
    seqs = [(1, 70), (30, 30), (5, 40), (0, 9)]  # decode, prefill, chunk, no queries
    q_lens = [s[0] for s in seqs]
    k_lens = [s[1] for s in seqs]
    stored = None if case["fp8"] is None else np.dtype(getattr(ml_dtypes, case["fp8"]))
    kc, vc, table, k_rows, v_rows = build_flash(rng, dt, stored, k_lens, hkv, d, bs)
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.uniform(-2, 2, (cu[-1], h, d)).astype(np.float32).astype(DTYPES[dt])
    sinks = rng.uniform(-1, 3, h).astype(np.float32) if case["sinks"] else None
    scale = 0.7 * d**-0.5
    descale = np.float32(0.02) if stored is not None else None
    out, lse = xpu_ops.flash_attn_varlen_func(
        q, kc, vc, max(q_lens), cu, max(k_lens), seqused_k=np.array(k_lens, np.int32),
        softmax_scale=scale, causal=case["causal"], window_size=case["window"],
        softcap=case["softcap"], block_table=table, return_softmax_lse=True,
        k_descale=descale, v_descale=descale, s_aux=sinks,
    )
    want, want_lse = ref_varlen(
        q, cu, k_lens, k_rows, v_rows, scale, dt, case["causal"], case["window"],
        case["softcap"], sinks,
    )
    assert_close(out, rnd(want, dt), dt, f"varlen {tier}")
    w = f64(want_lse)
    g = f64(lse)
    fin = np.isfinite(w)
    assert (g[~fin] == w[~fin]).all()
    assert (np.abs(g[fin] - w[fin]) <= 2e-4 * (1 + np.abs(w[fin]))).all()


def test_varlen_refuses_the_unpaged_form():
    q = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(Error) as e:
        xpu_ops.flash_attn_varlen_func(q, q, q, 1, np.array([0, 1], np.int32), 1)
    assert e.value.status == Status.UNSUPPORTED


# --------------------------------------------------------------------------
# merge_attn_states


@pytest.mark.parametrize("dt", list(DTYPES))
def test_merge(tier, dt):
    rng = rng_for("merge", dt)
    n, h, d = 9, 3, 40
    p = rng.uniform(-1, 1, (n, h, d)).astype(np.float32).astype(DTYPES[dt])
    s = rng.uniform(-1, 1, (n, h, d)).astype(np.float32).astype(DTYPES[dt])
    pl = rng.uniform(-5, 5, (h, n)).astype(np.float32)
    sl = rng.uniform(-5, 5, (h, n)).astype(np.float32)
    pl[0, 0], sl[0, 1], pl[1, 2], sl[1, 2] = -np.inf, np.inf, -np.inf, -np.inf
    out = np.empty_like(p)
    ol = np.empty_like(pl)
    xpu_ops.merge_attn_states(out, p, pl, s, sl, ol)
    plf, slf = f64(pl), f64(sl)
    plf[plf == np.inf] = -np.inf
    slf[slf == np.inf] = -np.inf
    m = np.maximum(plf, slf)
    both = m == -np.inf
    m[both] = 0.0
    pe, se = np.exp(plf - m), np.exp(slf - m)
    tot = pe + se
    tot[both] = 1.0
    ws, wp = (se / tot).T[:, :, None], (pe / tot).T[:, :, None]
    want = np.where(wp > 0, f64(p) * wp, 0.0) + np.where(ws > 0, f64(s) * ws, 0.0)
    with np.errstate(divide="ignore"):
        want_lse = np.where(both, -np.inf, np.log(pe + se) + m)
    ulp = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dt]
    assert (np.abs(f64(out) - want) <= ulp * np.abs(want) + 1e-7).all()
    fin = np.isfinite(want_lse)
    assert (f64(ol)[~fin] == want_lse[~fin]).all()
    assert np.allclose(f64(ol)[fin], want_lse[fin], rtol=1e-6, atol=1e-6)
    assert (f64(out)[2, 1] == 0.0).all()  # both states empty
