"""xpu-ops sampling against a sort-based numpy sampler, in one process.

The baseline is vLLM's torch fallback written in numpy: sort the row
(argsort), mask below the k-th value, softmax, cumulative sum, mask the top-p
tail, draw. xpu-ops runs FlashInfer's `top_k_top_p_sampling_from_logits`
(sorting-free, one pass over the row) on one thread. Both see the same
LLM-like float32 logits; timings alternate per repetition and the table
reports medians per row and the ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 python/bench/sampling_baseline.py [--quick]

(OpenBLAS does not take part in argsort, but the variables are unset as
PERF.md asks for every numpy baseline.) The machine is shared: absolute
times drift; the ratio measured in the same run is the number to quote.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import xpu_ops  # noqa: E402


def llm_logits(rng, b, v):
    x = rng.normal(0, 2, (b, v)).astype(np.float32)
    for r in range(b):
        x[r, rng.integers(0, v, 5)] = rng.uniform(10, 16, 5).astype(np.float32)
    return x


def numpy_top_k_top_p(logits, k, p, u):
    """Sort-based top-k + top-p sampling (vLLM's apply_top_k_top_p + draw)."""
    idx = np.argsort(logits, axis=-1)  # ascending, the full sort
    srt = np.take_along_axis(logits, idx, axis=-1)
    v = logits.shape[-1]
    kth = srt[:, v - k][:, None]
    srt = np.where(srt < kth, -np.inf, srt)
    e = np.exp(srt - srt[:, -1:])
    probs = e / e.sum(-1, keepdims=True)
    cum = np.cumsum(probs, axis=-1)
    mask = cum <= 1 - p
    mask[:, -1] = False
    probs = np.where(mask, 0.0, probs)
    probs /= probs.sum(-1, keepdims=True)
    pick = (np.cumsum(probs, axis=-1) > u[:, None]).argmax(-1)
    return idx[np.arange(len(idx)), pick]


def median_time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="V = 151936 only, fewer repetitions")
    args = ap.parse_args()
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var} is set; run with env -u {var}")
    xpu_ops.set_num_threads(1)
    rng = np.random.default_rng(0)
    k, p = 20, 0.95
    print(f"xpu-ops {xpu_ops.version()} isa {xpu_ops.isa()}, 1 thread; numpy {np.__version__}")
    print("V       B   numpy us/row  xpu-ops us/row   ratio")
    vocabs = [151936] if args.quick else [151936, 248320]
    for v in vocabs:
        for b in (1, 8):
            x = llm_logits(rng, b, v)
            u = rng.uniform(0, 1, b)
            reps = 5 if args.quick else 9
            tn, tx = [], []
            for i in range(reps):  # alternate, same data
                tn.append(median_time(lambda: numpy_top_k_top_p(x, k, p, u), 1))
                tx.append(median_time(
                    lambda: xpu_ops.top_k_top_p_sampling_from_logits(x, k, p, seed=1, offset=4 * i), 25))
            n, o = float(np.median(tn)) / b, float(np.median(tx)) / b
            print(f"{v:<7} {b:<3} {n * 1e6:12.1f} {o * 1e6:15.1f} {n / o:7.0f}x")


if __name__ == "__main__":
    main()
