"""Sampling through the Python package, on every ISA tier, against a numpy
reference written here.

* probs ops: exact token ids. The reference recomputes the definition
  independently: Philox4x32-10 (Random123 known answers checked first),
  integer weights ``floor(clamp(p, 0, 2) * 2**40)``, masks by sorting, and
  the inverse-CDF draw in index order.
* logits ops: every sample lies in the float64 mask (top-p relaxed by 1e-4
  against rounding at the boundary); samples are identical on every tier;
  a frequency test bounds the total variation from the float64 distribution.
* sampler_forward: greedy rows are the first argmax; ranks exact; raw
  logprobs within 2e-7 + 2**-23 * |ref| of a float64 log-softmax; penalties
  equal vLLM's float32 formulas exactly.
* renorm: within 2 float32 ulps of p / sum in float64; masks exact.
* bad input: the named status, outputs untouched.
"""

import zlib

import ml_dtypes
import numpy as np
import pytest

import xpu_ops
from xpu_ops import Error, Status

# --------------------------------------------------------------------------
# Reference

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def philox4x32(ctr, key, rounds=10):
    c, k = list(ctr), list(key)
    for r in range(rounds):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & MASK32, p1 & MASK32, ((p0 >> 32) ^ c[3] ^ k[1]) & MASK32,
             p0 & MASK32]
        k = [(k[0] + W0) & MASK32, (k[1] + W1) & MASK32]
    return c


def uniform_bits(seed, subsequence, offset):
    block = offset // 4
    out = philox4x32([block & MASK32, block >> 32, subsequence & MASK32, subsequence >> 32],
                     [seed & MASK32, (seed >> 32) & MASK32])
    return out[offset % 4]


def weights(p):
    c = np.clip(np.nan_to_num(p.astype(np.float64)), 0.0, 2.0)
    return np.floor(c * 2.0**40).astype(np.uint64)


def keys(y):
    """Order of values with ties equal (float64 is exact for these floats)."""
    return y.astype(np.float64) + 0.0


def probs_mask(p, top_k=0, top_p=1.0, min_p=0.0, joint=False):
    n = len(p)
    y = keys(p)
    kept = np.ones(n, bool)
    if 0 < top_k < n:
        kth = np.sort(y)[::-1][top_k - 1]
        kept &= y >= kth
    if min_p > 0:
        kept &= p >= np.float32(min_p) * np.float32(p.max())
    if top_p < 1.0:
        w = weights(p)
        z = int(w.sum()) if joint else int(w[kept].sum())
        q = int(min(max(np.ceil(np.float64(np.float32(top_p)) * 2.0**32), 1), 2**32))
        above = {}
        for v in np.unique(y[kept]):
            above[v] = int(w[kept & (y > v)].sum())
        kept &= np.array([kept[i] and (above[y[i]] << 32) < q * z for i in range(n)])
    return kept


def draw(p, kept, u):
    w = weights(p) * kept
    z = int(w.sum())
    t = (u * z) >> 32
    acc = np.cumsum(w.astype(object))
    return int(np.argmax(acc > t))


def softmax64(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def logits_mask(x, top_k=0, top_p=1.0, min_p=0.0, joint=False, slack=1e-4):
    """The float64 mask, with top-p relaxed by `slack` (boundary rounding)."""
    n = len(x)
    kept = np.ones(n, bool)
    if 0 < top_k < n:
        kept &= x >= np.sort(x)[::-1][top_k - 1]
    p = softmax64(x)
    if min_p > 0:
        kept &= p >= min_p * p.max() * (1 - slack)
    if top_p < 1.0:
        z = p.sum() if joint else p[kept].sum()
        above = np.array([p[kept & (x > x[i])].sum() for i in range(n)])
        kept &= above < (top_p + slack) * z
    return kept


def rng_for(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def llm_logits(rng, b, v):
    x = rng.normal(0, 2, (b, v)).astype(np.float32)
    for r in range(b):
        x[r, rng.integers(0, v, 4)] += rng.uniform(6, 10, 4).astype(np.float32)
    return x


DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

# --------------------------------------------------------------------------
# Philox


@pytest.mark.parametrize(
    "rounds,ctr,key,want",
    [
        (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        (10, [MASK32] * 4, [MASK32] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (10, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
        (7, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A]),
    ],
)
def test_reference_philox_known_answers(rounds, ctr, key, want):
    assert philox4x32(ctr, key, rounds) == want


# --------------------------------------------------------------------------
# FlashInfer samplers


def probs_rows(rng, b, v, dt):
    p = np.stack([softmax64(r) for r in llm_logits(rng, b, v)]).astype(np.float32)
    return p.astype(DTYPES[dt])


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("v", [1, 7, 16, 33, 1000, 5000])
def test_probs_samplers_match_reference_exactly(tier, dt, v):
    rng = rng_for("probs", dt, v)
    b = 5
    p = probs_rows(rng, b, v, dt)
    pf = p.astype(np.float32)
    seeds = rng.integers(0, 2**62, b)
    ks = rng.integers(1, v + 2, b)
    ps = rng.uniform(0.1, 1.0, b).astype(np.float32)
    ms = rng.uniform(0, 0.4, b).astype(np.float32)
    cases = [
        ("plain", lambda: xpu_ops.sampling_from_probs(p, seed=seeds, offset=5), {}),
        ("top_k", lambda: xpu_ops.top_k_sampling_from_probs(p, ks, seed=seeds, offset=5), "k"),
        ("top_p", lambda: xpu_ops.top_p_sampling_from_probs(p, ps, seed=seeds, offset=5), "p"),
        ("min_p", lambda: xpu_ops.min_p_sampling_from_probs(p, ms, seed=seeds, offset=5), "m"),
        ("top_k_top_p", lambda: xpu_ops.top_k_top_p_sampling_from_probs(p, ks, ps, seed=seeds, offset=5),
         "kp"),
        ("joint", lambda: xpu_ops.top_k_top_p_sampling_from_probs(
            p, ks, ps, filter_apply_order="joint", seed=seeds, offset=5), "kpj"),
    ]
    for name, run, which in cases:
        got = run()
        assert got.dtype == np.int32 and got.shape == (b,)
        for r in range(b):
            mask = probs_mask(
                pf[r],
                top_k=int(ks[r]) if "k" in which and ks[r] < v else 0,
                top_p=float(ps[r]) if "p" in which else 1.0,
                min_p=float(ms[r]) if "m" in which else 0.0,
                joint="j" in which,
            )
            want = draw(pf[r], mask, uniform_bits(int(seeds[r]), 0, 5))
            assert got[r] == want, f"{name} row {r}: got {got[r]}, reference {want}"


def test_scalar_seed_uses_the_row_as_subsequence_and_indices_map_rows(tier):
    rng = rng_for("indices")
    p = probs_rows(rng, 3, 50, "float32")
    ix = np.array([2, 0, 2, 1], dtype=np.int64)
    got = xpu_ops.sampling_from_probs(p, indices=ix, seed=99, offset=6)
    assert got.dtype == np.int64
    for b, r in enumerate(ix):
        assert got[b] == draw(p[r], np.ones(50, bool), uniform_bits(99, b, 6))


@pytest.mark.parametrize("order", ["top_k_first", "joint"])
def test_logits_samples_lie_in_the_mask_and_agree_across_tiers(order):
    rng = rng_for("logits", order)
    x = llm_logits(rng, 6, 3000)
    ks = rng.integers(1, 200, 6)
    ps = rng.uniform(0.3, 0.95, 6).astype(np.float32)
    seen = None
    for t in [t for t in ["generic", "avx2", "avx512"] if t in _tiers()]:
        xpu_ops.set_isa(t)
        got = np.stack([
            xpu_ops.top_k_top_p_sampling_from_logits(x, ks, ps, filter_apply_order=order, seed=s, offset=0)
            for s in range(20)
        ])
        xpu_ops.set_isa("auto")
        for r in range(6):
            mask = logits_mask(x[r], int(ks[r]), float(ps[r]), joint=order == "joint")
            assert mask[got[:, r]].all(), f"row {r}: {got[:, r]} outside the mask"
        if seen is not None:
            assert (got == seen).all(), f"tier {t} differs"
        seen = got


def _tiers():
    from conftest import available_tiers

    return available_tiers()


def test_frequencies_follow_the_renormalised_distribution():
    rng = rng_for("freq")
    x = rng.uniform(-2, 2, 16).astype(np.float32)
    n = 40000
    got = xpu_ops.top_k_top_p_sampling_from_logits(
        x[None, :], 8, 0.8, indices=np.zeros(n, np.int32), seed=7, offset=0)
    mask = logits_mask(x, 8, 0.8, slack=0.0)
    q = softmax64(x) * mask
    q /= q.sum()
    emp = np.bincount(got, minlength=16) / n
    assert (emp[~mask] == 0).all()
    assert 0.5 * np.abs(emp - q).sum() < 0.015


# --------------------------------------------------------------------------
# renorm / mask


@pytest.mark.parametrize("dt", list(DTYPES))
def test_renorm_and_mask(tier, dt):
    rng = rng_for("renorm", dt)
    p = probs_rows(rng, 4, 700, dt)
    pf = p.astype(np.float32)
    ks = np.array([1, 5, 100, 800])
    ps = np.array([0.2, 0.5, 0.9, 1.0], np.float32)
    for name, got, masks in [
        ("top_k", xpu_ops.top_k_renorm_probs(p, ks), [probs_mask(pf[r], top_k=int(ks[r])) for r in range(4)]),
        ("top_p", xpu_ops.top_p_renorm_probs(p, ps), [probs_mask(pf[r], top_p=float(ps[r])) for r in range(4)]),
    ]:
        assert got.dtype == p.dtype
        for r in range(4):
            want = np.where(masks[r], pf[r].astype(np.float64) / pf[r][masks[r]].astype(np.float64).sum(), 0)
            g = got[r].astype(np.float64)
            assert ((g == 0) == (want == 0)).all(), f"{name} row {r}: kept sets differ"
            ulp = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dt]
            assert np.all(np.abs(g - want) <= 2 * ulp * np.abs(want) + 1e-30), name
    x = llm_logits(rng, 3, 300).astype(DTYPES[dt])
    got = xpu_ops.top_k_mask_logits(x, 7)
    for r in range(3):
        xr = x[r].astype(np.float32)
        keep = xr >= np.sort(xr)[::-1][6]
        assert (got[r][keep] == x[r][keep]).all() and np.isneginf(got[r][~keep].astype(np.float32)).all()


# --------------------------------------------------------------------------
# vLLM


def vllm_penalties(x, prompt, output, pres, freq, rep, vocab):
    """vLLM's apply_penalties in float32 numpy (padding = vocab)."""
    x = x.copy()
    for b in range(x.shape[0]):
        counts = np.bincount(output[b][output[b] != vocab], minlength=vocab)
        seen = np.zeros(vocab, bool)
        seen[prompt[b][prompt[b] != vocab]] = True
        seen |= counts > 0
        r = np.float32(rep[b])
        x[b] = np.where(seen, np.where(x[b] > 0, x[b] / r, x[b] * r), x[b])
        x[b] = x[b] - np.float32(freq[b]) * counts.astype(np.float32)
        x[b] = x[b] - np.float32(pres[b]) * (counts > 0).astype(np.float32)
    return x


def test_apply_penalties_matches_vllm(tier):
    rng = rng_for("penalties")
    b, v = 4, 300
    x = llm_logits(rng, b, v)
    prompt = rng.integers(0, v + 1, (b, 6))
    output = rng.integers(0, v + 1, (b, 9))
    pres, freq = rng.uniform(-1, 1, b).astype(np.float32), rng.uniform(0, 1, b).astype(np.float32)
    rep = rng.uniform(0.5, 2, b).astype(np.float32)
    want = vllm_penalties(x, prompt, output, pres, freq, rep, v)
    got = xpu_ops.apply_penalties(x.copy(), prompt, output, pres, freq, rep)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_sampler_forward_greedy_logprobs_ranks(tier):
    rng = rng_for("sampler")
    b, v, n = 6, 2000, 5
    x = llm_logits(rng, b, v)
    temp = np.array([0.0, 0.7, 1.0, 0.0, 1.3, 0.5], np.float32)
    out = xpu_ops.sampler_forward(x, temperature=temp, top_k=np.array([0, 40, -1, 5, 100, 3]), top_p=0.9,
                                  min_p=0.02, seed=np.arange(b), offset=8, max_num_logprobs=n)
    ids = out.sampled_token_ids[:, 0]
    assert out.sampled_token_ids.shape == (b, 1) and out.sampled_token_ids.dtype == np.int32
    for r in np.flatnonzero(temp == 0):
        assert ids[r] == int(np.argmax(x[r]))
    lp = out.logprobs_tensors
    for r in range(b):
        ref = np.log(softmax64(x[r]))
        assert lp.logprob_token_ids[r, 0] == ids[r]
        order = np.lexsort((np.arange(v), -x[r].astype(np.float64)))[:n]
        assert (lp.logprob_token_ids[r, 1:] == order).all()
        want = ref[lp.logprob_token_ids[r]]
        assert np.all(np.abs(lp.logprobs[r] - want) <= 2e-7 + 2.0**-23 * np.abs(want))
        assert lp.selected_token_ranks[r] == int((x[r] >= x[r, ids[r]]).sum())
        if temp[r] > 0:
            y = x[r] / temp[r]
            k = int([0, 40, -1, 5, 100, 3][r])
            assert logits_mask(y, k if k > 0 else 0, 0.9, 0.02)[ids[r]]


def test_all_greedy_when_temperature_is_none(tier):
    x = llm_logits(rng_for("greedy"), 3, 100)
    out = xpu_ops.sampler_forward(x)
    assert (out.sampled_token_ids[:, 0] == x.argmax(1)).all() and out.logprobs_tensors is None


# --------------------------------------------------------------------------
# Bad input


def expect(status, needle, fn, *args, **kw):
    with pytest.raises(Error) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    assert needle in e.value.message, e.value.message


def test_bad_input_is_a_named_error_and_outputs_stay():
    p = np.full((2, 4), 0.25, np.float32)
    out = np.full(2, -9, np.int32)
    nan = p.copy()
    nan[1, 2] = np.nan
    expect(Status.INVALID_VALUE, "row 1 contains NaN", xpu_ops.sampling_from_probs, nan, seed=1, offset=0,
           out=out)
    half = p * 0.5
    expect(Status.INVALID_VALUE, "sums to 0.5", xpu_ops.top_p_sampling_from_probs, half, 0.5, seed=1,
           offset=0, out=out)
    expect(Status.INVALID_VALUE, "top_p", xpu_ops.top_p_sampling_from_probs, p, 1.5, seed=1, offset=0,
           out=out)
    expect(Status.INVALID_VALUE, "top_k", xpu_ops.top_k_sampling_from_probs, p, 0, seed=1, offset=0,
           out=out)
    expect(Status.INVALID_ARGUMENT, "filter_apply_order", xpu_ops.top_k_top_p_sampling_from_probs, p, 2, 0.5,
           filter_apply_order="both", seed=1, offset=0, out=out)
    expect(Status.INDEX_OUT_OF_RANGE, "indices", xpu_ops.sampling_from_probs, p,
           indices=np.array([0, 2], np.int32), seed=1, offset=0, out=out)
    assert (out == -9).all()
    x = np.zeros((2, 4), np.float32)
    expect(Status.INVALID_VALUE, "temperature", xpu_ops.sampler_forward, x, temperature=-1.0)
    expect(Status.INVALID_VALUE, "top_k[0] = -2", xpu_ops.sampler_forward, x, temperature=1.0, top_k=-2)
    expect(Status.INDEX_OUT_OF_RANGE, "output_token_ids[1, 0] = 9", xpu_ops.sampler_forward, x,
           temperature=1.0, output_token_ids=np.array([[1], [9]]), frequency_penalties=0.5)
    logits = x.copy()
    expect(Status.INDEX_OUT_OF_RANGE, "prompt_token_ids", xpu_ops.apply_penalties, logits,
           np.array([[7], [0]]), np.array([[4], [4]]), np.zeros(2, np.float32), np.zeros(2, np.float32),
           np.ones(2, np.float32))
    assert (logits == 0).all()
    r = np.full((2, 4), 5.0, np.float32)
    expect(Status.INVALID_VALUE, "NaN", xpu_ops.top_k_renorm_probs, nan, 2, out=r)
    assert (r == 5.0).all()
    with pytest.raises(TypeError):
        xpu_ops.sampling_from_probs(p, generator=object())
