"""Where the cpu backend's compiled training step spends its time, job by job: every GEMM
and pass of the C thread pool traced (mlpfast.benchmarks.pool_trace) while the step of
bench/step_variants.py (real MNIST, Adam, cross-entropy, ReLU) runs.

    python bench/pool_trace.py [--config wide|b64|b256|"SIZES bBATCH"] [--seconds 20]
                               [--threads 2] [--samples 8192] [--rounds]

Runs the step over the first --samples training images again and again for --seconds after
a warm-up run. The default 8,192 images (25 MB) stay mostly in L3; --samples 60000 reads
the batches' rows from memory, as training on all of MNIST does. Prints each job of a step
in order (the most common sequence): its task, its threads, the medians in microseconds of
the caller's share, of the slowest other thread's share, of the caller's wait for the
others ("join") and of the time before the next job ("gap": Numba and Python between the
pool's jobs); then the step's total. GEMMs and passes below the pool's thresholds run on the
caller alone and show 1 thread. With --rounds, a line per run of --samples images: its
samples/s and the milliseconds of each task, so that a slow spell of a shared machine shows
which jobs it slows.
"""
import argparse
import time

import numpy as np
from _args import positive

from step_variants import CONFIGS, SAMPLES, compiled_steps, config_arg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=config_arg, default="wide",
                        help=f"{', '.join(CONFIGS)} or an MNIST network and batch such as "
                             f"'784-300-100-10 b32' (default wide)")
    parser.add_argument("--seconds", type=positive(float), default=20.0)
    parser.add_argument("--threads", type=positive(int), default=2)
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help="training images the step runs over (at most 60,000)")
    parser.add_argument("--rounds", action="store_true", help="a line per run of --samples")
    args = parser.parse_args()
    sizes, batch = args.config
    if not batch <= args.samples <= 60000:
        parser.error(f"--samples must lie in [{batch}, 60000], got {args.samples}")
    import mlpfast as mf
    from mlpfast.benchmarks.pool_trace import PoolTrace, step_table, task_totals
    mf.set_num_threads(args.threads)
    (x, y), _ = mf.datasets.mnist()
    samples = args.samples
    step = compiled_steps(mf, sizes, batch, x[:samples], y[:samples], ["plain"])["plain"]
    order = np.random.default_rng(0).permutation(samples).astype(np.int64)
    batches = samples // batch

    def run():
        step.run(order, 0, batches, np.full(batches, 1e-4), np.zeros(2))

    run()                                                     # compiles, warms up
    runs = []                                                 # (start, end) in us
    with PoolTrace() as trace:
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            start = time.monotonic()
            run()
            runs.append((start * 1e6, time.monotonic() * 1e6))
    if trace.full:
        print(f"(the trace ran full at {trace.capacity} jobs: later steps not traced)")
    rows, steps, step_us = step_table(trace.jobs)
    print(f"{'-'.join(map(str, sizes))} b{batch}, {args.threads} threads: {steps} steps, "
          f"median step {step_us:,.1f} us ({batch / step_us * 1e6:,.0f} samples/s)")
    print(f"  {'job':>3} {'task':<20} {'threads':>7} {'caller':>9} {'others':>9} {'join':>7} "
          f"{'gap':>7}")
    for i, row in enumerate(rows):
        print(f"  {i:>3} {row.task:<20} {row.threads:>7} {row.caller:>9.1f} {row.others:>9.1f} "
              f"{row.join:>7.1f} {row.gap_after:>7.1f}")
    in_jobs = sum(max(row.caller, row.others) + row.join for row in rows)
    gaps = sum(row.gap_after for row in rows)
    print(f"  in jobs {in_jobs:,.1f} us, gaps {gaps:,.1f} us (medians, so the sum need not "
          f"equal the step)")
    if args.rounds:
        for start, end in runs:
            totals = task_totals(trace.jobs, start, end)
            outside = (end - start) - sum(totals.values())
            print(f"  {batches * batch / (end - start) * 1e6:>9,.0f} samples/s  " +
                  "  ".join(f"{task} {us / 1e3:.1f}" for task, us in sorted(totals.items())) +
                  f"  outside jobs {outside / 1e3:.1f} ms")
    with open("/proc/loadavg") as f:
        print("  load average", " ".join(f.read().split()[:3]))


if __name__ == "__main__":
    main()
