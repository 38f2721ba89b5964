"""Side-by-side sgemm speed: mlpfast's C GEMM against NumPy's OpenBLAS (and, with --mkl,
Intel MKL through PyTorch), in one run.

    python bench/compare_gemm.py [--threads 1 2] [--rounds 7] [--quick] [--cpu-time] [--mkl]

The C GEMM is timed in this process. OpenBLAS is timed in a peer subprocess started
with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its environment (this
environment sets them, and they slow OpenBLAS down); the peer checks with threadpoolctl
that OpenBLAS runs its SkylakeX kernels. --mkl adds a second peer process that times
``torch.matmul(a, b, out=c)`` of a PyTorch built with MKL (it checks that torch says
BLAS_INFO=mkl; torch.set_num_threads sets its threads). The sides take turns shape by
shape, round by round (the order rotates), with a pause between turns so that no side's
spinning threads steal another's cores. Each turn times a block of calls; the table
gives the median over rounds of each turn's median call, as GFLOP/s = 2 m n k / time,
and the ratio C / peer; then the same from each side's fastest call ("max": what the
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

from _args import positive

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


def one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread: for the reference products that
    check results before timing. OpenBLAS's threads spin for a while after a call, and on
    2 cores they would take the cores from whatever is timed next (the first turn of the C
    GEMM ran at half speed, a fused Linear call at 4 ms instead of 0.3 ms)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def reference_product(op_a, op_b):
    """op_a @ op_b in float64 (NumPy, one BLAS thread)."""
    with one_blas_thread():
        return op_a.astype(np.float64) @ op_b


def check_product(out, op_a, op_b, who):
    """Exits naming ``who`` unless out = op_a @ op_b within 1e-5 of the largest |value| (a
    NaN in out fails too)."""
    ref = reference_product(op_a, op_b)
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), np.finfo(np.float32).tiny)
    if not err <= 1e-5:
        raise SystemExit(f"{who} wrong: rel err {err}")


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


# --- the peers: NumPy/OpenBLAS or PyTorch/MKL, each in its own process ----------------

PEER_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL"}


def _openblas_matmul():
    """(info, set_threads, matmul) of NumPy's OpenBLAS: matmul(a, b, out) = a @ b into out."""
    from threadpoolctl import threadpool_info, threadpool_limits
    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)
    blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    limits = []                                # the threadpool_limits object in force

    def set_threads(threads):
        limits[:] = [threadpool_limits(threads, user_api="blas")]

    return ({"blas": blas, "numpy": np.__version__}, set_threads,
            lambda a, b, out: np.matmul(a, b, out=out))


def _mkl_matmul():
    """(info, set_threads, matmul) of PyTorch's CPU matmul (MKL's sgemm in an MKL build),
    on tensors sharing the NumPy arrays' memory."""
    import torch
    config = torch.__config__.show()
    info = {"blas": "mkl" if "BLAS_INFO=mkl" in config else "not mkl",
            "torch": torch.__version__}

    def matmul(a, b, out):
        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        torch.matmul(ta, tb, out=tout)

    return info, torch.set_num_threads, matmul


def peer_main(kind):
    info, set_threads, matmul = (_openblas_matmul if kind == "openblas" else _mkl_matmul)()
    print(json.dumps(info), flush=True)
    threads = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["threads"] != threads:
            threads = req["threads"]
            set_threads(threads)
        a, b = operands(req["m"], req["n"], req["k"], req["trans_a"], req["trans_b"])
        op_a, op_b = (a.T if req["trans_a"] else a), (b.T if req["trans_b"] else b)
        out = np.empty((req["m"], req["n"]), np.float32)
        matmul(op_a, op_b, out)
        check_product(out, op_a, op_b, f"{kind} peer at {req}")
        clock = time.thread_time if req.get("cpu_time") else time.perf_counter
        times = call_times(lambda: matmul(op_a, op_b, out), clock=clock)
        print(json.dumps({"seconds": statistics.median(times), "fastest": min(times)}),
              flush=True)


class Peer:
    """A peer process timing one library's sgemm: kind "openblas" (NumPy) or "mkl"
    (PyTorch)."""

    def __init__(self, kind="openblas"):
        env = {key: value for key, value in os.environ.items() if key not in PEER_UNSET}
        self.name = PEER_NAMES[kind]
        self.proc = subprocess.Popen([sys.executable, __file__, "--peer", kind], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} peer did not start (is "
                             + ("torch" if kind == "mkl" else "threadpoolctl")
                             + " installed?)")
        self.info = json.loads(line)
        if kind == "mkl":
            if self.info["blas"] != "mkl":
                raise SystemExit(f"peer PyTorch was not built with MKL: {self.info}")
            return
        archs = {blas.get("architecture") for blas in self.info["blas"]}
        if archs != {"SkylakeX"}:
            raise SystemExit(f"peer OpenBLAS runs {archs}, expected SkylakeX: {self.info}")

    def time(self, threads, m, n, k, trans_a, trans_b, cpu_time=False, fastest=False):
        """Median seconds of one call over a turn; with fastest=True, (median, fastest)."""
        self.proc.stdin.write(json.dumps({"threads": threads, "m": m, "n": n, "k": k,
                                          "trans_a": trans_a, "trans_b": trans_b,
                                          "cpu_time": cpu_time}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} peer stopped at {m}x{n}x{k} (its error is above)")
        reply = json.loads(line)
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
    check_product(out, a.T if trans_a else a, b.T if trans_b else b,
                  f"C GEMM at {m}x{n}x{k} trans {trans_a},{trans_b}")
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


def compare(shapes, thread_counts, rounds, cpu_time=False, peer_kinds=("openblas",)):
    """Rows (label, threads, C GF/s, C fastest GF/s, {peer name: (GF/s, fastest GF/s)},
    peak GF/s): medians over rounds of each turn's median call, and each side's fastest
    call. cpu_time: time one-thread runs by thread CPU time (wall clock for more threads)."""
    import mlpfast
    peers = []
    rows = []
    try:
        for kind in peer_kinds:
            peers.append(Peer(kind))
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
                # per side: (turn median, turn's fastest call) of each round
                results = {side: [] for side in ["C"] + [peer.name for peer in peers]}

                def our_turn():
                    times = call_times(call, clock=clock)
                    results["C"].append((statistics.median(times), min(times)))

                def peer_turn(peer):
                    return lambda: results[peer.name].append(
                        peer.time(threads, m, n, k, ta, tb, on_cpu, fastest=True))

                turns = [our_turn] + [peer_turn(peer) for peer in peers]
                for r in range(rounds):
                    shift = r % len(turns)
                    for turn in turns[shift:] + turns[:shift]:
                        turn()
                        time.sleep(PAUSE_SECONDS)
                flops = 2.0 * m * n * k
                speeds = {side: (flops / statistics.median(t[0] for t in turns_) / 1e9,
                                 flops / min(t[1] for t in turns_) / 1e9)
                          for side, turns_ in results.items()}
                c_gf, c_best = speeds.pop("C")
                rows.append((label, threads, c_gf, c_best, speeds, peak))
                medians = "".join(f" {gf:8.1f} {c_gf / gf:6.2f}" for gf, _ in speeds.values())
                fastest = "".join(f" {best:8.1f} {c_best / best:6.2f}"
                                  for _, best in speeds.values())
                of_peak = f"{100 * c_gf / peak:5.0f}%" if peak else "     -"
                print(f"{label:28s} {threads:2d} {c_gf:8.1f}{medians}   {c_best:8.1f}{fastest}"
                      f" {of_peak}", flush=True)
    finally:
        for peer in peers:
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

    expected = np.maximum(reference_product(x, w.T) + b, 0)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive(int), default=7)
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time 1-thread runs by thread CPU time (on a shared machine)")
    parser.add_argument("--mkl", action="store_true",
                        help="also time MKL's sgemm through PyTorch (needs an MKL build of torch)")
    parser.add_argument("--peer", choices=PEER_NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer_main(args.peer)
    from mlpfast.kernels import gemm
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    kinds = ("openblas", "mkl") if args.mkl else ("openblas",)
    print(f"C kernel {gemm.c_kernel_name()}; peer NumPy/OpenBLAS with {PEER_UNSET} unset"
          + ("; peer PyTorch/MKL" if args.mkl else "")
          + f"; median of {args.rounds} interleaved rounds; ratio = C / peer")
    names = [PEER_NAMES[kind] for kind in kinds]
    print(f"{'shape (m x k . k x n)':28s} {'th':>2s} {'C GF/s':>8s}"
          + "".join(f" {name:>8s} {'ratio':>6s}" for name in names)
          + f"   {'C max':>8s}" + "".join(f" {name[:3] + ' max':>8s} {'ratio':>6s}" for name in names)
          + f" {'C/peak':>6s}")
    compare(shapes, args.threads, args.rounds, args.cpu_time, kinds)
    for threads in args.threads:
        for batch, n_in, n_out in LINEAR_LAYERS:
            clock = time.thread_time if args.cpu_time and threads == 1 else time.perf_counter
            fused, separate = fused_vs_separate(threads, args.rounds, batch, n_in, n_out, clock)
            print(f"linear relu forward {batch}x{n_in} -> {n_out}, {threads} thread(s): fused "
                  f"{fused * 1e3:.3f} ms, C GEMM + separate bias/relu {separate * 1e3:.3f} ms "
                  f"(fused {separate / fused:.2f}x faster)", flush=True)


if __name__ == "__main__":
    main()
