"""Side-by-side bf16 GEMM speed: mlpf_sbgemm against the fp32 C GEMM (mlpf_sgemm), one run.

    python bench/compare_gemm_bf16.py [--threads 1 2] [--rounds 7] [--kernels amx ...]
                                      [--cpu-time]

Shapes: 1024^3 and the GEMMs of the wide configuration (784-1024-1024-10, batch 256):
per layer the forward x W^T, the weight gradient dW = dz^T h and the input gradient
dx = dz W. Each shape runs as the fp32 C GEMM and as the bf16 GEMM with each bf16 kernel
asked for (default: all this CPU runs but the portable one), twice: from float32
operands (rounded while packed) and from bf16 operands (what training in bf16 passes:
weights rounded once per step, activations stored as bf16); the output is float32.
The variants take turns, round by round (the order rotates), each turn timing a block
of calls; the table gives the median over rounds of each turn's median call as
GFLOP/s = 2 m n k / time, the ratio to fp32, and fp32 as a share of the measured fp32
FMA peak (csrc/peak.c). Every variant is checked against the reference before it is
timed. The load average is printed before and after: on a shared machine, quote it.
--cpu-time times the one-thread runs by the CPU time of the calling thread (as
compare_gemm.py does): the time other jobs take the core away is left out.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive  # noqa: E402
from compare_gemm import (c_gemm_call, call_times, measured_peak,  # noqa: E402
                          one_blas_thread, operands)

# (label, m, n, k, trans_a, trans_b): op(A) is m x k, op(B) is k x n
SHAPES = [("1024^3", 1024, 1024, 1024, False, False)]
for n_in, n_out in ((784, 1024), (1024, 1024), (1024, 10)):
    SHAPES += [(f"fwd {n_in}->{n_out}", 256, n_out, n_in, False, True),
               (f"dW {n_out}x{n_in}", n_out, n_in, 256, True, False),
               (f"dx {n_out}->{n_in}", 256, n_in, n_out, False, False)]
PAUSE_SECONDS = 0.02


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def bf16_call(kernel, bf16_operands, m, n, k, trans_a, trans_b):
    """The bf16 GEMM with `kernel`, checked against sbgemm_ref (float32 sums of exact
    products: within k 2^-24 of max |A||B|)."""
    from mlpfast.kernels import gemm_bf16 as bf
    a, b = operands(m, n, k, trans_a, trans_b)
    if bf16_operands:
        a, b = bf.round_to_bf16(a), bf.round_to_bf16(b)
    out = np.empty((m, n), np.float32)
    bf.C_KERNELS.select(kernel)
    bf.sbgemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)
    with one_blas_thread():
        ref = bf.sbgemm_ref(a, b, trans_a=trans_a, trans_b=trans_b)
    scale = np.abs(bf._bf16_values(a)).max() * np.abs(bf._bf16_values(b)).max() * k
    if np.abs(out - ref).max() > k * 2.0 ** -24 * scale:
        raise SystemExit(f"bf16 GEMM {kernel} wrong at {m}x{n}x{k}")

    def call():
        bf.C_KERNELS.select(kernel)
        bf.sbgemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)
    return call


def compare(shapes, thread_counts, kernels, rounds, cpu_time=False):
    """Prints a row per shape and thread count; returns {(label, threads): {variant: GF/s}}."""
    import mlpfast
    results = {}
    variants = ["fp32"] + [f"{kernel} {src}" for kernel in kernels for src in ("f32", "bf16")]
    print(f"{'shape (m x k . k x n)':22s} {'th':>2s} {'fp32':>7s}"
          + "".join(f" {v:>16s}" for v in variants[1:]) + f" {'fp32/peak':>9s}")
    for threads in thread_counts:
        mlpfast.set_num_threads(threads)
        peak = measured_peak(threads)
        on_cpu = cpu_time and threads == 1
        clock = time.thread_time if on_cpu else time.perf_counter
        print(f"-- {threads} thread(s), {'thread CPU time' if on_cpu else 'wall clock'}; "
              f"measured fp32 FMA peak " + (f"{peak:.0f} GFLOP/s" if peak else "unavailable"),
              flush=True)
        for label, m, n, k, ta, tb in shapes:
            calls = {"fp32": c_gemm_call(m, n, k, ta, tb)}
            for variant in variants[1:]:
                kernel, src = variant.split()
                calls[variant] = bf16_call(kernel, src == "bf16", m, n, k, ta, tb)
            medians = {variant: [] for variant in variants}
            for r in range(rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for variant in order:
                    medians[variant].append(statistics.median(call_times(calls[variant],
                                                                         clock=clock)))
                    time.sleep(PAUSE_SECONDS)
            gflops = {v: 2.0 * m * n * k / statistics.median(t) / 1e9 for v, t in medians.items()}
            results[(label, threads)] = gflops
            fp32 = gflops["fp32"]
            cells = "".join(f" {gflops[v]:8.0f} ({gflops[v] / fp32:4.1f}x)" for v in variants[1:])
            of_peak = f"{100 * fp32 / peak:8.0f}%" if peak else "        -"
            print(f"{label:22s} {threads:2d} {fp32:7.0f}{cells} {of_peak}", flush=True)
    return results


def main():
    from mlpfast.kernels import gemm, gemm_bf16
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive(int), default=7)
    parser.add_argument("--kernels", nargs="+",
                        default=[k for k in gemm_bf16.C_KERNELS.supported() if k != "portable"])
    parser.add_argument("--cpu-time", action="store_true",
                        help="time 1-thread runs by thread CPU time (on a shared machine)")
    args = parser.parse_args()
    print(f"fp32 kernel {gemm.c_kernel_name()}; bf16 kernels {args.kernels}; median of "
          f"{args.rounds} interleaved rounds; load average {load_average()}")
    results = compare(SHAPES, args.threads, args.kernels, args.rounds, args.cpu_time)
    if (SHAPES[0][0], 2) in results:
        gflops = results[(SHAPES[0][0], 2)]
        best = max((v for v in gflops if v != "fp32"), key=gflops.get)
        print(f"issue 20's bar, bf16 >= 1.7x fp32 at 1024^3 on 2 threads: {best} "
              f"{gflops[best] / gflops['fp32']:.2f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
