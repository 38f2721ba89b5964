"""Fused linear forward, bias gradient and batch gather against their references."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close

from mlpfast.kernels import activations, data, linear

LINEAR_CASES = [(v, act) for v in linear.VARIANTS for act in linear.FUSED[v]]


@pytest.mark.parametrize("variant,activation", LINEAR_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,n_in,n_out", [(1, 1, 1), (7, 13, 5), (64, 784, 33), (3, 2, 300)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward(variant, activation, dtype, batch, n_in, n_out, with_bias, rng):
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    z = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    expected = activations.REFERENCE[activation].forward(z)
    out = np.full((batch, n_out), np.nan, dtype)
    linear.VARIANTS[variant]["linear_forward"](x, w, b, activation, out)
    tol = (1e-5 * n_in ** 0.5, 1e-4) if dtype == np.float32 else (1e-12 * n_in, 1e-10)
    assert_close(out, expected, tol=tol, what=f"{variant} {activation}")


@pytest.mark.parametrize("variant", [v for v in linear.VARIANTS
                                     if "bias_grad" in linear.VARIANTS[v]])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (129, 7), (5, 1000)])
def test_bias_grad(variant, dtype, shape, rng):
    g = rng.standard_normal(shape).astype(dtype)
    out = linear.VARIANTS[variant]["bias_grad"](g, np.empty(shape[1], dtype))
    assert_close(out, g.astype(np.float64).sum(axis=0), tol=(1e-5 * shape[0] ** 0.5, 1e-5)
                 if dtype == np.float32 else None, what=variant)


def test_linear_forward_rejects_bad_shapes(rng):
    f = linear.VARIANTS["numpy"]["linear_forward"]
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="x has 5 features but w expects 6"):
        f(x, np.zeros((3, 6), np.float32), None)
    with pytest.raises(ValueError, match=r"b must be float32 of shape \(3,\)"):
        f(x, np.zeros((3, 5), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        f(x, np.zeros((3, 5), np.float32), None, "swish")


@pytest.mark.parametrize("variant", list(data.VARIANTS))
@pytest.mark.parametrize("src_dtype,out_dtype", [(np.float32, np.float32), (np.uint8, np.float32),
                                                 (np.int64, np.int64), (np.float64, np.float64)])
def test_gather(variant, src_dtype, out_dtype, rng):
    gather = data.VARIANTS[variant]["gather"]
    src = (rng.random((101, 17)) * 200).astype(src_dtype)
    index = rng.permutation(101)[:37]
    out = np.empty((37, 17), out_dtype)
    gather(src, index, out)
    assert np.array_equal(out, src[index].astype(out_dtype))
    labels = rng.integers(0, 10, 101)
    out1 = np.empty(37, np.int64)
    gather(labels, index, out1)
    assert np.array_equal(out1, labels[index])


@pytest.mark.parametrize("variant", list(data.VARIANTS))
def test_gather_rejects_bad_index(variant):
    gather = data.VARIANTS[variant]["gather"]
    src = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 10\)"):
        gather(src, np.array([0, 10]), np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        gather(src, np.array([0, 1]), np.empty((3, 3), np.float32))
