"""Linear layer kernels: fused forward y = act(x @ w.T + b) and the bias gradient.

Shapes: x is (B, in), w is (out, in) as in torch.nn.Linear, b is (out,), y is (B, out).

Versions:
    numpy   forward_ref, bias_grad_ref    references (GEMM, then bias, then activation)
    c       forward_c                     one C GEMM call with bias and activation in the
                                          epilogue (activations "identity" and "relu")

``VARIANTS[variant]`` maps op names to functions:
    "linear_forward"  f(x, w, b, activation="identity", out=None) -> y
    "bias_grad"  f(grad_y, out=None) -> grad_b = sum over the batch of grad_y   (out,)
Each variant lists in ``FUSED[variant]`` the activations its forward accepts.
"""
import numpy as np

from . import activations, gemm
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
