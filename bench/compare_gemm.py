"""Side-by-side sgemm speed: mlpfast's C GEMM against NumPy's OpenBLAS, in one run.

    python bench/compare_gemm.py [--threads 1 2] [--rounds 7] [--quick] [--cpu-time]

The C GEMM is timed in this process. OpenBLAS is timed in a peer subprocess started
with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its environment (this
environment sets them, and they slow OpenBLAS down); the peer checks with threadpoolctl
that OpenBLAS runs its SkylakeX kernels. The two take turns shape by shape, round by
round (who goes first alternates), with a pause between turns so that neither side's
spinning threads steal the other's cores. Each turn times a block of calls; the table
gives the median over rounds of each turn's median call, as GFLOP/s = 2 m n k / time,
and the ratio C / OpenBLAS; then the same from each side's fastest call ("max": what the
cores do while no other job runs on them, the figure least disturbed by a busy machine);
and the C GEMM's median as a fraction of the fp32 FMA peak measured by csrc/peak.c.
Results are checked against NumPy before timing.

--cpu-time times the one-thread runs of both sides by the CPU time of the calling thread
instead of the wall clock: on a machine shared with other jobs, that leaves out the time
they take the core away (their cache pollution stays in).

The fused Linear forward (GEMM + bias + relu in one pass) is also timed against the
same GEMM followed by a separate bias + relu pass.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# (label, m, n, k, trans_a, trans_b): op(A) is m x k, op(B) is k x n.
# The MLP layers x (B, in) -> (B, out) with W (out, in): forward X W^T (B transposed),
# grad_x = dY W (plain), grad_W = dY^T X (A transposed). The wide configuration
# (784-1024-1024-10 at batch 256) runs 256x1024.1024x1024 (its dx), both "fwd" and both
# "dW" rows from 256x1024 on, besides its 10-wide layer.
SHAPES = [
    ("256^3", 256, 256, 256, False, False),
    ("1024^3", 1024, 1024, 1024, False, False),
    ("2048^3", 2048, 2048, 2048, False, False),
    ("128x784.784x512", 128, 512, 784, False, False),
    ("128x784.(512x784)^T fwd", 128, 512, 784, False, True),
    ("(784x128)^T.784x512", 128, 512, 784, True, False),
    ("dX 128x512.512x784", 128, 784, 512, False, False),
    ("dW (128x512)^T.128x784", 512, 784, 128, True, False),
    ("256x1024.1024x1024", 256, 1024, 1024, False, False),
    ("256x1024.(1024x1024)^T fwd", 256, 1024, 1024, False, True),
    ("(1024x256)^T.1024x1024", 256, 1024, 1024, True, False),
    ("dW (256x1024)^T.256x1024", 1024, 1024, 256, True, False),
    ("256x784.(1024x784)^T fwd", 256, 1024, 784, False, True),
    ("dW (256x1024)^T.256x784", 1024, 784, 256, True, False),
]
QUICK = {"1024^3", "128x784.(512x784)^T fwd", "256x1024.(1024x1024)^T fwd"}
PEER_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
TURN_SECONDS = 0.15          # work per turn
PAUSE_SECONDS = 0.15         # between turns: OpenBLAS threads spin ~0.1 s after a call


def operands(m, n, k, trans_a, trans_b, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b


def call_times(call, seconds=TURN_SECONDS, clock=time.perf_counter):
    """Seconds of each call of a block of about `seconds` (at least 3 calls), after one
    untimed call. clock=time.thread_time counts only the CPU time of the calling thread
    (for one thread: the time the machine's other jobs take from the core is left out)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(max(3, int(seconds / max(first, 1e-6)))):
        start = clock()
        call()
        times.append(clock() - start)
    return times


def time_calls(call, seconds=TURN_SECONDS, clock=time.perf_counter):
    """Median seconds of one call over a block of about `seconds` (see call_times)."""
    return statistics.median(call_times(call, seconds, clock))


# --- the peer: NumPy/OpenBLAS in its own process -------------------------------------

def peer_main():
    from threadpoolctl import threadpool_info, threadpool_limits
    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)
    blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    print(json.dumps({"blas": blas, "numpy": np.__version__}), flush=True)
    limits = None
    for line in sys.stdin:
        req = json.loads(line)
        if limits is None or req["threads"] != limits[0]:
            limits = (req["threads"], threadpool_limits(req["threads"], user_api="blas"))
        a, b = operands(req["m"], req["n"], req["k"], req["trans_a"], req["trans_b"])
        op_a, op_b = (a.T if req["trans_a"] else a), (b.T if req["trans_b"] else b)
        out = np.empty((req["m"], req["n"]), np.float32)
        clock = time.thread_time if req.get("cpu_time") else time.perf_counter
        times = call_times(lambda: np.matmul(op_a, op_b, out=out), clock=clock)
        print(json.dumps({"seconds": statistics.median(times), "fastest": min(times)}),
              flush=True)


class Peer:
    def __init__(self):
        env = {key: value for key, value in os.environ.items() if key not in PEER_UNSET}
        self.proc = subprocess.Popen([sys.executable, __file__, "--peer"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())
        archs = {blas.get("architecture") for blas in self.info["blas"]}
        if archs != {"SkylakeX"}:
            raise SystemExit(f"peer OpenBLAS runs {archs}, expected SkylakeX: {self.info}")

    def time(self, threads, m, n, k, trans_a, trans_b, cpu_time=False, fastest=False):
        """Median seconds of one call over a turn; with fastest=True, (median, fastest)."""
        self.proc.stdin.write(json.dumps({"threads": threads, "m": m, "n": n, "k": k,
                                          "trans_a": trans_a, "trans_b": trans_b,
                                          "cpu_time": cpu_time}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return (reply["seconds"], reply["fastest"]) if fastest else reply["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# --- ours ----------------------------------------------------------------------------

def c_gemm_call(m, n, k, trans_a, trans_b):
    from mlpfast.kernels import gemm
    a, b = operands(m, n, k, trans_a, trans_b)
    out = np.empty((m, n), np.float32)
    gemm.gemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    if err > 1e-5:
        raise SystemExit(f"C GEMM wrong at {m}x{n}x{k} trans {trans_a},{trans_b}: rel err {err}")
    return lambda: gemm.gemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)


def measured_peak(threads, tries=12):
    """fp32 FMA peak of `threads` threads in GFLOP/s (csrc/peak.c), or None: the best of
    short 2 ms probes after short sleeps, i.e. what the cores do while nothing else runs
    on them (on a shared machine, longer probes measure the share we get)."""
    try:
        from mlpfast import _peak
    except ImportError:
        return None
    best = 0.0
    for _ in range(tries):
        time.sleep(0.03)
        best = max(best, _peak.lib.mlpf_fma_peak_gflops(threads, 2))
    return best or None


def compare(shapes, thread_counts, rounds, cpu_time=False):
    """Rows (label, threads, C GF/s, OpenBLAS GF/s, C fastest, OpenBLAS fastest, peak GF/s):
    medians over rounds of each turn's median call, and each side's fastest call.
    cpu_time: time one-thread runs by thread CPU time (wall clock for more threads)."""
    import mlpfast
    peer = Peer()
    rows = []
    try:
        for threads in thread_counts:
            mlpfast.set_num_threads(threads)
            peak = measured_peak(threads)
            clock_name = "thread CPU time" if cpu_time and threads == 1 else "wall clock"
            print(f"-- {threads} thread(s), {clock_name}; "
                  f"measured fp32 FMA peak "
                  + (f"{peak:.0f} GFLOP/s" if peak else "unavailable"), flush=True)
            for label, m, n, k, ta, tb in shapes:
                call = c_gemm_call(m, n, k, ta, tb)
                on_cpu = cpu_time and threads == 1
                clock = time.thread_time if on_cpu else time.perf_counter
                ours, theirs = [], []              # (turn median, turn's fastest call)

                def our_turn():
                    times = call_times(call, clock=clock)
                    ours.append((statistics.median(times), min(times)))

                for r in range(rounds):
                    turns = [our_turn, lambda: theirs.append(
                        peer.time(threads, m, n, k, ta, tb, on_cpu, fastest=True))]
                    for turn in (turns if r % 2 == 0 else turns[::-1]):
                        turn()
                        time.sleep(PAUSE_SECONDS)
                flops = 2.0 * m * n * k
                c_gf, blas_gf = (flops / statistics.median(t[0] for t in turns_) / 1e9
                                 for turns_ in (ours, theirs))
                c_best, blas_best = (flops / min(t[1] for t in turns_) / 1e9
                                     for turns_ in (ours, theirs))
                rows.append((label, threads, c_gf, blas_gf, c_best, blas_best, peak))
                of_peak = f"{100 * c_gf / peak:5.0f}%" if peak else "     -"
                print(f"{label:28s} {threads:2d} {c_gf:8.1f} {blas_gf:8.1f} {c_gf / blas_gf:6.2f}"
                      f"   {c_best:8.1f} {blas_best:8.1f} {c_best / blas_best:6.2f} {of_peak}",
                      flush=True)
    finally:
        peer.close()
    return rows


def fused_vs_separate(threads, rounds, batch, n_in, n_out, clock=time.perf_counter):
    """Linear forward y = relu(x W^T + b): one fused C call vs C GEMM then bias + relu.
    Returns the median seconds of each, timed in alternating turns."""
    import mlpfast
    from mlpfast.kernels import gemm
    mlpfast.set_num_threads(threads)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    b = rng.standard_normal(n_out, dtype=np.float32)
    y = np.empty((batch, n_out), np.float32)

    def fused():
        gemm.gemm_c_fused(x, w, y, False, True, 1.0, 0.0, b, 1)

    def separate():
        gemm.gemm_c(x, w, y, trans_b=True)
        np.add(y, b, out=y)
        np.maximum(y, 0, out=y)

    expected = np.maximum(x.astype(np.float64) @ w.T + b, 0)
    for fn in (fused, separate):
        y[...] = np.nan
        fn()
        assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max()
    f, s = [], []
    for _ in range(rounds):
        f.append(time_calls(fused, clock=clock))
        s.append(time_calls(separate, clock=clock))
    return statistics.median(f), statistics.median(s)


# (batch, in, out): the layers and hidden layers of the reference MLPs
LINEAR_LAYERS = [(128, 784, 512), (256, 1024, 1024), (64, 784, 256), (256, 256, 128)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time 1-thread runs by thread CPU time (on a shared machine)")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer_main()
    from mlpfast.kernels import gemm
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    print(f"C kernel {gemm.c_kernel_name()}; peer NumPy/OpenBLAS with {PEER_UNSET} unset; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'shape (m x k . k x n)':28s} {'th':>2s} {'C GF/s':>8s} {'OpenBLAS':>8s} {'ratio':>6s}"
          f"   {'C max':>8s} {'OB max':>8s} {'ratio':>6s} {'C/peak':>6s}")
    compare(shapes, args.threads, args.rounds, args.cpu_time)
    for threads in args.threads:
        for batch, n_in, n_out in LINEAR_LAYERS:
            clock = time.thread_time if args.cpu_time and threads == 1 else time.perf_counter
            fused, separate = fused_vs_separate(threads, args.rounds, batch, n_in, n_out, clock)
            print(f"linear relu forward {batch}x{n_in} -> {n_out}, {threads} thread(s): fused "
                  f"{fused * 1e3:.3f} ms, C GEMM + separate bias/relu {separate * 1e3:.3f} ms "
                  f"(fused {separate / fused:.2f}x faster)", flush=True)


if __name__ == "__main__":
    main()
