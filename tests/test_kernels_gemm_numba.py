"""The Numba GEMM's own paths: several row, depth and column blocks, edge tiles, the
vector packers and their element-by-element fallback, the bias/relu epilogue over several
k blocks, strided views, 1 and 2 threads. (tests/test_kernels_gemm.py covers every
variant on small shapes.)"""
import numpy as np
import pytest
from conftest import assert_close, run_guarded

import mlpfast
from mlpfast.kernels import gemm

# (m, n, k): n > GEMM_NC (two column blocks), k = 1601 > 1.5 GEMM_KC (two k blocks or more),
# m > GEMM_MC (two row blocks); m, n, k not multiples of MR, NR or the vector length
SHAPES = [(70, 1100, 9), (130, 600, 801), (9, 1030, 1601), (200, 33, 300), (3100, 40, 7)]


def reference(a, b, trans_a, trans_b, alpha, beta, c, bias, relu):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64)) + beta * c + bias
    return np.maximum(out, 0) if relu else out


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(request.param)
    yield request.param
    mlpfast.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_blocks_epilogue_and_forms(m, n, k, trans_a, trans_b, dtype, threads, rng):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    expected = reference(a, b, trans_a, trans_b, 0.5, 2.0, c.astype(np.float64), bias, True)
    out = gemm.gemm_numba_fused(a, b, c, trans_a, trans_b, 0.5, 2.0, bias, "relu")
    assert out is c
    tol = (1e-5 * k, 2e-5 * k ** 0.5) if dtype == np.float32 else (1e-12 * k, 1e-10)
    assert_close(out, expected, tol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_epilogue_keeps_nan(dtype, rng):
    """NaN in a product stays NaN through relu, as in the relu kernel and numpy's maximum
    (so a diverging run's loss is NaN, not a finite loss of zeroed logits)."""
    a = rng.standard_normal((5, 9)).astype(dtype)
    a[1, 3] = np.nan
    b = rng.standard_normal((9, 37)).astype(dtype)
    out = gemm.gemm_numba_fused(a, b, np.zeros((5, 37), dtype), False, False, 1.0, 0.0,
                                np.zeros(37, dtype), "relu")
    expected = np.maximum(a.astype(np.float64) @ b, 0)
    assert np.isnan(out[1]).all() and not np.isnan(np.delete(out, 1, axis=0)).any()
    assert_close(np.delete(out, 1, axis=0), np.delete(expected, 1, axis=0))


def test_strided_views(rng):
    big = rng.standard_normal((300, 600))
    a, b = big[::2, ::3], big[1::2, :260]          # (150, 200) and (150, 260), strided rows
    assert_close(gemm.gemm_numba(a, b, trans_a=True), a.T @ b, tol=(1e-11, 1e-10))
    w = big[:50, ::2]                               # (50, 300): unit stride lost -> packed form
    x = big[100:107, :300]
    assert_close(gemm.gemm_numba(x, w, trans_b=True), x @ w.T, tol=(1e-11, 1e-10))


def test_workspace_is_reused(rng):
    a = rng.standard_normal((64, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    out = np.empty((64, 200), np.float32)
    gemm.gemm_numba(a, b, out)
    buffers = dict(gemm._WORKSPACE.buffers)
    gemm.gemm_numba(a, b, out)
    assert all(gemm._WORKSPACE.buffers[d] is buf for d, buf in buffers.items())


def test_bad_epilogue_arguments_are_rejected():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        gemm.gemm_numba_fused(a, a, None, False, True, 1.0, 0.0, None, "tanh")
    with pytest.raises(ValueError, match=r"bias must be a contiguous float32 array of shape \(2,\)"):
        gemm.gemm_numba_fused(a, a, None, False, True, 1.0, 0.0, np.ones(3, np.float32), "relu")


def test_empty_product_applies_bias_and_relu_without_reading_out():
    """k = 0: out = relu(beta out + bias); with beta 0 the NaN in out is not read."""
    bias = np.array([-1.0, 0.5, 2.0], np.float32)
    out = np.full((2, 3), np.nan, np.float32)
    gemm.gemm_numba_fused(np.zeros((2, 0), np.float32), np.zeros((3, 0), np.float32), out,
                          False, True, 1.0, 0.0, bias, "relu")
    assert_close(out, [[0.0, 0.5, 2.0]] * 2)



def test_shared_schedule_over_two_row_blocks(rng):
    """m > GEMM_MC with n > m on 2 threads: the threads split only columns (the shared
    schedule) and take items of two A blocks; each thread packs an A block when its first
    item in it comes (packing only the first block left the rows past GEMM_MC computed
    from it, unseen by SHAPES, whose m > GEMM_MC shape splits rows)."""
    m, n, k = gemm.GEMM_MC + 11, gemm.GEMM_MC + 40, 3
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(2)
    try:
        assert gemm._shared_schedule(2, m, n, k, k, 2 * gemm.GEMM_VECTOR_BYTES // 4, 4)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = gemm.gemm_numba(a, b)
    finally:
        mlpfast.set_num_threads(previous)
    assert_close(out, a.astype(np.float64) @ b, tol=(1e-5 * k, 2e-5 * k ** 0.5))


_GUARD_SCRIPT = r"""
from mlpfast.kernels import gemm

for dtype in (np.float32, np.float64):
    for m, n, k in [(5, 3, 32), (13, 37, 48), (1, 1, 16), (25, 20, 33)]:
        for ta in (False, True):
            for tb in (False, True):
                a = at_page_end((k, m) if ta else (m, k), dtype)
                b = at_page_end((n, k) if tb else (k, n), dtype)
                a[...], b[...] = (np.random.default_rng(0).standard_normal(x.shape) for x in (a, b))
                out = gemm.gemm_numba(a, b, trans_a=ta, trans_b=tb)
                ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), (m, n, k)
print("ok")
"""


def test_packing_reads_nothing_past_the_operands():
    """A and B end right before an unreadable page; m and n are not multiples of MR and NR,
    k is a multiple of the vector length: the vector packers may read only whole
    micro-panels (a partial one read whole crosses the end of A and crashes the child)."""
    run_guarded(_GUARD_SCRIPT)
