"""Memory-bound kernels against a STREAM-like copy, side by side in one run.

    python bench/compare_bandwidth.py [--mib 64] [--threads 1 2] [--rounds 5] [--variant numba]

Every array is --mib MiB of float32 (default 64 MiB: far past the 2 MiB L2 of a core;
note that this machine's 260 MiB L3 still holds a few of them). For each kernel the
bytes it must move (each input read once, each output written once) are divided by the
median time: GB/s. "copy" is out[:] = x[:] (NumPy's copyto and a parallel Numba loop,
the faster one counts); the last column is kernel GB/s / copy GB/s. Each kernel is
checked against its NumPy reference (on a slice) before timing. Rounds interleave the
kernels, so that a noisy neighbour slows all of them alike.
"""
import argparse
import os
import statistics

import numpy as np
from _args import positive

import mlpfast  # before Numba compiles anything (or even defines a cached function): it
# asks Numba for 512-bit vectors, fixed from then on (kernels/_numba_config.py); imported
# after numba, the kernels here ran as 256-bit code (softmax 0.51 instead of 0.73 of copy)
from numba import njit, prange  # noqa: E402


@njit(parallel=True, cache=True)
def _copy(x, out):
    for i in prange(x.shape[0]):
        out[i] = x[i]


def cases(variant, n, rng):
    """[(name, call, bytes moved, check)]: check() compares with the reference."""
    from mlpfast.kernels import _numba_config, activations, data, linear, losses, optim
    acts = activations.VARIANTS[variant]
    ref_acts = activations.REFERENCE
    cols = 1024
    rows = n // cols
    f32 = np.float32
    x = rng.standard_normal((rows, cols)).astype(f32)
    g = rng.standard_normal((rows, cols)).astype(f32)
    out = np.empty_like(x)
    flat = lambda a: a.reshape(-1)  # noqa: E731
    x1, out1 = flat(x), flat(out)
    item = 4
    labels = rng.integers(0, cols, rows)
    index = rng.permutation(rows)
    lin = linear.VARIANTS[variant]
    opt = optim.VARIANTS[variant]
    loss = losses.VARIANTS[variant]
    gather = data.VARIANTS[variant]["gather"]
    p, m, v = (rng.standard_normal(n).astype(f32) for _ in range(3))
    v = np.abs(v)
    grad1 = flat(g)

    def close(a, b, tol=1e-4):
        return np.allclose(a, b, atol=tol, rtol=tol)

    def check_act(name, backward=False):
        xs, gs = x[:8].astype(np.float64), g[:8].astype(np.float64)
        ys = ref_acts[name].forward(xs)
        if backward:
            got = acts[name].backward(g[:8], x[:8], ys.astype(f32))
            return close(got, ref_acts[name].backward(gs, xs, ys))
        return close(acts[name].forward(x[:8]), ys)

    table = [
        ("copy numpy", lambda: np.copyto(out1, x1), 2 * n * item, lambda: True),
        ("copy numba", lambda: _numba_config.parallel_call(_copy, x1, out1), 2 * n * item,
         lambda: True),
    ]
    for name in ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "softmax"):
        table.append((f"{name} forward", lambda name=name: acts[name].forward(x, out),
                      2 * n * item, lambda name=name: check_act(name)))
    for name in ("relu", "sigmoid", "tanh", "gelu"):
        table.append((f"{name} backward", lambda name=name: acts[name].backward(g, x, x, out),
                      3 * n * item, lambda name=name: check_act(name, True)))
    grad_out = np.empty_like(x)
    table += [
        ("bias_grad", lambda: lin["bias_grad"](g), n * item,
         lambda: close(lin["bias_grad"](g[:64]), g[:64].sum(0), 1e-3)),
        ("softmax_cross_entropy", lambda: loss["softmax_cross_entropy"](x, labels, grad_out),
         2 * n * item, lambda: close(loss["softmax_cross_entropy"](x[:8], labels[:8])[1],
                                     losses.softmax_cross_entropy_ref(x[:8], labels[:8])[1])),
        ("mse", lambda: loss["mse"](x, g), 2 * n * item,
         lambda: abs(loss["mse"](x[:8], g[:8]) - losses.mse_ref(x[:8], g[:8])) <= 1e-6),
        ("mse_backward", lambda: loss["mse_backward"](x, g, out), 3 * n * item,
         lambda: close(loss["mse_backward"](x[:8], g[:8]),
                       losses.mse_backward_ref(x[:8], g[:8]))),
        ("sgd momentum", lambda: opt["sgd"](p, grad1, m, lr=1e-3, momentum=0.9),
         5 * n * item, lambda: True),
        ("adam", lambda: opt["adam"](p, grad1, m, v, step=3, lr=1e-3), 7 * n * item,
         lambda: True),
        ("gather rows", lambda: gather(x, index, out), 2 * n * item,
         lambda: np.array_equal(gather(x, index[:5], out[:5]), x[index[:5]])),
    ]
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=positive(int), default=64)
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive(int), default=5)
    parser.add_argument("--variant", default="numba")
    args = parser.parse_args()
    from mlpfast.benchmarks.harness import time_call
    n = args.mib * 2 ** 20 // 4 // 1024 * 1024
    table = cases(args.variant, n, np.random.default_rng(0))
    for name, call, _, check in table:
        call()                                   # compile, warm the pages
        if not check():
            raise SystemExit(f"{name} does not match its reference")
    print(f"variant {args.variant}; arrays of {args.mib} MiB float32; GB/s of bytes that "
          f"must move; median of {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    for threads in args.threads:
        mlpfast.set_num_threads(threads)
        times = {name: [] for name, *_ in table}
        for _ in range(args.rounds):
            for name, call, _, _ in table:
                times[name].append(statistics.median(time_call(call, min_seconds=0.1)))
        gbps = {name: nbytes / statistics.median(times[name]) / 1e9
                for name, _, nbytes, _ in table}
        copy = max(gbps["copy numpy"], gbps["copy numba"])
        print(f"\n{threads} thread(s): {'kernel':24s} {'GB/s':>7s} {'/ copy':>7s}")
        for name, *_ in table:
            print(f"{'':13s}{name:24s} {gbps[name]:7.1f} {gbps[name] / copy:7.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
