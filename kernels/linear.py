"""Linear layer kernels: fused forward y = act(x @ w.T + b), the bias gradient, and the
input gradient with the previous layer's activation derivative folded in.

Shapes: x is (B, in), w is (out, in) as in torch.nn.Linear, b is (out,), y is (B, out).

Versions:
    numpy   forward_ref, bias_grad_ref    references (GEMM, then bias, then activation)
    numba   forward_numba, bias_grad_numba  Numba GEMM with bias + relu in its epilogue
                                          (other activations in place right after);
                                          bias gradient as a parallel column reduction
    c       forward_c                     one C GEMM call with bias and activation in the
                                          epilogue (activations "identity" and "relu")
    cpu     forward_cpu                   forward_c, other activations by Numba in place

    grad_input: for a Linear layer whose input x = f(z) is the output of the previous
    layer's activation f,  dz = (grad_y @ w) * f'(z),  with f'(z) written with x alone
    (activations.FUSABLE): identity 1, relu [x > 0], sigmoid x (1 - x), tanh 1 - x^2
    numpy   grad_input_ref    GEMM, then the activation's reference backward
    numba   grad_input_numba  Numba GEMM, then the Numba activation backward in place
    c, cpu  grad_input_c      one C GEMM call; f' multiplies each tile of dz while it is
                              in L1 (mlpf_sgemm_dact), so dz costs no extra pass

``VARIANTS[variant]`` maps op names to functions:
    "linear_forward"  f(x, w, b, activation="identity", out=None) -> y
    "bias_grad"  f(grad_y, out=None) -> grad_b = sum over the batch of grad_y   (out,)
    "linear_grad_input"  f(grad_y, w, activation="identity", x=None, out=None) -> dz (B, in)
                 x (B, in) is the layer's input f(z); it may be None for identity
Each variant lists in ``FUSED[variant]`` the activations its forward accepts.
"""
import threading

import numpy as np
from numba import njit, prange

from . import _numba_config, activations, gemm
from . import _numba_math as nm
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


def check_grad_input_args(grad_y, w, activation, x, out, check_array=None,
                          check_output=None):
    """grad_y (B, out), w (out, in), x (B, in) (None allowed for identity), out (B, in);
    check_array / check_output as in check_linear_args."""
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(grad_y, "grad_y", 2)
    check_array(w, "w", 2)
    if grad_y.dtype != w.dtype:
        raise TypeError(f"grad_y and w must have the same dtype, got {grad_y.dtype} and "
                        f"{w.dtype}")
    if grad_y.shape[1] != w.shape[0]:
        raise ValueError(f"grad_y has {grad_y.shape[1]} columns but w has {w.shape[0]} output "
                         f"features (w is (out_features, in_features) = {tuple(w.shape)})")
    if activation not in activations.FUSABLE:
        raise ValueError(f"activation must be one of {activations.FUSABLE} (derivative "
                         f"from the output), got {activation!r}")
    shape = (grad_y.shape[0], w.shape[1])
    if x is None:
        if activation != "identity":
            raise ValueError(f"x (the layer's input, {activation}'s output) is needed for "
                             f"activation {activation!r}")
    else:
        check_array(x, "x", 2)
        if tuple(x.shape) != shape or x.dtype != grad_y.dtype:
            raise ValueError(f"x must be {grad_y.dtype} of shape {shape}, got {x.dtype} "
                             f"{tuple(x.shape)}")
    check_output(out, shape, grad_y.dtype, inputs=(("grad_y", grad_y), ("w", w), ("x", x)))


def grad_input_ref(grad_y, w, activation="identity", x=None, out=None):
    """dz = (grad_y @ w) * f'(z), f' from the layer input x = f(z)."""
    check_grad_input_args(grad_y, w, activation, x, out)
    dz = grad_y @ w
    if activation != "identity":
        dz = activations.REFERENCE[activation].backward(dz, x, x)
    if out is None:
        return dz
    out[...] = dz
    return out


def compose_grad_input(gemm_fn, activation_kernels, check_array=None, check_output=None):
    """linear_grad_input from a backend's gemm and activation backward (two passes)."""
    def grad_input(grad_y, w, activation="identity", x=None, out=None):
        check_grad_input_args(grad_y, w, activation, x, out, check_array, check_output)
        dz = gemm_fn(grad_y, w, out)
        if activation != "identity":
            activation_kernels[activation].backward(dz, x, x, dz)
        return dz
    return grad_input


def forward_c(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b) in one C GEMM call; bias and the activation (gemm.C_EPILOGUE)
    applied in the epilogue."""
    check_linear_args(x, w, b, activation, out, gemm.C_EPILOGUE)
    bias = None if b is None else np.ascontiguousarray(b)
    return gemm.gemm_c_fused(x, w, out, False, True, 1.0, 0.0, bias,
                             activations.c_code(activation))


def grad_input_c(grad_y, w, activation="identity", x=None, out=None):
    """dz = (grad_y @ w) * f'(z) in one C GEMM call (f' applied tile by tile)."""
    check_grad_input_args(grad_y, w, activation, x, out)
    if activation == "identity":
        return gemm.gemm_c(grad_y, w, out)
    if out is None:
        out = np.empty((grad_y.shape[0], w.shape[1]), dtype=grad_y.dtype)
    return gemm.gemm_c_dact(grad_y, w, out, x, activations.c_code(activation))


VARIANTS = {"numpy": {"linear_forward": forward_ref, "bias_grad": bias_grad_ref,
                      "linear_grad_input": grad_input_ref}}
FUSED = {"numpy": activations.NAMES}
if gemm.c_available():
    VARIANTS["c"] = {"linear_forward": forward_c, "linear_grad_input": grad_input_c}
    FUSED["c"] = gemm.C_EPILOGUE


# --- Numba ------------------------------------------------------------------------------
#
# forward_numba: the Numba GEMM with bias and relu in its epilogue (identity, relu); any
# other activation runs in place on the GEMM's output, while it is still in cache.
# bias_grad_numba: column sums as a parallel reduction; each thread sums a band of
# rows into its own (out,) partial, then the partials are added. The partials sit at the
# page offset of the rows they add (no 4K aliasing) and never share a cache line (no false
# sharing between the threads): bench/README.md, "Bias gradient partials".

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
    """Band t of rows sums into its slice of partials[t] (_numba_math.scratch_rows) at the
    page offset of the band's first row (_numba_math.same_page_offset)."""
    threads = partials.shape[0]
    rows = grad_y.shape[0]
    for t in prange(threads):
        start = t * rows // threads
        _column_sums(grad_y, start, (t + 1) * rows // threads,
                     nm.same_page_offset(partials[t], grad_y[start]))
    out[:] = 0
    for t in range(threads):
        partial = nm.same_page_offset(partials[t], grad_y[t * rows // threads])
        for j in range(out.shape[0]):
            out[j] += partial[j]


class _Partials(threading.local):
    """Per Python thread: reused partial sums for bias_grad_numba, one scratch row
    (_numba_math.scratch_rows) per thread."""

    def get(self, threads, cols, dtype):
        buf = self.__dict__.get((dtype, cols))
        if buf is None or buf.shape[0] < threads:
            buf = self.__dict__[(dtype, cols)] = nm.scratch_rows(threads, cols, dtype)
        return buf[:threads]


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
    fused = activation if activation in gemm.NUMBA_EPILOGUE else "identity"
    y = gemm.gemm_numba_fused(x, w, out, False, True, 1.0, 0.0, bias, fused)
    if fused != activation:
        activations.NUMBA[activation].forward(y, y)
    return y


VARIANTS["numba"] = {"linear_forward": forward_numba, "bias_grad": bias_grad_numba,
                     "linear_grad_input": compose_grad_input(gemm.gemm_numba, activations.NUMBA)}
FUSED["numba"] = activations.NAMES


def forward_cpu(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b): the C GEMM with bias (+ relu) in its epilogue; any other
    activation by its Numba kernel in place. The "cpu" backend's linear forward."""
    check_linear_args(x, w, b, activation, out, activations.NAMES)
    fused = activation if activation in gemm.C_EPILOGUE else "identity"
    y = forward_c(x, w, b, fused, out)
    if fused != activation:
        activations.NUMBA[activation].forward(y, y)
    return y


if gemm.c_available():
    VARIANTS["cpu"] = {"linear_forward": forward_cpu, "linear_grad_input": grad_input_c}
    FUSED["cpu"] = activations.NAMES

_numba_config.stamp_kernel_caches(globals())
