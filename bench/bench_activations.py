"""Activations forward and backward, every variant, GB/s (bytes that must move).

Shapes: the hidden activations of the reference MLPs, and 4096 x 4096 (64 MiB in
float32, far past L2) to compare with bench_stream.py's copy.
"""
import numpy as np
import pytest
from _common import (MLP_ACTIVATION_SHAPES, TOL, assert_close, random_uniform,
                     run_benchmark, spread_indices)

from mlpfast.kernels import activations

SHAPES = MLP_ACTIVATION_SHAPES + [(4096, 4096)]
CASES = [(v, name) for v in activations.VARIANTS for name in activations.VARIANTS[v]
         if name != "identity"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant,name", CASES)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_activation(benchmark, variant, name, direction, shape):
    rng = np.random.default_rng(0)
    x = random_uniform(rng, shape) * 4
    g = random_uniform(rng, shape)
    out = np.empty_like(x)
    ref = activations.REFERENCE[name]
    act = activations.VARIANTS[variant][name]
    y = ref.forward(x)
    rows = spread_indices(shape[0])          # of the timed call on the whole array
    if direction == "forward":
        fn, nbytes = (lambda: act.forward(x, out)), 2 * x.nbytes
        expected, tol = ref.forward(x[rows].astype(np.float64)), TOL[np.dtype(np.float32)]
    else:
        fn, nbytes = (lambda: act.backward(g, x, y, out)), 3 * x.nbytes
        expected = ref.backward(g[rows].astype(np.float64), x[rows].astype(np.float64),
                                y[rows].astype(np.float64))
        tol = (1e-5, 2e-4)
    fn()
    assert_close(out[rows], expected, *tol, what=f"{variant} {name} {direction}")
    run_benchmark(benchmark, fn, nbytes=nbytes, shape=f"{shape[0]}x{shape[1]}",
                  variant=variant, op=f"{name}_{direction}")
