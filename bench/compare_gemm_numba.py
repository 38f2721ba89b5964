"""Side-by-side sgemm speed: mlpfast's Numba GEMM (and C GEMM) against OpenBLAS, one run.

    python bench/compare_gemm_numba.py [--threads 1 2] [--rounds 7] [--quick]

Uses the machinery of compare_gemm.py: OpenBLAS runs in a peer process with
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset (checked to run its SkylakeX kernels); ours
run in this process; the sides take turns shape by shape, round by round. The table
gives GFLOP/s = 2 m n k / median time, and Numba / OpenBLAS. Each variant is checked
against a float64 product before it is timed.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive  # noqa: E402
from compare_gemm import (PAUSE_SECONDS, QUICK, SHAPES, Peer, check_product,  # noqa: E402
                          operands, time_calls)


def variant_call(variant, m, n, k, trans_a, trans_b):
    from mlpfast.kernels import gemm
    fn = gemm.VARIANTS[variant]
    a, b = operands(m, n, k, trans_a, trans_b)
    out = np.empty((m, n), np.float32)
    fn(a, b, out, trans_a=trans_a, trans_b=trans_b)
    check_product(out, a.T if trans_a else a, b.T if trans_b else b,
                  f"{variant} GEMM at {m}x{n}x{k} trans {trans_a},{trans_b}")
    return lambda: fn(a, b, out, trans_a=trans_a, trans_b=trans_b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive(int), default=7)
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    args = parser.parse_args()
    import mlpfast
    from mlpfast.kernels import gemm
    ours = [v for v in ("numba", "c") if v in gemm.VARIANTS]
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    print(f"peer NumPy/OpenBLAS with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset; "
          f"median of {args.rounds} interleaved rounds; GFLOP/s; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'shape (m x k . k x n)':28s} {'th':>2s} " + " ".join(f"{v:>8s}" for v in ours)
          + f" {'OpenBLAS':>8s} {'numba/OB':>8s}")
    peer = Peer()
    try:
        for threads in args.threads:
            mlpfast.set_num_threads(threads)
            for label, m, n, k, ta, tb in shapes:
                calls = {v: variant_call(v, m, n, k, ta, tb) for v in ours}
                times = {v: [] for v in ours + ["openblas"]}
                turns = [(v, (lambda c=c: time_calls(c))) for v, c in calls.items()]
                turns.append(("openblas", lambda: peer.time(threads, m, n, k, ta, tb)))
                for r in range(args.rounds):
                    order = turns if r % 2 == 0 else turns[::-1]
                    for name, turn in order:
                        times[name].append(turn())
                        time.sleep(PAUSE_SECONDS)
                gf = {v: 2.0 * m * n * k / statistics.median(t) / 1e9 for v, t in times.items()}
                print(f"{label:28s} {threads:2d} " + " ".join(f"{gf[v]:8.1f}" for v in ours)
                      + f" {gf['openblas']:8.1f} {gf['numba'] / gf['openblas']:8.2f}", flush=True)
    finally:
        peer.close()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
