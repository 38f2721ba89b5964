"""Linear forward with bias + relu (GFLOP/s) and the bias gradient (GB/s), every variant."""
import numpy as np
import pytest
from _common import run_benchmark

from mlpfast.kernels import linear

# (batch, in, out) of the reference MLPs' layers
SHAPES = [(64, 784, 256), (256, 784, 1024), (256, 1024, 1024)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", list(linear.VARIANTS))
def test_linear_forward_relu(benchmark, variant, shape):
    batch, n_in, n_out = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    out = np.empty((batch, n_out), np.float32)
    f = linear.VARIANTS[variant]["linear_forward"]
    f(x, w, b, "relu", out)
    expected = np.maximum(x.astype(np.float64) @ w.T + b, 0)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)
    run_benchmark(benchmark, lambda: f(x, w, b, "relu", out), flops=2.0 * batch * n_in * n_out,
                  shape="x".join(map(str, shape)), variant=variant)


@pytest.mark.parametrize("shape", [(256, 1024), (4096, 4096)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", [v for v in linear.VARIANTS if "bias_grad" in linear.VARIANTS[v]])
def test_bias_grad(benchmark, variant, shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    f = linear.VARIANTS[variant]["bias_grad"]
    np.testing.assert_allclose(f(g), g.astype(np.float64).sum(0), atol=1e-3, rtol=1e-4)
    out = np.empty(shape[1], np.float32)
    run_benchmark(benchmark, lambda: f(g, out), nbytes=g.nbytes,
                  shape=f"{shape[0]}x{shape[1]}", variant=variant)
