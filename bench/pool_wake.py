"""What a GEMM pays when the C pool's workers sleep: the time of one 128 x 128 x 256 GEMM
(2^22 multiply-adds, the smallest that wakes them) called after 20 ms idle, against the
same call made while they still spin from the previous one. The difference is the
wake-up. A call right after one that woke them should find them spinning. Back-to-back
calls before and after those idle periods should take the same time; they do not when the
kernel has put a worker on the caller's CPU (bench/README.md, "Thread pool").

    python bench/pool_wake.py [--threads 2] [--calls 50]

Prints medians in microseconds and the load average. Runs on any build of the library, so
two builds can be compared by running it in each.
"""
import argparse
import os
import statistics
import time

import numpy as np
from _args import positive


def timed(call):
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive(int), default=2)
    parser.add_argument("--calls", type=positive(int), default=50)
    args = parser.parse_args()
    import mlpfast as mf
    from mlpfast.kernels import gemm
    mf.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((128, 256), np.float32), rng.standard_normal((256, 128), np.float32)
    out = np.empty((128, 128), np.float32)

    def call():
        gemm.gemm_c(a, b, out)
    for _ in range(20):
        call()
    before_idle = [timed(call) for _ in range(args.calls)]
    after_sleep, right_after = [], []
    for _ in range(args.calls):
        time.sleep(0.02)                              # the workers spin 200 us, then sleep
        after_sleep.append(timed(call))
        right_after.append(timed(call))
    after_idle = [timed(call) for _ in range(args.calls)]
    print(f"{args.threads} threads, 128 x 128 x 256, median of {args.calls} calls:")
    for what, times in (("back to back, before any idle time", before_idle),
                        ("after 20 ms idle (workers asleep)", after_sleep),
                        ("the call right after that one", right_after),
                        ("back to back, after those idles", after_idle)):
        print(f"  {what:36s} {statistics.median(times):7.1f} us")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
