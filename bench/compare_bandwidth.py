"""Memory-bound kernels against a STREAM-like copy, side by side in one run.

    python bench/compare_bandwidth.py [--mib 64] [--threads 1 2] [--rounds 5] [--variant numba]

Every array is --mib MiB of float32 (default 64 MiB: far past the 2 MiB L2 of a core;
note that this machine's 260 MiB L3 still holds a few of them). For each kernel the
bytes it must move (each input read once, each output written once) are divided by the
median time: GB/s. "copy" is out[:] = x[:] (NumPy's copyto and a parallel Numba loop,
the faster one counts); the last column is kernel GB/s / copy GB/s. Before timing, on
each thread count, the whole result of each timed call is checked against the NumPy
reference (in-place updates against the reference on copies of their state); every
mismatch is listed and nothing is timed. Rounds interleave the kernels, so that a noisy
neighbour slows all of them alike.
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

from mlpfast.benchmarks.harness import TOL, assert_close, time_call  # noqa: E402


@njit(parallel=True, cache=True)
def _copy(x, out):
    for i in prange(x.shape[0]):
        out[i] = x[i]


def cases(variant, n, rng):
    """[(name, call, bytes moved, check)]: check() runs call as it is timed and compares its
    whole result with the NumPy reference (kernels' *_ref functions; in-place updates on
    copies of the state), raising AssertionError on a mismatch."""
    from mlpfast.kernels import _numba_config, activations, data, linear, losses, optim
    acts = activations.VARIANTS[variant]
    ref_acts = activations.REFERENCE
    cols = 1024
    rows = n // cols
    f32, f64 = np.float32, np.float64
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
    atol, rtol = TOL[np.dtype(f32)]

    def check_copy(call):
        call()
        if not np.array_equal(out1, x1):
            raise AssertionError("out differs from x")

    def check_act(name, call, backward=False, tol=(atol, rtol)):
        call()
        x64, g64 = x.astype(f64), g.astype(f64)
        ref = (ref_acts[name].backward(g64, x64, x64) if backward       # y = x, as timed
               else ref_acts[name].forward(x64))
        assert_close(out, ref, *tol, "out")

    def check_sgd():
        p0, m0 = p.copy(), m.copy()
        sgd()
        optim.sgd_ref(p0, grad1, m0, lr=1e-3, momentum=0.9)
        assert_close(p, p0, 1e-6, 1e-5, "param")
        assert_close(m, m0, 1e-6, 1e-5, "momentum_buf")

    def check_adam():
        p0, m0, v0 = p.copy(), m.copy(), v.copy()
        adam()
        optim.adam_ref(p0, grad1, m0, v0, step=3, lr=1e-3)
        for got, want, what in ((p, p0, "param"), (m, m0, "exp_avg"), (v, v0, "exp_avg_sq")):
            assert_close(got, want, 1e-6, 1e-5, what)

    def check_cross_entropy():
        got_loss, got_grad, got_correct = cross_entropy()
        ref_loss, ref_grad, ref_correct = losses.softmax_cross_entropy_ref(x.astype(f64),
                                                                           labels)
        assert_close(got_loss, ref_loss, 0.0, 1e-5, "loss")
        assert_close(got_grad * rows, ref_grad * rows, 1e-7, 1e-4, "grad * B")
        if got_correct != ref_correct:
            raise AssertionError(f"correct: {got_correct}, reference {ref_correct}")

    def check_mse_backward():
        mse_backward()
        scale = n / 2           # grad = 2 (pred - target) / n: compared as pred - target
        ref = losses.mse_backward_ref(x.astype(f64), g.astype(f64))
        assert_close(out * scale, ref * scale, 1e-6, 1e-5, "out * n / 2")

    def check_gather():
        gather_call()
        assert_close(out, data.gather_ref(x, index, np.empty_like(x)), 0.0, 0.0, "out")

    copy_numpy = lambda: np.copyto(out1, x1)  # noqa: E731
    copy_numba = lambda: _numba_config.parallel_call(_copy, x1, out1)  # noqa: E731
    table = [
        ("copy numpy", copy_numpy, 2 * n * item, lambda: check_copy(copy_numpy)),
        ("copy numba", copy_numba, 2 * n * item, lambda: check_copy(copy_numba)),
    ]
    for name in ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "softmax"):
        call = lambda name=name: acts[name].forward(x, out)  # noqa: E731
        tol = (1e-8, rtol) if name == "softmax" else (atol, rtol)   # values of ~1e-3
        table.append((f"{name} forward", call, 2 * n * item,
                      lambda name=name, call=call, tol=tol: check_act(name, call, tol=tol)))
    for name in ("relu", "sigmoid", "tanh", "gelu"):
        call = lambda name=name: acts[name].backward(g, x, x, out)  # noqa: E731
        table.append((f"{name} backward", call, 3 * n * item,
                      lambda name=name, call=call: check_act(name, call, True)))
    grad_out = np.empty_like(x)
    bias_grad = lambda: lin["bias_grad"](g)  # noqa: E731
    cross_entropy = lambda: loss["softmax_cross_entropy"](x, labels, grad_out)  # noqa: E731
    mse = lambda: loss["mse"](x, g)  # noqa: E731
    mse_backward = lambda: loss["mse_backward"](x, g, out)  # noqa: E731
    sgd = lambda: opt["sgd"](p, grad1, m, lr=1e-3, momentum=0.9)  # noqa: E731
    adam = lambda: opt["adam"](p, grad1, m, v, step=3, lr=1e-3)  # noqa: E731
    gather_call = lambda: gather(x, index, out)  # noqa: E731
    table += [
        ("bias_grad", bias_grad, n * item,           # float32 sums of rows values of ~1
         lambda: assert_close(bias_grad(), linear.bias_grad_ref(g.astype(f64)), 1e-3, rtol,
                              "grad_b")),
        ("softmax_cross_entropy", cross_entropy, 2 * n * item, check_cross_entropy),
        ("mse", mse, 2 * n * item,                   # float64 sums: an element is ~1 / n of it
         lambda: assert_close(mse(), losses.mse_ref(x, g), 0.0, 1e-9, "loss")),
        ("mse_backward", mse_backward, 3 * n * item, check_mse_backward),
        ("sgd momentum", sgd, 5 * n * item, check_sgd),
        ("adam", adam, 7 * n * item, check_adam),
        ("gather rows", gather_call, 2 * n * item, check_gather),
    ]
    return table


def check_all(table, threads):
    """Runs every case's check; exits naming each case whose result is wrong."""
    wrong = []
    for name, _, _, check in table:
        try:
            check()                              # runs the call (compiles, warms the pages)
        except AssertionError as err:
            wrong.append(f"{name}: {err}")
    if wrong:
        raise SystemExit(f"on {threads} thread(s), these do not match their reference:\n  "
                         + "\n  ".join(wrong))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=positive(int), default=64)
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=positive(int), default=5)
    parser.add_argument("--variant", default="numba")
    args = parser.parse_args()
    n = args.mib * 2 ** 20 // 4 // 1024 * 1024
    table = cases(args.variant, n, np.random.default_rng(0))
    for threads in args.threads:                 # every thread count's results, before timing
        mlpfast.set_num_threads(threads)
        check_all(table, threads)
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
