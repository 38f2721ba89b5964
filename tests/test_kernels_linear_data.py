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
@pytest.mark.parametrize("shape", [(1, 1), (129, 7), (5, 1000), (300, 37), (999, 1030)])
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


GRAD_INPUT_CASES = [(v, act) for v in linear.VARIANTS if "linear_grad_input" in linear.VARIANTS[v]
                    for act in activations.FUSABLE]


@pytest.mark.parametrize("variant,activation", GRAD_INPUT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,n_in,n_out", [(1, 1, 1), (7, 13, 5), (64, 784, 33),
                                              (131, 97, 601)])
def test_linear_grad_input(variant, activation, dtype, batch, n_in, n_out, rng):
    # dz = (dy @ w) * f'(z), with x = f(z) the layer's input
    grad_y = rng.standard_normal((batch, n_out)).astype(dtype)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    x = activations.REFERENCE[activation].forward(rng.standard_normal((batch, n_in))).astype(dtype)
    x64 = x.astype(np.float64)
    derivative = {"identity": np.ones_like(x64), "relu": (x64 > 0).astype(np.float64),
                  "sigmoid": x64 * (1 - x64), "tanh": 1 - x64 * x64}[activation]
    expected = (grad_y.astype(np.float64) @ w.astype(np.float64)) * derivative
    out = np.full((batch, n_in), np.nan, dtype)
    result = linear.VARIANTS[variant]["linear_grad_input"](grad_y, w, activation, x, out)
    assert result is out
    tol = (1e-5 * n_out ** 0.5, 1e-4) if dtype == np.float32 else (1e-12 * n_out, 1e-10)
    assert_close(out, expected, tol=tol, what=f"{variant} {activation}")
    if activation == "relu":
        assert (out == 0).sum() > batch * n_in // 4           # the mask really cut


@pytest.mark.parametrize("variant", sorted({v for v, _ in GRAD_INPUT_CASES}))
def test_linear_grad_input_nan_and_strided_input(variant, rng):
    # relu: a NaN input gives 0 (as [x > 0]); tanh: x read through a transposed view
    f = linear.VARIANTS[variant]["linear_grad_input"]
    grad_y, w = rng.standard_normal((9, 4)), rng.standard_normal((4, 6))
    x = np.abs(rng.standard_normal((9, 6)))
    x[2, 3] = np.nan
    out = f(grad_y, w, "relu", x, np.empty((9, 6)))
    assert out[2, 3] == 0 and np.isfinite(out).all()
    x_t = np.tanh(rng.standard_normal((6, 9))).T
    out = f(grad_y, w, "tanh", x_t, np.empty((9, 6)))
    assert_close(out, (grad_y @ w) * (1 - x_t * x_t), dtype=np.float64)


@pytest.mark.parametrize("variant", sorted({v for v, _ in GRAD_INPUT_CASES}))
def test_linear_grad_input_rejects_bad_arguments(variant):
    f = linear.VARIANTS[variant]["linear_grad_input"]
    grad_y, w = np.zeros((4, 3), np.float32), np.zeros((3, 5), np.float32)
    x, out = np.zeros((4, 5), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="grad_y has 3 columns but w has 2 output features"):
        f(grad_y, np.zeros((2, 5), np.float32), "relu", x, out)
    with pytest.raises(ValueError, match="activation must be one of"):
        f(grad_y, w, "gelu", x, out)
    with pytest.raises(ValueError, match="x .* is needed for activation 'tanh'"):
        f(grad_y, w, "tanh", None, out)
    with pytest.raises(ValueError, match=r"x must be float32 of shape \(4, 5\)"):
        f(grad_y, w, "relu", np.zeros((4, 6), np.float32), out)
    with pytest.raises(ValueError, match="out must not overlap input x"):
        f(grad_y, w, "relu", x, x)
    with pytest.raises(TypeError, match="grad_y and w must have the same dtype"):
        f(grad_y, w.astype(np.float64), "relu", x, out)


@pytest.mark.parametrize("variant", list(data.VARIANTS))
def test_gather_refuses_an_out_that_overlaps_src_and_writes_nothing(variant):
    """out = src[index] into a view of src itself would overwrite rows before they are read
    (row 1 of the gather below reads src[0], already overwritten by src[2]): refused with a
    ValueError, src unchanged. The fuzzer could not see the check go: the reference and the
    kernel share check_gather_args."""
    gather = data.VARIANTS[variant]["gather"]
    src = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.raises(ValueError, match="out must not overlap src"):
        gather(src, np.array([2, 0]), src[:2])
    assert np.array_equal(src, np.arange(12, dtype=np.float32).reshape(4, 3))


@pytest.mark.parametrize("variant", list(data.VARIANTS))
@pytest.mark.parametrize("src_dtype", [np.float32, np.uint8])
def test_gather_into_a_strided_out(variant, src_dtype, rng):
    """out as a view with no unit stride (every other column of a larger array): the rows
    land in it, cast, and nothing between its columns is written."""
    gather = data.VARIANTS[variant]["gather"]
    src = (rng.random((50, 6)) * 200).astype(src_dtype)
    index = rng.permutation(50)[:9]
    base = np.full((9, 12), -1.0, np.float32)
    out = base[:, ::2]
    assert gather(src, index, out) is out
    assert np.array_equal(out, src[index].astype(np.float32))
    assert (base[:, 1::2] == -1).all()
