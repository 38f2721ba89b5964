"""Activations on the GPU, forward and backward, on (batch, features) device arrays.

Same contract as ``mlpfast.kernels.activations`` (``Activation(forward, backward)`` with
``forward(x, out=None, **params)`` and ``backward(grad_y, x, y, out=None, **params)``; ``out``
may be ``x`` / ``grad_y``), checked against its NumPy references.

Versions:
    cuda   elementwise: one grid-stride kernel per formula, each formula a device function
           (``DEVICE_FORWARD`` / ``DEVICE_BACKWARD``) that the GEMM epilogue reuses;
           softmax: one thread per row (max, sum of exponentials, then the row).
Scalar formulas run in float64 and are rounded to the array's dtype when stored, except
tanh_f: math.tanh of a float32 is float32 (tanhf).
"""
import math

from numba import cuda

from ..activations import GELU_TANH_C, NAMES, SQRT_2_OVER_PI, Activation
from ._device import blocks_for, check_device_float, check_device_out, THREADS_PER_BLOCK

INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --- formulas: y = f(x), and grad_x = grad_y * f'(x) from (grad_y, x, y); p = negative_slope ---

@cuda.jit(device=True)
def identity_f(x, p):
    return x


@cuda.jit(device=True)
def identity_df(g, x, y, p):
    return g


@cuda.jit(device=True)
def sigmoid_f(x, p):
    return 0.5 * (1.0 + math.tanh(0.5 * x))          # = 1 / (1 + exp(-x)), never overflows


@cuda.jit(device=True)
def sigmoid_df(g, x, y, p):
    return g * y * (1.0 - y)


@cuda.jit(device=True)
def tanh_f(x, p):
    return math.tanh(x)


@cuda.jit(device=True)
def tanh_df(g, x, y, p):
    return g * (1.0 - y * y)


@cuda.jit(device=True)
def relu_f(x, p):
    return x if x > 0 else 0.0


@cuda.jit(device=True)
def relu_df(g, x, y, p):
    return g if x > 0 else 0.0


@cuda.jit(device=True)
def leaky_relu_f(x, p):
    return x if x > 0 else p * x


@cuda.jit(device=True)
def leaky_relu_df(g, x, y, p):
    return g if x > 0 else p * g


@cuda.jit(device=True)
def gelu_f(x, p):
    return 0.5 * x * (1.0 + math.erf(x * INV_SQRT_2))     # x * Phi(x)


@cuda.jit(device=True)
def gelu_df(g, x, y, p):
    cdf = 0.5 * (1.0 + math.erf(x * INV_SQRT_2))          # Phi(x)
    pdf = math.exp(-0.5 * x * x) * INV_SQRT_2PI           # phi(x)
    return g * (cdf + x * pdf)


@cuda.jit(device=True)
def gelu_tanh_f(x, p):
    u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
    return 0.5 * x * (1.0 + math.tanh(u))


@cuda.jit(device=True)
def gelu_tanh_df(g, x, y, p):
    # 0.5 (1 + t) + 0.5 x (1 - t^2) u',  t = tanh(u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    t = math.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
    du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


ELEMENTWISE = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh")
DEVICE_FORWARD = {name: globals()[f"{name}_f"] for name in ELEMENTWISE}
DEVICE_BACKWARD = {name: globals()[f"{name}_df"] for name in ELEMENTWISE}


# --- kernels ------------------------------------------------------------------------------

def _forward_kernel(f):
    @cuda.jit
    def forward(x, out, p):
        # x, out: (rows, cols); one thread per element, grid-stride
        rows, cols = x.shape
        for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
            i = e // cols
            j = e - i * cols
            out[i, j] = f(x[i, j], p)
    return forward


def _backward_kernel(df):
    @cuda.jit
    def backward(grad_y, x, y, out, p):
        rows, cols = x.shape
        for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
            i = e // cols
            j = e - i * cols
            out[i, j] = df(grad_y[i, j], x[i, j], y[i, j], p)
    return backward


@cuda.jit
def _softmax_forward_kernel(x, out):
    # out_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max_j x_ij); one thread per row i
    rows, cols = x.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        top = x[i, 0]
        for j in range(1, cols):
            top = max(top, x[i, j])
        total = 0.0
        for j in range(cols):
            total += math.exp(x[i, j] - top)
        for j in range(cols):
            out[i, j] = math.exp(x[i, j] - top) / total


@cuda.jit
def _softmax_backward_kernel(grad_y, y, out):
    # out_ij = y_ij (g_ij - sum_k g_ik y_ik); one thread per row i
    rows, cols = y.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        dot = 0.0
        for j in range(cols):
            dot += grad_y[i, j] * y[i, j]
        for j in range(cols):
            out[i, j] = y[i, j] * (grad_y[i, j] - dot)


_FORWARD_KERNELS = {name: _forward_kernel(DEVICE_FORWARD[name]) for name in ELEMENTWISE}
_BACKWARD_KERNELS = {name: _backward_kernel(DEVICE_BACKWARD[name]) for name in ELEMENTWISE}


# --- wrappers with the registry's signatures ---------------------------------------------

def _negative_slope(name, params):
    allowed = ("negative_slope",) if name == "leaky_relu" else ()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"{name} takes {'only negative_slope' if allowed else 'no parameters'}, "
                        f"got {unknown}")
    return float(params.get("negative_slope", 0.01))


def _output(out, like, name, inputs):
    if out is None:
        return cuda.device_array(like.shape, dtype=like.dtype)
    check_device_out(out, like.shape, like.dtype, name="out", inputs=inputs)
    return out


def _make(name):
    elementwise = name in ELEMENTWISE

    def forward(x, out=None, **params):
        slope = _negative_slope(name, params)
        check_device_float(x, "x", 2)
        out = _output(out, x, name, ())
        if x.size == 0:
            return out
        if elementwise:
            _FORWARD_KERNELS[name][blocks_for(x.size), THREADS_PER_BLOCK](x, out, slope)
        else:
            _softmax_forward_kernel[blocks_for(x.shape[0]), THREADS_PER_BLOCK](x, out)
        return out

    def backward(grad_y, x, y, out=None, **params):
        slope = _negative_slope(name, params)
        check_device_float(grad_y, "grad_y", 2)
        for arg, arg_name in ((x, "x"), (y, "y")):
            check_device_float(arg, arg_name, 2)
            if tuple(arg.shape) != tuple(grad_y.shape) or arg.dtype != grad_y.dtype:
                raise ValueError(f"{arg_name} must be {grad_y.dtype} of shape "
                                 f"{tuple(grad_y.shape)}, got {arg.dtype} {tuple(arg.shape)}")
        out = _output(out, grad_y, name, (("x", x), ("y", y)))
        if grad_y.size == 0:
            return out
        if elementwise:
            _BACKWARD_KERNELS[name][blocks_for(grad_y.size), THREADS_PER_BLOCK](
                grad_y, x, y, out, slope)
        else:
            _softmax_backward_kernel[blocks_for(grad_y.shape[0]), THREADS_PER_BLOCK](
                grad_y, y, out)
        return out

    forward.__name__, backward.__name__ = f"{name}_forward_cuda", f"{name}_backward_cuda"
    return Activation(forward, backward)


CUDA = {name: _make(name) for name in NAMES}

VARIANTS = {"cuda": CUDA}
