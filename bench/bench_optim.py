"""Optimizer steps over one flat buffer, every variant, GB/s (param, grad and state read
once, param and state written once)."""
import numpy as np
import pytest
from _common import run_benchmark

from mlpfast.kernels import optim

# parameters of 784-256-128-10, of 784-1024-1024-10, and 64 Mi (past L2 and most of L3)
SIZES = [235146, 1863690, 1 << 24]


def state(n, rng):
    return [rng.standard_normal(n).astype(np.float32) for _ in range(3)] + \
        [np.abs(rng.standard_normal(n)).astype(np.float32)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", list(optim.VARIANTS))
@pytest.mark.parametrize("op", ["sgd_momentum", "adam"])
def test_optimizer_step(benchmark, variant, op, n):
    rng = np.random.default_rng(0)
    fast = state(n, rng)
    ref = [a[:1000].copy() for a in fast]
    kernels, reference = optim.VARIANTS[variant], optim.VARIANTS["numpy"]
    if op == "adam":
        call = lambda k, s: k["adam"](s[0], s[1], s[2], s[3], step=3, lr=1e-3)  # noqa: E731
        nbytes = 7 * 4 * n
    else:
        call = lambda k, s: k["sgd"](s[0], s[1], s[2], lr=1e-2, momentum=0.9)  # noqa: E731
        nbytes = 5 * 4 * n
    head = [a[:1000].copy() for a in fast]
    call(kernels, head)
    call(reference, ref)
    np.testing.assert_allclose(head[0], ref[0], rtol=1e-5, atol=1e-6)
    run_benchmark(benchmark, lambda: call(kernels, fast), nbytes=nbytes, shape=f"{n}",
                  variant=variant, op=op)
