"""Linear layer kernels: fused forward y = act(x @ w.T + b) and the bias gradient.

Shapes: x is (B, in), w is (out, in) as in torch.nn.Linear, b is (out,), y is (B, out).

Versions:
    numpy   forward_ref, bias_grad_ref    references (GEMM, then bias, then activation)
    numba   forward_numba, bias_grad_numba  Numba GEMM with bias + relu in its epilogue
                                          (other activations in place right after);
                                          bias gradient as a parallel column reduction
    c       forward_c                     one C GEMM call with bias and activation in the
                                          epilogue (activations "identity" and "relu")
    cpu     forward_cpu                   forward_c, other activations by Numba in place

``VARIANTS[variant]`` maps op names to functions:
    "linear_forward"  f(x, w, b, activation="identity", out=None) -> y
    "bias_grad"  f(grad_y, out=None) -> grad_b = sum over the batch of grad_y   (out,)
Each variant lists in ``FUSED[variant]`` the activations its forward accepts.
"""
import threading

import numpy as np
from numba import njit, prange

from . import _numba_config, activations, gemm
from ._checks import check_float_array, check_linear_args, check_out


def forward_ref(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b) for any activation in activations.NAMES."""
    check_linear_args(x, w, b, activation, out, activations.NAMES)
    z = x @ w.T
    if b is not None:
        z += b
    y = activations.REFERENCE[activation].forward(z, out=z)
    if out is None:
        return y
    out[...] = y
    return out


def bias_grad_ref(grad_y, out=None):
    """grad_b_j = sum_i grad_y_ij."""
    check_float_array(grad_y, "grad_y", 2)
    check_out(out, (grad_y.shape[1],), grad_y.dtype, inputs=(("grad_y", grad_y),))
    total = grad_y.sum(axis=0)
    if out is None:
        return total
    out[...] = total
    return out


C_FUSED = ("identity", "relu")


def forward_c(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b) in one C GEMM call; bias and relu applied in the epilogue."""
    check_linear_args(x, w, b, activation, out, C_FUSED)
    bias = None if b is None else np.ascontiguousarray(b)
    return gemm.gemm_c_fused(x, w, out, False, True, 1.0, 0.0, bias, C_FUSED.index(activation))


VARIANTS = {"numpy": {"linear_forward": forward_ref, "bias_grad": bias_grad_ref}}
FUSED = {"numpy": activations.NAMES}
if gemm.c_available():
    VARIANTS["c"] = {"linear_forward": forward_c}
    FUSED["c"] = C_FUSED


# --- Numba ------------------------------------------------------------------------------
#
# forward_numba: the Numba GEMM with bias and relu in its epilogue (identity, relu); any
# other activation runs in place on the GEMM's output, while it is still in cache.
# bias_grad_numba: column sums as a parallel reduction; each thread sums a band of
# rows into its own (out,) partial, then the partials are added.

@njit(fastmath=True, cache=True)
def _column_sums(grad_y, row_start, row_end, partial):
    """partial[j] = sum over rows [row_start, row_end) of grad_y[i, j]."""
    partial[:] = 0
    for i in range(row_start, row_end):
        row = grad_y[i]
        for j in range(row.shape[0]):
            partial[j] += row[j]


@njit(parallel=True, fastmath=True, cache=True)
def _bias_grad_numba(grad_y, partials, out):
    threads = partials.shape[0]
    rows = grad_y.shape[0]
    for t in prange(threads):
        _column_sums(grad_y, t * rows // threads, (t + 1) * rows // threads, partials[t])
    for j in range(out.shape[0]):
        total = partials[0, j]
        for t in range(1, threads):
            total += partials[t, j]
        out[j] = total


class _Partials(threading.local):
    """Per Python thread: reused (threads, out) buffers for bias_grad_numba."""

    def get(self, threads, cols, dtype):
        buf = self.__dict__.get(dtype)
        if buf is None or buf.shape[0] < threads or buf.shape[1] < cols:
            shape = (threads, cols) if buf is None else (max(threads, buf.shape[0]),
                                                          max(cols, buf.shape[1]))
            buf = self.__dict__[dtype] = np.empty(shape, dtype=dtype)
        return buf[:threads, :cols]


_PARTIALS = _Partials()
BIAS_GRAD_ROWS_PER_THREAD = 32      # fewer rows than this per thread: fewer threads


def bias_grad_numba(grad_y, out=None):
    """grad_b_j = sum_i grad_y_ij, in parallel over bands of rows."""
    check_float_array(grad_y, "grad_y", 2)
    check_out(out, (grad_y.shape[1],), grad_y.dtype, inputs=(("grad_y", grad_y),))
    if out is None:
        out = np.empty(grad_y.shape[1], dtype=grad_y.dtype)
    threads = max(1, min(_numba_config.get_threads(),
                         grad_y.shape[0] // BIAS_GRAD_ROWS_PER_THREAD))
    partials = _PARTIALS.get(threads, grad_y.shape[1], grad_y.dtype)
    _numba_config.parallel_call(_bias_grad_numba, grad_y, partials, out)
    return out


def forward_numba(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b): Numba GEMM with bias (+ relu) in its epilogue."""
    check_linear_args(x, w, b, activation, out, activations.NAMES)
    bias = None if b is None else np.ascontiguousarray(b)
    fused = activation if activation in gemm.ACT_CODES else "identity"
    y = gemm.gemm_numba_fused(x, w, out, False, True, 1.0, 0.0, bias, fused)
    if fused != activation:
        activations.NUMBA[activation].forward(y, y)
    return y


VARIANTS["numba"] = {"linear_forward": forward_numba, "bias_grad": bias_grad_numba}
FUSED["numba"] = activations.NAMES


def forward_cpu(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b): the C GEMM with bias (+ relu) in its epilogue; any other
    activation by its Numba kernel in place. The "cpu" backend's linear forward."""
    check_linear_args(x, w, b, activation, out, activations.NAMES)
    fused = activation if activation in C_FUSED else "identity"
    y = forward_c(x, w, b, fused, out)
    if fused != activation:
        activations.NUMBA[activation].forward(y, y)
    return y


if gemm.c_available():
    VARIANTS["cpu"] = {"linear_forward": forward_cpu}
    FUSED["cpu"] = activations.NAMES
