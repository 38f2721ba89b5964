"""Shared test helpers: tolerances per dtype, random arrays of awkward shapes."""
import numpy as np
import pytest

# atol + rtol * |ref|, per dtype; gradients against finite differences get their own.
TOL = {np.float32: (1e-5, 1e-4), np.float64: (1e-12, 1e-10)}
GRAD_TOL = (1e-7, 1e-6)     # float64 finite differences, central, eps = 1e-6

DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None, tol=None, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    atol, rtol = tol or TOL[np.dtype(dtype or actual.dtype).type]
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual.astype(np.float64) - expected) - (atol + rtol * np.abs(expected))
    if err.size and err.max() > 0:
        i = np.unravel_index(err.argmax(), err.shape)
        raise AssertionError(f"{what}: at {i} got {actual[i]!r}, expected {expected[i]!r} "
                             f"(atol {atol}, rtol {rtol})")


def numerical_grad(f, x, eps=1e-6):
    """Central differences of scalar f() with respect to every entry of x (float64), in place."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
