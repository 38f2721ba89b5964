"""Softmax cross-entropy with its gradient and MSE backward, every variant, GB/s."""
import numpy as np
import pytest
from _common import run_benchmark

from mlpfast.kernels import losses

SHAPES = [(64, 10), (256, 10), (4096, 4096)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", list(losses.VARIANTS))
def test_softmax_cross_entropy(benchmark, variant, shape):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    grad = np.empty_like(logits)
    f = losses.VARIANTS[variant]["softmax_cross_entropy"]
    loss, g, correct = f(logits, labels, grad)          # the call that is timed
    ref_loss, ref_g, ref_correct = losses.softmax_cross_entropy_ref(logits, labels)
    assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss)) and correct == ref_correct
    np.testing.assert_allclose(g, ref_g, atol=1e-6, rtol=1e-4)
    run_benchmark(benchmark, lambda: f(logits, labels, grad), nbytes=2 * logits.nbytes,
                  shape=f"{shape[0]}x{shape[1]}", variant=variant)


@pytest.mark.parametrize("variant", list(losses.VARIANTS))
def test_mse_backward(benchmark, variant):
    rng = np.random.default_rng(0)
    pred, target = (rng.standard_normal((4096, 4096)).astype(np.float32) for _ in range(2))
    out = np.empty_like(pred)
    f = losses.VARIANTS[variant]["mse_backward"]
    np.testing.assert_allclose(f(pred, target, out), losses.mse_backward_ref(pred, target),
                               rtol=1e-6)
    run_benchmark(benchmark, lambda: f(pred, target, out), nbytes=3 * pred.nbytes,
                  shape="4096x4096", variant=variant)
