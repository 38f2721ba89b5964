"""Activations: every variant against the reference; the reference against finite differences."""
import math

import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, assert_close, numerical_grad

import mlpfast
from mlpfast.kernels import activations

SHAPES = [(1, 1), (3, 7), (17, 129), (64, 10), (5, 1000)]
PARAMS = {"leaky_relu": {"negative_slope": 0.07}}
CASES = [(v, name) for v in activations.VARIANTS for name in activations.VARIANTS[v]]


def inputs(rng, shape, dtype, name):
    x = 3 * rng.standard_normal(shape)
    if name in ("relu", "leaky_relu"):
        x[np.abs(x) < 1e-3] = 0.5          # keep away from the kink for finite differences
    return x.astype(dtype)


def test_every_variant_has_every_activation():
    for variant, table in activations.VARIANTS.items():
        assert set(table) == set(activations.NAMES), variant


@pytest.mark.parametrize("variant,name", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_reference(variant, name, dtype, shape, rng):
    params = PARAMS.get(name, {})
    ref, fast = activations.REFERENCE[name], activations.VARIANTS[variant][name]
    x = inputs(rng, shape, dtype, name)
    g = rng.standard_normal(shape).astype(dtype)
    y_ref = ref.forward(x.astype(np.float64), **params)
    y = fast.forward(x, np.empty_like(x), **params)
    assert y.dtype == dtype
    assert_close(y, y_ref, what=f"{variant} {name} forward")
    dx_ref = ref.backward(g.astype(np.float64), x.astype(np.float64), y_ref, **params)
    dx = fast.backward(g, x, y, np.empty_like(x), **params)
    assert_close(dx, dx_ref, tol={np.float32: (1e-5, 2e-4), np.float64: (1e-12, 1e-10)}[dtype],
                 what=f"{variant} {name} backward")


@pytest.mark.parametrize("name", activations.NAMES)
def test_reference_backward_matches_finite_differences(name, rng):
    params = PARAMS.get(name, {})
    act = activations.REFERENCE[name]
    x = inputs(rng, (4, 6), np.float64, name)
    g = rng.standard_normal((4, 6))
    numeric = numerical_grad(lambda: float((act.forward(x, **params) * g).sum()), x)
    analytic = act.backward(g, x, act.forward(x, **params), **params)
    assert_close(analytic, numeric, tol=GRAD_TOL, what=name)


def test_reference_values_by_hand():
    x = np.array([[-2.0, 0.0, 1.5]])
    ref = activations.REFERENCE
    assert_close(ref["relu"].forward(x), [[0.0, 0.0, 1.5]])
    assert_close(ref["leaky_relu"].forward(x, negative_slope=0.1), [[-0.2, 0.0, 1.5]])
    assert_close(ref["sigmoid"].forward(x), [[1 / (1 + math.exp(2)), 0.5, 1 / (1 + math.exp(-1.5))]])
    assert_close(ref["gelu"].forward(x), [[-2 * 0.5 * (1 + math.erf(-2 / math.sqrt(2))), 0.0,
                                           1.5 * 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))]])
    e = np.exp(x[0] - 1.5)
    assert_close(ref["softmax"].forward(x), [e / e.sum()])


@pytest.mark.parametrize("variant,name", CASES)
def test_forward_in_place_and_extreme_values(variant, name):
    act = activations.VARIANTS[variant][name]
    x = np.array([[-1e4, -30.0, 0.0, 30.0, 1e4]], dtype=np.float32)
    expected = activations.REFERENCE[name].forward(x.astype(np.float64))
    y = act.forward(x, x)                    # out aliases x: allowed for forward
    assert np.isfinite(y).all(), name
    assert_close(y, expected, what=f"{variant} {name}")


@pytest.mark.parametrize("variant", list(activations.VARIANTS))
def test_float32_tanh_keeps_its_relative_accuracy_near_zero(variant):
    """tanh(x) ~ x near 0: a relative error below 1e-6 there (1 - 2e/(1+e) alone gave
    tanh(1e-10) = 0 and 6e-8 at 1e-7), and across the switch to that form at |x| = 1/4."""
    x = np.concatenate([np.geomspace(1e-30, 1.0, 4001), np.linspace(0.2, 0.3, 2001)])
    x = np.concatenate([x, -x, [0.0]]).astype(np.float32)[None, :]
    y = activations.VARIANTS[variant]["tanh"].forward(x)
    expected = np.tanh(x.astype(np.float64))
    relative = np.abs(y - expected) / np.maximum(np.abs(expected), 1e-300)
    assert relative.max() < 1e-6, x[0, relative.argmax()]
    assert np.array_equal(np.signbit(y), np.signbit(x))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 129), (5, 1000)])
def test_numba_softmax_streaming_stores(shape, dtype, threads, rng, monkeypatch):
    """The streaming-store path (outputs of STREAM_MIN_BYTES and more), forced on small
    arrays; out starts one element past a 64-byte boundary, so rows have a head, an
    aligned middle and a tail; out may also be x."""
    from mlpfast.kernels import _numba_math
    monkeypatch.setattr(_numba_math, "STREAM_MIN_BYTES", 0)
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(threads)
    try:
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        expected = activations.REFERENCE["softmax"].forward(x.astype(np.float64))
        buffer = np.empty(x.size + 64, dtype)
        skip = (-buffer.ctypes.data % 64) // buffer.itemsize + 1
        out = buffer[skip:skip + x.size].reshape(shape)
        softmax = activations.VARIANTS["numba"]["softmax"]
        assert activations._row_scratch(x, out)[1]
        assert_close(softmax.forward(x, out), expected, what="streamed softmax")
        assert_close(softmax.forward(x, x), expected, what="streamed softmax in place")
    finally:
        mlpfast.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 10, 1000, 1024])
def test_scratch_row_at_the_same_page_offset_as_each_row(cols, dtype):
    """Streaming softmax and cross-entropy store exp(x - max) in a scratch row at the page
    offset of the row they read (no 4K aliasing): every row of x gets a slice of the
    scratch row of its length that starts at its own address modulo 4096."""
    from numba import njit

    from mlpfast.kernels import _numba_math

    same_page_offset = njit(lambda scratch, row: _numba_math.same_page_offset(scratch, row))
    buffer = np.zeros(7 * cols + 40, dtype)
    scratch = _numba_math.scratch_rows(2, cols, dtype)
    assert scratch.shape == (2, cols + (4096 + 64) // scratch.itemsize)
    assert _numba_math.scratch_rows(2, 0, dtype).shape == (2, 0)
    for skip in (0, 1, 3):
        x = buffer[skip:skip + 7 * cols].reshape(7, cols)
        for i in range(7):
            e_row = same_page_offset(scratch[1], x[i])
            assert e_row.shape == (cols,)
            assert (e_row.ctypes.data - x[i].ctypes.data) % 4096 == 0
            start = (e_row.ctypes.data - scratch[1].ctypes.data) // scratch.itemsize
            assert 0 <= start and start + cols <= scratch.shape[1]
            # and at least a cache line before the next band's row: no false sharing
            assert (scratch.shape[1] - start - cols) * scratch.itemsize >= 64


@pytest.mark.parametrize("name", ["tanh", "gelu", "gelu_tanh"])
def test_numba_prefetching_twins_on_large_arrays(name, rng, monkeypatch):
    """Arrays of PREFETCH_MIN_BYTES and more go to the kernels' prefetching twins (rows of
    1000: bursts of 256 values and a tail of 232), in place to the plain kernels: both
    match the reference, and each other to the bit."""
    from mlpfast.kernels import _numba_math
    rows = _numba_math.PREFETCH_MIN_BYTES // 4000 + 3
    x = inputs(rng, (rows, 1000), np.float32, name)
    g = rng.standard_normal(x.shape).astype(np.float32)
    act, ref = activations.VARIANTS["numba"][name], activations.REFERENCE[name]
    used = []
    real_call = activations.parallel_call
    monkeypatch.setattr(activations, "parallel_call",
                        lambda kernel, *args: used.append(kernel.__name__) or
                        real_call(kernel, *args))
    x64 = x.astype(np.float64)
    y64 = ref.forward(x64)
    y = act.forward(x)
    assert_close(y, y64, what=f"{name} forward")
    in_place = x.copy()
    act.forward(in_place, in_place)
    np.testing.assert_array_equal(in_place, y)
    assert used == [f"_{name}_forward_numba_prefetching", f"_{name}_forward_numba"]
    if name != "tanh":                      # tanh's backward reads y only: no twin
        grad_x = act.backward(g, x, y)
        assert_close(grad_x, ref.backward(g.astype(np.float64), x64, y64),
                     what=f"{name} backward")
        grad_in_place = g.copy()
        act.backward(grad_in_place, x, y, grad_in_place)
        np.testing.assert_array_equal(grad_in_place, grad_x)
        assert used[2:] == [f"_{name}_backward_numba_prefetching", f"_{name}_backward_numba"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_softmax_in_place_uses_a_scratch_row_and_matches(dtype, rng):
    """In place (out is x) e goes to a scratch row, not into the row being read; the
    result is the same, to the bit, as out of place."""
    x = (3 * rng.standard_normal((37, 300))).astype(dtype)
    softmax = activations.VARIANTS["numba"]["softmax"]
    scratch, stream = activations._row_scratch(x, x)
    assert not stream and scratch.shape[1] > x.shape[1]
    assert activations._row_scratch(x, np.empty_like(x))[0].shape[1] == 0
    expected = softmax.forward(x)
    in_place = x.copy()
    assert softmax.forward(in_place, in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
@pytest.mark.parametrize("ahead_len", [0, 7, 256, 3000])
def test_exp_shifted_sum_prefetching_or_not(n, ahead_len, dtype, rng):
    """The helper of softmax and cross-entropy: e = exp(row - top) and its sum, the same
    whether it prefetches (in bursts of BURST values, then a tail) or not."""
    from mlpfast.kernels import _numba_math
    row = (3 * rng.standard_normal(n)).astype(dtype)
    top = row.max()
    ahead = rng.standard_normal(ahead_len).astype(dtype)
    e_row = np.full(n, np.nan, dtype)
    total = _numba_math.exp_shifted_sum(row, top, e_row, ahead)
    expected = np.exp(row.astype(np.float64) - top)
    assert_close(e_row, expected, what="exp(row - top)")
    assert abs(total - expected.sum()) <= 1e-5 * expected.sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_softmax_into_a_strided_out_never_streams(dtype, rng, monkeypatch):
    """Streaming stores write 64 contiguous bytes: an out whose rows are not contiguous
    (every other column of a larger array) takes plain stores even past STREAM_MIN_BYTES
    (forced to 0 here), and nothing between its columns is written."""
    from mlpfast.kernels import _numba_math
    monkeypatch.setattr(_numba_math, "STREAM_MIN_BYTES", 0)
    x = (3 * rng.standard_normal((5, 40))).astype(dtype)
    base = np.full((5, 80), 7.0, dtype)
    out = base[:, ::2]
    activations.VARIANTS["numba"]["softmax"].forward(x, out)
    assert_close(out, activations.REFERENCE["softmax"].forward(x.astype(np.float64)))
    assert (base[:, 1::2] == 7).all()
