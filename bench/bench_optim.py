"""Optimizer steps over one flat buffer, every variant, GB/s (param, grad and state read
once, param and state written once)."""
import numpy as np
import pytest
from _common import run_benchmark, spread_indices

from mlpfast.kernels import optim

# parameters of 784-256-128-10, of 784-1024-1024-10, and 64 Mi (past L2 and most of L3)
SIZES = [235146, 1863690, 1 << 24]


def state(n, rng):
    return [rng.standard_normal(n).astype(np.float32) for _ in range(3)] + \
        [np.abs(rng.standard_normal(n)).astype(np.float32)]


# (variant, op) for every op each variant has (the C library has Adam only)
CASES = [(variant, op) for variant, table in optim.VARIANTS.items()
         for op, kernel in (("sgd_momentum", "sgd"), ("adam", "adam")) if kernel in table]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant,op", CASES)
def test_optimizer_step(benchmark, variant, op, n):
    rng = np.random.default_rng(0)
    fast = state(n, rng)
    kernels, reference = optim.VARIANTS[variant], optim.VARIANTS["numpy"]
    if op == "adam":
        call = lambda k, s: k["adam"](s[0], s[1], s[2], s[3], step=3, lr=1e-3)  # noqa: E731
        nbytes = 7 * 4 * n
    else:
        call = lambda k, s: k["sgd"](s[0], s[1], s[2], lr=1e-2, momentum=0.9)  # noqa: E731
        nbytes = 5 * 4 * n
    # the reference updates copies of elements spread over the buffer (an elementwise
    # update), the kernel the whole buffer, as it is timed
    index = spread_indices(n, 4096)
    ref = [a[index] for a in fast]
    call(reference, ref)
    call(kernels, fast)
    for i, what in ((0, "param"), (2, "momentum_buf / exp_avg"), (3, "exp_avg_sq")):
        np.testing.assert_allclose(fast[i][index], ref[i], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{variant} {op} {what}")
    run_benchmark(benchmark, lambda: call(kernels, fast), nbytes=nbytes, shape=f"{n}",
                  variant=variant, op=op)
