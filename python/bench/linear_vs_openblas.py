"""xpu-ops linear vs OpenBLAS sgemm (numpy), side by side in one process,
alternating, on the PERF.md GEMM shapes; prints GFLOP/s and ratios.

    python python/bench/linear_vs_openblas.py [--threads N] [--quick]

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE force OpenBLAS onto its AVX2 kernels on
these machines, so the script re-executes itself without them (and with
OPENBLAS_NUM_THREADS = --threads) before numpy is imported. Timings are the
best of several alternating rounds; on a shared machine, compare the ratios.
"""

import argparse
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--quick", action="store_true", help="a few shapes only")
ap.add_argument("--rounds", type=int, default=5)
args = ap.parse_args()

_env_ok = (
    "OPENBLAS_CORETYPE" not in os.environ
    and "OPENBLAS_L2_SIZE" not in os.environ
    and os.environ.get("OPENBLAS_NUM_THREADS") == str(args.threads)
)
if not _env_ok:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import xpu_ops  # noqa: E402

xpu_ops.set_num_threads(args.threads)

KN = [(2048, 12288), (2048, 64), (4096, 2048), (2048, 8192), (2048, 512)]
MS = [1, 4, 16, 64, 256, 1024]
if args.quick:
    KN, MS = [(4096, 2048)], [1, 16, 512]


def best(f, rounds):
    t = float("inf")
    for _ in range(rounds):
        s = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - s)
    return t


print(f"xpu-ops {xpu_ops.version()} ({xpu_ops.isa()}), numpy {np.__version__}, {args.threads} thread(s)")
print(f"{'M':>5} {'K':>5} {'N':>6} | {'openblas f32':>12} | {'ours f32':>9} {'ratio':>6} | {'packed f32':>10} {'ratio':>6} "
      f"| {'ours bf16':>9} {'vs f32 BLAS':>11} | {'packed bf16':>11} {'vs f32 BLAS':>11}  (GFLOP/s)")
shapes = [(m, k, n) for (k, n) in KN for m in MS] + [(512, 4096, 4096)]
for m, k, n in shapes:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    xb, wb = x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
    y, yb = np.empty((m, n), np.float32), np.empty((m, n), ml_dtypes.bfloat16)
    wt = w.T
    pw, pwb = xpu_ops.PackedLinearWeight(w), xpu_ops.PackedLinearWeight(wb)  # packed once, as at load
    rounds = args.rounds if m * n * k < 2**32 else 3
    t_blas = t_ours = t_pack = t_bf16 = t_pbf16 = float("inf")
    for _ in range(2):  # alternate: BLAS, ours (plain, packed) f32, bf16, twice
        t_blas = min(t_blas, best(lambda: np.matmul(x, wt, out=y), rounds))
        t_ours = min(t_ours, best(lambda: xpu_ops.linear(x, w, out=y), rounds))
        t_pack = min(t_pack, best(lambda: xpu_ops.linear_packed(x, pw, out=y), rounds))
        t_bf16 = min(t_bf16, best(lambda: xpu_ops.linear(xb, wb, out=yb), rounds))
        t_pbf16 = min(t_pbf16, best(lambda: xpu_ops.linear_packed(xb, pwb, out=yb), rounds))
    fl = 2.0 * m * n * k / 1e9
    print(f"{m:5d} {k:5d} {n:6d} | {fl / t_blas:12.1f} | {fl / t_ours:9.1f} {t_blas / t_ours:6.2f} | "
          f"{fl / t_pack:10.1f} {t_blas / t_pack:6.2f} | {fl / t_bf16:9.1f} {t_blas / t_bf16:11.2f} | "
          f"{fl / t_pbf16:11.1f} {t_blas / t_pbf16:11.2f}")
