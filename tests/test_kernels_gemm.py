"""Every GEMM variant against the reference: awkward shapes, transposes, alpha/beta, views."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close

from mlpfast.kernels import gemm

SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (3, 4, 1), (7, 13, 17), (31, 37, 41), (64, 48, 33),
          (129, 65, 257), (2, 300, 3), (300, 2, 5), (0, 5, 3), (4, 0, 3), (4, 5, 0)]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


def operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def expected(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    prod = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    return prod if c is None or beta == 0 else prod + beta * c.astype(np.float64)


def tol_for(dtype, k):
    # accumulated rounding grows with the inner dimension k
    return (1e-5 * max(k, 1), 2e-5 * max(k, 1) ** 0.5) if dtype == np.float32 else (1e-12 * max(k, 1), 1e-10)


@pytest.mark.parametrize("variant", list(gemm.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_matches_reference(variant, dtype, trans_a, trans_b, m, n, k, rng):
    a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
    out = gemm.VARIANTS[variant](a, b, trans_a=trans_a, trans_b=trans_b)
    assert out.dtype == dtype
    assert_close(out, expected(a, b, trans_a, trans_b), tol=tol_for(dtype, k), what=variant)


@pytest.mark.parametrize("variant", list(gemm.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (2.0, 1.0), (-1.5, 0.25)])
def test_gemm_alpha_beta_into_out(variant, dtype, alpha, beta, rng):
    a, b = operands(rng, 19, 23, 29, False, True, dtype)
    c0 = rng.standard_normal((19, 23)).astype(dtype)
    out = c0.copy()
    if beta == 0.0:
        out[...] = np.nan    # beta == 0 must never read out
    result = gemm.VARIANTS[variant](a, b, out, trans_b=True, alpha=alpha, beta=beta)
    assert result is out
    assert_close(out, expected(a, b, False, True, alpha, beta, c0), tol=tol_for(dtype, 29),
                 what=variant)


@pytest.mark.parametrize("variant", list(gemm.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_row_strided_views(variant, dtype, rng):
    # views whose rows are further apart than their length (sub-blocks of larger arrays)
    big_a = rng.standard_normal((40, 50)).astype(dtype)
    big_b = rng.standard_normal((60, 70)).astype(dtype)
    big_c = np.zeros((30, 90), dtype=dtype)
    a, b, out = big_a[3:20, 5:16], big_b[2:13, 1:9], big_c[4:21, 10:18]
    gemm.VARIANTS[variant](a, b, out)
    assert_close(out, expected(a, b, False, False), tol=tol_for(dtype, 11), what=variant)
    assert not big_c[:4].any() and not big_c[21:].any() and not big_c[:, :10].any()


@pytest.mark.parametrize("variant", list(gemm.VARIANTS))
def test_gemm_bad_arguments(variant, rng):
    f = gemm.VARIANTS[variant]
    a = rng.standard_normal((4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        f(a, np.zeros((6, 3), np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        f(a, np.zeros((5, 3), np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        f(a.astype(np.int32), np.zeros((5, 3), np.int32))
    with pytest.raises(ValueError, match="out must have shape"):
        f(a, np.zeros((5, 3), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        sq = rng.standard_normal((5, 5)).astype(np.float32)
        f(sq, sq.copy(), sq)
    with pytest.raises(ValueError, match="beta"):
        f(a, np.zeros((5, 3), np.float32), beta=1.0)


@pytest.mark.parametrize("variant", list(gemm.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemm_with_k_zero_is_beta_out(variant, dtype, beta, rng):
    """An empty product (k = 0): out = beta * out, and with beta 0 out is not read (NaN in
    it gives zeros, as BLAS's beta = 0)."""
    c0 = rng.standard_normal((3, 4)).astype(dtype)
    out = np.full((3, 4), np.nan, dtype) if beta == 0.0 else c0.copy()
    result = gemm.VARIANTS[variant](np.zeros((3, 0), dtype), np.zeros((0, 4), dtype), out,
                                    alpha=2.0, beta=beta)
    assert result is out
    assert_close(out, beta * c0.astype(np.float64), what=variant)
