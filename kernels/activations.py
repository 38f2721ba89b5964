"""Activations, forward and backward, on (batch, features) arrays.

Versions:
    numpy   the references below: one NumPy expression per formula

For each name, ``VARIANTS[variant][name]`` is an ``Activation(forward, backward)``:

    forward(x, out=None, **params)           -> y = f(x)
    backward(grad_y, x, y, out=None, **params) -> grad_x = grad_y * f'(x)

``backward`` receives both the input x and the output y, so each derivative is
written in its cheapest form (sigmoid' = y(1-y), tanh' = 1-y^2, relu' = [x>0]).
``out`` may be the same array as ``x`` (forward) or ``grad_y`` (backward).
Only ``leaky_relu`` takes a parameter: ``negative_slope`` (default 0.01).
"""
import math
from collections import namedtuple

import numpy as np

Activation = namedtuple("Activation", ["forward", "backward"])

NAMES = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh", "softmax")

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
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return _result(e / e.sum(axis=1, keepdims=True), out)


def softmax_backward(grad_y, x, y, out=None):
    # grad_x_ij = y_ij * (g_ij - sum_k g_ik y_ik)
    return _result(y * (grad_y - (grad_y * y).sum(axis=1, keepdims=True)), out)


REFERENCE = {name: Activation(globals()[f"{name}_forward"], globals()[f"{name}_backward"])
             for name in NAMES}

VARIANTS = {"numpy": REFERENCE}
