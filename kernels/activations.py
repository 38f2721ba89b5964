"""Activations, forward and backward, on (batch, features) arrays.

Versions:
    numpy   the references below: one NumPy expression per formula
    numba   one parallel Numba kernel per formula (float32 exp/tanh/erf by polynomials)

For each name, ``VARIANTS[variant][name]`` is an ``Activation(forward, backward)``:

    forward(x, out=None, **params)           -> y = f(x)
    backward(grad_y, x, y, out=None, **params) -> grad_x = grad_y * f'(x)

``backward`` receives both the input x and the output y, so each derivative is
written in its cheapest form (sigmoid' = y(1-y), tanh' = 1-y^2, relu' = [x>0]).
``out`` may be the same array as ``x`` (forward) or ``grad_y`` (backward).
Only ``leaky_relu`` takes a parameter: ``negative_slope`` (default 0.01).

``DERIVATIVE`` is the one table of what each activation's derivative is written with:
    "output"  f' from y = f(z) alone: identity 1, relu [y > 0], sigmoid y (1 - y),
              tanh 1 - y^2. A Linear layer may apply f in its epilogue and keep only y
              (``FUSABLE``); the input gradient of the next layer multiplies by f'(y).
    "input"   f' needs z (leaky_relu, gelu, gelu_tanh).
    "row"     softmax: f' couples a row.
``c_code(name)`` is the activation's MLPF_ACT_* code in csrc/gemm.h, read from the C library.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from . import _numba_config
from . import _numba_math as nm
from ._c_library import c_library
from ._checks import check_float_array, check_out, check_same_shape
from ._numba_config import get_threads, parallel_call

Activation = namedtuple("Activation", ["forward", "backward"])

DERIVATIVE = {"identity": "output", "sigmoid": "output", "tanh": "output", "relu": "output",
              "leaky_relu": "input", "gelu": "input", "gelu_tanh": "input", "softmax": "row"}
NAMES = tuple(DERIVATIVE)
FUSABLE = tuple(name for name, written_with in DERIVATIVE.items() if written_with == "output")
ELEMENTWISE = tuple(name for name, written_with in DERIVATIVE.items() if written_with != "row")


def c_code(name):
    """MLPF_ACT_<NAME> of csrc/gemm.h (from the loaded C library): the code of ``name`` in
    every C entry point and in the compiled training step."""
    return getattr(c_library().lib, f"MLPF_ACT_{name.upper()}")

_erf = np.frompyfunc(math.erf, 1, 1)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_C = 0.044715


def _result(values, out):
    if out is None:
        return values
    out[...] = values
    return out


def erf_ref(x):
    """erf(x) elementwise, exact to the last bit of math.erf (slow, for reference)."""
    return _erf(x).astype(x.dtype)


def identity_forward(x, out=None):
    return _result(x.copy() if out is None else x, out)


def identity_backward(grad_y, x, y, out=None):
    return _result(grad_y.copy() if out is None else grad_y, out)


def sigmoid_forward(x, out=None):
    # y = 1 / (1 + exp(-x)), written as 0.5 * (1 + tanh(x / 2)) so it never overflows
    return _result(0.5 * (1.0 + np.tanh(0.5 * x)), out)


def sigmoid_backward(grad_y, x, y, out=None):
    return _result(grad_y * y * (1.0 - y), out)


def tanh_forward(x, out=None):
    return _result(np.tanh(x), out)


def tanh_backward(grad_y, x, y, out=None):
    return _result(grad_y * (1.0 - y * y), out)


def relu_forward(x, out=None):
    return _result(np.maximum(x, 0), out)


def relu_backward(grad_y, x, y, out=None):
    return _result(np.where(x > 0, grad_y, 0).astype(grad_y.dtype), out)


def leaky_relu_forward(x, out=None, negative_slope=0.01):
    return _result(np.where(x > 0, x, negative_slope * x).astype(x.dtype), out)


def leaky_relu_backward(grad_y, x, y, out=None, negative_slope=0.01):
    return _result(np.where(x > 0, grad_y, negative_slope * grad_y).astype(grad_y.dtype), out)


def gelu_forward(x, out=None):
    # y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    return _result(0.5 * x * (1.0 + erf_ref(x / math.sqrt(2.0))), out)


def gelu_backward(grad_y, x, y, out=None):
    # y' = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
    cdf = 0.5 * (1.0 + erf_ref(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return _result(grad_y * (cdf + x * pdf), out)


def gelu_tanh_forward(x, out=None):
    # y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x ** 3)
    return _result(0.5 * x * (1.0 + np.tanh(u)), out)


def gelu_tanh_backward(grad_y, x, y, out=None):
    # y' = 0.5 (1 + t) + 0.5 x (1 - t^2) u',  t = tanh(u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    t = np.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x ** 3))
    du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
    return _result(grad_y * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du), out)


def softmax_forward(x, out=None):
    # y_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max_j x_ij), over each row
    e = np.exp(x - x.max(axis=1, keepdims=True, initial=-np.inf))
    return _result(e / e.sum(axis=1, keepdims=True), out)


def softmax_backward(grad_y, x, y, out=None):
    # grad_x_ij = y_ij * (g_ij - sum_k g_ik y_ik)
    return _result(y * (grad_y - (grad_y * y).sum(axis=1, keepdims=True)), out)


def _check(arrays, out):
    """arrays: [(name, 2-D float array)] of one shape and dtype; out None or of that shape
    and dtype (the checks of every variant)."""
    first_name, first = arrays[0]
    check_float_array(first, first_name, 2)
    for name, a in arrays[1:]:
        check_float_array(a, name, 2)
        check_same_shape(first, first_name, a, name)
        if a.dtype != first.dtype:
            raise TypeError(f"{name} must be {first.dtype}, got {a.dtype}")
    if out is not None:
        check_out(out, first.shape, first.dtype)


def _checked(name):
    """The reference pair of ``name``, checking its arguments first (the formulas above
    stay bare): 2-D float arrays of one shape and dtype; out of that shape and dtype."""
    forward, backward = globals()[f"{name}_forward"], globals()[f"{name}_backward"]

    def checked_forward(x, out=None, **params):
        _check([("x", x)], out)
        return forward(x, out, **params)

    def checked_backward(grad_y, x, y, out=None, **params):
        _check([("grad_y", grad_y), ("x", x), ("y", y)], out)
        return backward(grad_y, x, y, out, **params)

    checked_forward.__doc__, checked_backward.__doc__ = forward.__doc__, backward.__doc__
    return Activation(checked_forward, checked_backward)


REFERENCE = {name: _checked(name) for name in NAMES}

VARIANTS = {"numpy": REFERENCE}



# --- Numba ------------------------------------------------------------------------------
#
# One kernel per formula: prange over rows, a vectorized loop over columns, written into
# ``out`` (which may be x for forward, grad_y for backward). exp/tanh/sigmoid/Phi come
# from _numba_math: polynomial and rational approximations in float32 (they vectorize;
# libm does not), libm in float64. Their speed: bench/README.md, "Float32 math".

@njit(parallel=True, fastmath=True, cache=True)
def _copy_numba(x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j]


@njit(parallel=True, fastmath=True, cache=True)
def _sigmoid_forward_numba(x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = nm.sigmoid(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _sigmoid_backward_numba(grad_y, y, out):
    one = y.dtype.type(1)
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            out[i, j] = grad_y[i, j] * y[i, j] * (one - y[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _tanh_forward_numba(x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = nm.tanh(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _tanh_forward_numba_prefetching(x, out):
    rows, cols = x.shape
    for i in prange(rows):
        ahead = nm.row_ahead(x, i, rows)
        for start in range(0, cols, nm.BURST):
            nm.prefetch_burst(ahead, start)
            for j in nm.burst(start, cols):
                out[i, j] = nm.tanh(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _tanh_backward_numba(grad_y, y, out):
    one = y.dtype.type(1)
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            out[i, j] = grad_y[i, j] * (one - y[i, j] * y[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _relu_forward_numba(x, out):
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = max(x[i, j], zero)


@njit(parallel=True, fastmath=True, cache=True)
def _leaky_relu_forward_numba(x, slope, out):
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j]
            out[i, j] = v if v > zero else slope * v


@njit(parallel=True, fastmath=True, cache=True)
def _leaky_relu_backward_numba(grad_y, x, slope, out):
    """relu backward is this with slope 0: grad_x = grad_y where x > 0, slope * grad_y else."""
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            g = grad_y[i, j]
            out[i, j] = g if x[i, j] > zero else slope * g


# tanh (forward, above), gelu and gelu_tanh do more math per value than moving it costs,
# and on large arrays the hardware prefetcher does not run far enough ahead: their
# *_prefetching twins go through each row in bursts and prefetch the rows ahead
# (_numba_math, "prefetching"). _run picks the twin when x has PREFETCH_MIN_BYTES or more
# and out overlaps no input: in place LLVM cannot vectorize the bursts (out and x alias),
# where it does vectorize the plain loop (one kernel holding both loops, the branch taken at
# run time, lost that too). Prefetching made the cheaper kernels slower: they have no twin
# (bench/README.md, "Prefetching twins of the activations").

def _gelu(v):
    """gelu(v) = v Phi(v)."""


@overload(_gelu, jit_options={"fastmath": True})
def _gelu_impl(v):
    return lambda v: v * nm.normal_cdf(v)


def _gelu_derivative(v):
    """gelu'(v) = Phi(v) + v phi(v), phi(v) = exp(-v^2 / 2) / sqrt(2 pi)."""


@overload(_gelu_derivative, jit_options={"fastmath": True})
def _gelu_derivative_impl(v):
    half, inv_sqrt_2pi = as_dtype(v).type(0.5), as_dtype(v).type(1.0 / math.sqrt(2.0 * math.pi))

    def derivative(v):
        pdf = inv_sqrt_2pi * nm.exp_nonpositive(-half * v * v)
        return nm.normal_cdf(v) + v * pdf
    return derivative


def _gelu_tanh(v):
    """0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = c0 (v + c1 v^3): one exp and one
    division, no sign handling; exp(-2u) is clamped, so the result -> 0 without overflow."""


@overload(_gelu_tanh, jit_options={"fastmath": True})
def _gelu_tanh_impl(v):
    one = as_dtype(v).type(1)
    k0 = as_dtype(v).type(-2 * SQRT_2_OVER_PI)
    k1 = as_dtype(v).type(-2 * SQRT_2_OVER_PI * GELU_TANH_C)
    return lambda v: v / (one + nm.exp(v * (k0 + k1 * v * v)))


def _gelu_tanh_derivative(v):
    """0.5 (1 + t) + 0.5 v (1 - t^2) u', t = tanh(u), u' = c0 (1 + 3 c1 v^2)."""


@overload(_gelu_tanh_derivative, jit_options={"fastmath": True})
def _gelu_tanh_derivative_impl(v):
    half, one, three = as_dtype(v).type(0.5), as_dtype(v).type(1), as_dtype(v).type(3)
    c0, c1 = as_dtype(v).type(SQRT_2_OVER_PI), as_dtype(v).type(GELU_TANH_C)

    def derivative(v):
        t = nm.tanh(c0 * (v + c1 * v * v * v))
        du = c0 * (one + three * c1 * v * v)
        return half * (one + t) + half * v * (one - t * t) * du
    return derivative


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_forward_numba(x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _gelu(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_forward_numba_prefetching(x, out):
    rows, cols = x.shape
    for i in prange(rows):
        ahead = nm.row_ahead(x, i, rows)
        for start in range(0, cols, nm.BURST):
            nm.prefetch_burst(ahead, start)
            for j in nm.burst(start, cols):
                out[i, j] = _gelu(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_backward_numba(grad_y, x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = grad_y[i, j] * _gelu_derivative(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_backward_numba_prefetching(grad_y, x, out):
    rows, cols = x.shape
    for i in prange(rows):
        ahead, grad_ahead = nm.row_ahead(x, i, rows), nm.row_ahead(grad_y, i, rows)
        for start in range(0, cols, nm.BURST):
            nm.prefetch_burst(ahead, start)
            nm.prefetch_burst(grad_ahead, start)
            for j in nm.burst(start, cols):
                out[i, j] = grad_y[i, j] * _gelu_derivative(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_tanh_forward_numba(x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _gelu_tanh(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_tanh_forward_numba_prefetching(x, out):
    rows, cols = x.shape
    for i in prange(rows):
        ahead = nm.row_ahead(x, i, rows)
        for start in range(0, cols, nm.BURST):
            nm.prefetch_burst(ahead, start)
            for j in nm.burst(start, cols):
                out[i, j] = _gelu_tanh(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_tanh_backward_numba(grad_y, x, out):
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = grad_y[i, j] * _gelu_tanh_derivative(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_tanh_backward_numba_prefetching(grad_y, x, out):
    rows, cols = x.shape
    for i in prange(rows):
        ahead, grad_ahead = nm.row_ahead(x, i, rows), nm.row_ahead(grad_y, i, rows)
        for start in range(0, cols, nm.BURST):
            nm.prefetch_burst(ahead, start)
            nm.prefetch_burst(grad_ahead, start)
            for j in nm.burst(start, cols):
                out[i, j] = grad_y[i, j] * _gelu_tanh_derivative(x[i, j])


@njit(parallel=True, fastmath=True, cache=True)
def _softmax_forward_numba(x, scratch, stream, out):
    """Per row: max, e = exp(x - max) and its sum, out = e / sum. Rows are split into one
    band per row of scratch (_numba_math.scratch_rows). e goes to the band's scratch row
    (at the row's offset in a page: _numba_math.same_page_offset), or to out itself when
    scratch has rows of 0 (_row_scratch). With stream, out is written by streaming stores
    (_numba_math.scale_row) and the rows ahead are prefetched."""
    rows, bands = x.shape[0], scratch.shape[0]
    for t in prange(bands):
        end = (t + 1) * rows // bands
        for i in range(t * rows // bands, end):
            row, dst = x[i], out[i]
            e_row = nm.same_page_offset(scratch[t], row) if scratch.shape[1] else dst
            ahead = nm.row_ahead(x, i, end) if stream else row[:0]
            total = nm.exp_shifted_sum(row, nm.row_max(row), e_row, ahead)
            nm.scale_row(dst, e_row, x.dtype.type(1) / total, stream)
        if stream:
            nm.stream_fence()


@njit(parallel=True, fastmath=True, cache=True)
def _softmax_backward_numba(grad_y, y, out):
    for i in prange(y.shape[0]):
        g, p, dst = grad_y[i], y[i], out[i]
        dot = y.dtype.type(0)
        for j in range(p.shape[0]):
            dot += g[j] * p[j]
        for j in range(p.shape[0]):
            dst[j] = p[j] * (g[j] - dot)


def _row_scratch(x, out):
    """(scratch, stream) for a row-wise kernel reading x and writing out (rows, cols): one
    band per thread; scratch rows for e when out is large enough for streaming stores, or
    when out overlaps x (e written into out would alias the x being read: the exp loop
    then does not vectorize)."""
    bands = max(1, min(get_threads(), out.shape[0]))
    stream = out.nbytes >= nm.STREAM_MIN_BYTES and out.flags.c_contiguous
    need_rows = stream or np.may_share_memory(x, out)
    return nm.scratch_rows(bands, out.shape[1] if need_rows else 0, out.dtype), stream


def _run(kernel, out, arrays, *scalars, streamed=False, unused=(), prefetching=None):
    """Checks arrays and unused (arguments the formula does not need: a backward gets
    grad_y, x and y) like the reference; runs kernel(*arrays, *scalars, out) with out made
    if None; returns out. streamed: the kernel takes (scratch, stream) of
    _row_scratch(x, out) before out, x the first of arrays. prefetching: the kernel's twin
    that prefetches, run instead on arrays of PREFETCH_MIN_BYTES and more that out does
    not overlap."""
    _check([*arrays, *unused], out)
    first = arrays[0][1]
    if out is None:
        out = np.empty_like(first)
    if (prefetching is not None and first.nbytes >= nm.PREFETCH_MIN_BYTES
            and not any(np.may_share_memory(out, a) for _, a in arrays)):
        kernel = prefetching
    scalars = tuple(first.dtype.type(v) for v in scalars)
    extra = _row_scratch(first, out) if streamed else ()
    parallel_call(kernel, *(a for _, a in arrays), *scalars, *extra, out)
    return out


def identity_forward_numba(x, out=None):
    if out is x:
        _check([("x", x)], out)
        return x
    return _run(_copy_numba, out, [("x", x)])


def identity_backward_numba(grad_y, x, y, out=None):
    if out is grad_y:
        _check([("grad_y", grad_y), ("x", x), ("y", y)], out)
        return grad_y
    return _run(_copy_numba, out, [("grad_y", grad_y)], unused=[("x", x), ("y", y)])


def sigmoid_forward_numba(x, out=None):
    return _run(_sigmoid_forward_numba, out, [("x", x)])


def sigmoid_backward_numba(grad_y, x, y, out=None):
    return _run(_sigmoid_backward_numba, out, [("grad_y", grad_y), ("y", y)],
                unused=[("x", x)])


def tanh_forward_numba(x, out=None):
    return _run(_tanh_forward_numba, out, [("x", x)],
                prefetching=_tanh_forward_numba_prefetching)


def tanh_backward_numba(grad_y, x, y, out=None):
    return _run(_tanh_backward_numba, out, [("grad_y", grad_y), ("y", y)],
                unused=[("x", x)])


def relu_forward_numba(x, out=None):
    return _run(_relu_forward_numba, out, [("x", x)])


def relu_backward_numba(grad_y, x, y, out=None):
    return _run(_leaky_relu_backward_numba, out, [("grad_y", grad_y), ("x", x)], 0.0,
                unused=[("y", y)])


def leaky_relu_forward_numba(x, out=None, negative_slope=0.01):
    return _run(_leaky_relu_forward_numba, out, [("x", x)], negative_slope)


def leaky_relu_backward_numba(grad_y, x, y, out=None, negative_slope=0.01):
    return _run(_leaky_relu_backward_numba, out, [("grad_y", grad_y), ("x", x)],
                negative_slope, unused=[("y", y)])


def gelu_forward_numba(x, out=None):
    return _run(_gelu_forward_numba, out, [("x", x)],
                prefetching=_gelu_forward_numba_prefetching)


def gelu_backward_numba(grad_y, x, y, out=None):
    return _run(_gelu_backward_numba, out, [("grad_y", grad_y), ("x", x)],
                unused=[("y", y)], prefetching=_gelu_backward_numba_prefetching)


def gelu_tanh_forward_numba(x, out=None):
    return _run(_gelu_tanh_forward_numba, out, [("x", x)],
                prefetching=_gelu_tanh_forward_numba_prefetching)


def gelu_tanh_backward_numba(grad_y, x, y, out=None):
    return _run(_gelu_tanh_backward_numba, out, [("grad_y", grad_y), ("x", x)],
                unused=[("y", y)], prefetching=_gelu_tanh_backward_numba_prefetching)


def softmax_forward_numba(x, out=None):
    return _run(_softmax_forward_numba, out, [("x", x)], streamed=True)


def softmax_backward_numba(grad_y, x, y, out=None):
    return _run(_softmax_backward_numba, out, [("grad_y", grad_y), ("y", y)],
                unused=[("x", x)])


NUMBA = {name: Activation(globals()[f"{name}_forward_numba"], globals()[f"{name}_backward_numba"])
         for name in NAMES}
VARIANTS["numba"] = NUMBA

_numba_config.stamp_kernel_caches(globals())
