"""BatchNorm1d kernels with torch.nn.BatchNorm1d's semantics: forward in training and in
eval mode, backward.

Shapes: x (B, F), one feature per column; weight (gamma), bias (beta), running_mean,
running_var, mean, invstd all (F,). weight and bias may be None (affine=False: 1 and 0).

    training:  mean_j = sum_i x_ij / B,   var_j = sum_i (x_ij - mean_j)^2 / B  (biased)
               invstd_j = 1 / sqrt(var_j + eps)
               y_ij = (x_ij - mean_j) invstd_j weight_j + bias_j
               running_mean = (1 - momentum) running_mean + momentum mean
               running_var  = (1 - momentum) running_var + momentum var B / (B - 1)
               (unbiased); B >= 2. mean and invstd are returned for the backward pass.
    eval:      y_ij = (x_ij - running_mean_j) / sqrt(running_var_j + eps) weight_j + bias_j
    backward:  xhat_ij = (x_ij - mean_j) invstd_j
               grad_bias_j = sum_i dy_ij,   grad_weight_j = sum_i dy_ij xhat_ij
               grad_x_ij = weight_j invstd_j / B (B dy_ij - grad_bias_j - xhat_ij grad_weight_j)
Sums, means and variances are computed in float64; mean and invstd are stored in the dtype
of x, and y and the gradients are computed from the stored values.

Versions:
    numpy   the references below, in float64
    numba   training: per-thread column sums over bands of rows (one pass for the mean,
            one for the variance), then one parallel pass y = x scale_j + shift_j;
            backward: one pass of column sums, then one pass for grad_x

``VARIANTS[variant]`` maps op names to functions:
    "batchnorm_train"     f(x, weight, bias, running_mean, running_var, *, momentum, eps,
                            out=None, mean=None, invstd=None) -> (y, mean, invstd);
                          running_mean and running_var are updated in place
    "batchnorm_eval"      f(x, weight, bias, running_mean, running_var, *, eps, out=None) -> y
    "batchnorm_backward"  f(grad_y, x, weight, mean, invstd, out=None, grad_weight=None,
                            grad_bias=None) -> (grad_x, grad_weight, grad_bias)
"""
import numbers

import numpy as np
from numba import njit, prange

from . import _numba_config
from ._checks import check_float_array, check_out


def _check_vector(a, name, x, check_array, writeable=False):
    if a is None:
        return
    check_array(a, name, 1)
    if tuple(a.shape) != (x.shape[1],) or a.dtype != x.dtype:
        raise ValueError(f"{name} must be {x.dtype} of shape ({x.shape[1]},), got {a.dtype} "
                         f"{tuple(a.shape)}")
    if writeable and isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{name} is read-only: it is updated in place")


def _check_scalar(name, value, low, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (value > low if low_open else value >= low) \
            or (high is not None and value > high):
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high else "")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def check_forward(x, weight, bias, running_mean, running_var, eps, out, training,
                  momentum=None, mean=None, invstd=None, check_array=None, check_output=None):
    """Every argument of a forward call; returns (eps, momentum) as floats. check_array /
    check_output default to the NumPy checks; the CUDA twin passes its own."""
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(x, "x", 2)
    if training and x.shape[0] < 2:
        raise ValueError(f"BatchNorm1d in training needs more than 1 sample per feature, got "
                         f"x of shape {tuple(x.shape)}")
    for name, a in (("weight", weight), ("bias", bias)):
        _check_vector(a, name, x, check_array)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is None:
            raise ValueError(f"{name} is needed (an array of shape ({x.shape[1]},))")
        _check_vector(a, name, x, check_array, writeable=training)
    eps = _check_scalar("eps", eps, 0.0, low_open=True)
    if training:
        momentum = _check_scalar("momentum", momentum, 0.0, 1.0)
        for name, a in (("mean", mean), ("invstd", invstd)):
            check_output(a, (x.shape[1],), x.dtype, name=name, inputs=(("x", x),))
    check_output(out, x.shape, x.dtype, inputs=(("x", x), ("weight", weight), ("bias", bias),
                                                ("running_mean", running_mean),
                                                ("running_var", running_var)))
    return eps, momentum


def _written(value, out):
    if out is None:
        return value
    out[...] = value
    return out


def _affine(weight, bias, cols):
    """weight and bias in float64, 1 and 0 when absent."""
    w = np.ones(cols) if weight is None else weight.astype(np.float64)
    b = np.zeros(cols) if bias is None else bias.astype(np.float64)
    return w, b


def train_ref(x, weight, bias, running_mean, running_var, *, momentum=0.1, eps=1e-5,
              out=None, mean=None, invstd=None):
    eps, momentum = check_forward(x, weight, bias, running_mean, running_var, eps, out, True,
                                  momentum, mean, invstd)
    rows, cols = x.shape
    x64 = x.astype(np.float64)
    batch_mean = x64.mean(axis=0)
    batch_var = ((x64 - batch_mean) ** 2).mean(axis=0)
    saved_mean = _written(batch_mean.astype(x.dtype), mean)
    saved_invstd = _written((1.0 / np.sqrt(batch_var + eps)).astype(x.dtype), invstd)
    w, b = _affine(weight, bias, cols)
    y = (x64 - saved_mean) * saved_invstd.astype(np.float64) * w + b
    running_mean[...] = (1 - momentum) * running_mean + momentum * batch_mean
    running_var[...] = (1 - momentum) * running_var + momentum * batch_var * rows / (rows - 1)
    return _written(y.astype(x.dtype), out), saved_mean, saved_invstd


def eval_ref(x, weight, bias, running_mean, running_var, *, eps=1e-5, out=None):
    eps, _ = check_forward(x, weight, bias, running_mean, running_var, eps, out, False)
    w, b = _affine(weight, bias, x.shape[1])
    y = (x.astype(np.float64) - running_mean) / np.sqrt(running_var.astype(np.float64) + eps)
    return _written((y * w + b).astype(x.dtype), out)


def check_backward(grad_y, x, weight, mean, invstd, out, grad_weight, grad_bias,
                   check_array=None, check_output=None):
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(grad_y, "grad_y", 2)
    check_array(x, "x", 2)
    if tuple(x.shape) != tuple(grad_y.shape) or x.dtype != grad_y.dtype:
        raise ValueError(f"x must be {grad_y.dtype} of shape {tuple(grad_y.shape)} like "
                         f"grad_y, got {x.dtype} {tuple(x.shape)}")
    _check_vector(weight, "weight", x, check_array)
    for name, a in (("mean", mean), ("invstd", invstd)):
        if a is None:
            raise ValueError(f"{name} (from the training forward pass) is needed")
        _check_vector(a, name, x, check_array)
    inputs = (("grad_y", grad_y), ("x", x), ("weight", weight))
    check_output(out, x.shape, x.dtype, inputs=inputs)
    for name, a in (("grad_weight", grad_weight), ("grad_bias", grad_bias)):
        check_output(a, (x.shape[1],), x.dtype, name=name, inputs=inputs + (("out", out),))


def backward_ref(grad_y, x, weight, mean, invstd, out=None, grad_weight=None, grad_bias=None):
    check_backward(grad_y, x, weight, mean, invstd, out, grad_weight, grad_bias)
    rows = x.shape[0]
    dy = grad_y.astype(np.float64)
    inv = invstd.astype(np.float64)
    xhat = (x.astype(np.float64) - mean) * inv
    sum_dy, sum_dy_xhat = dy.sum(axis=0), (dy * xhat).sum(axis=0)
    w, _ = _affine(weight, None, x.shape[1])
    grad_x = w * inv / rows * (rows * dy - sum_dy - xhat * sum_dy_xhat)
    return (_written(grad_x.astype(x.dtype), out),
            _written(sum_dy_xhat.astype(x.dtype), grad_weight),
            _written(sum_dy.astype(x.dtype), grad_bias))


VARIANTS = {"numpy": {"batchnorm_train": train_ref, "batchnorm_eval": eval_ref,
                      "batchnorm_backward": backward_ref}}


# --- Numba ------------------------------------------------------------------------------
#
# Column sums: thread t adds the rows of band t into its own float64 partial (bands, F),
# read row by row (contiguous), then the partials are added. y and grad_x: parallel over
# rows. weight and bias arrive as arrays of 1 and 0 when absent.

@njit(fastmath=True, cache=True, inline="always")
def _band(t, bands, rows):
    return t * rows // bands, (t + 1) * rows // bands


@njit(parallel=True, fastmath=True, cache=True)
def _batchnorm_train_numba(x, weight, bias, running_mean, running_var, momentum, eps, bands,
                           out, mean, invstd):
    rows, cols = x.shape
    partial = np.zeros((bands, cols))
    for t in prange(bands):
        start, end = _band(t, bands, rows)
        for i in range(start, end):
            for j in range(cols):
                partial[t, j] += x[i, j]
    batch_mean = partial.sum(axis=0) / rows
    partial[:] = 0.0
    for t in prange(bands):
        start, end = _band(t, bands, rows)
        for i in range(start, end):
            for j in range(cols):
                d = x[i, j] - batch_mean[j]
                partial[t, j] += d * d
    batch_var = partial.sum(axis=0) / rows
    scale, shift = np.empty(cols, x.dtype), np.empty(cols, x.dtype)
    for j in range(cols):
        mean[j] = batch_mean[j]
        invstd[j] = 1.0 / np.sqrt(batch_var[j] + eps)
        scale[j] = invstd[j] * np.float64(weight[j])
        shift[j] = bias[j] - mean[j] * np.float64(scale[j])
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * batch_mean[j]
        running_var[j] = ((1.0 - momentum) * running_var[j]
                          + momentum * batch_var[j] * rows / (rows - 1))
    for i in prange(rows):
        for j in range(cols):
            out[i, j] = x[i, j] * scale[j] + shift[j]


@njit(parallel=True, fastmath=True, cache=True)
def _batchnorm_eval_numba(x, weight, bias, running_mean, running_var, eps, out):
    rows, cols = x.shape
    scale, shift = np.empty(cols, x.dtype), np.empty(cols, x.dtype)
    for j in range(cols):
        s = np.float64(weight[j]) / np.sqrt(np.float64(running_var[j]) + eps)
        scale[j] = s
        shift[j] = bias[j] - running_mean[j] * s
    for i in prange(rows):
        for j in range(cols):
            out[i, j] = x[i, j] * scale[j] + shift[j]


@njit(parallel=True, fastmath=True, cache=True)
def _batchnorm_backward_numba(grad_y, x, weight, mean, invstd, bands, out, grad_weight,
                              grad_bias):
    rows, cols = x.shape
    partial = np.zeros((bands, 2, cols))        # [t, 0] sum dy, [t, 1] sum dy xhat
    for t in prange(bands):
        start, end = _band(t, bands, rows)
        for i in range(start, end):
            for j in range(cols):
                g = np.float64(grad_y[i, j])
                partial[t, 0, j] += g
                partial[t, 1, j] += g * ((x[i, j] - mean[j]) * np.float64(invstd[j]))
    sums = partial.sum(axis=0)
    coef = np.empty(cols)
    for j in range(cols):
        grad_bias[j] = sums[0, j]
        grad_weight[j] = sums[1, j]
        coef[j] = np.float64(weight[j]) * invstd[j] / rows
    for i in prange(rows):
        for j in range(cols):
            xhat = (x[i, j] - mean[j]) * np.float64(invstd[j])
            out[i, j] = coef[j] * (rows * grad_y[i, j] - sums[0, j] - xhat * sums[1, j])


ROWS_PER_BAND = 32                  # fewer rows than this per thread: fewer bands


def _bands(x):
    """How many bands of rows the column sums are split into (one per thread)."""
    return max(1, min(_numba_config.get_threads(), x.shape[0] // ROWS_PER_BAND))


def _affine_arrays(weight, bias, x):
    cols = x.shape[1]
    return (np.ones(cols, x.dtype) if weight is None else weight,
            np.zeros(cols, x.dtype) if bias is None else bias)


def train_numba(x, weight, bias, running_mean, running_var, *, momentum=0.1, eps=1e-5,
                out=None, mean=None, invstd=None):
    eps, momentum = check_forward(x, weight, bias, running_mean, running_var, eps, out, True,
                                  momentum, mean, invstd)
    out = np.empty_like(x) if out is None else out
    mean = np.empty(x.shape[1], x.dtype) if mean is None else mean
    invstd = np.empty(x.shape[1], x.dtype) if invstd is None else invstd
    _numba_config.parallel_call(_batchnorm_train_numba, x, *_affine_arrays(weight, bias, x),
                                running_mean, running_var, momentum, eps, _bands(x), out, mean,
                                invstd, work=3 * x.size)
    return out, mean, invstd


def eval_numba(x, weight, bias, running_mean, running_var, *, eps=1e-5, out=None):
    eps, _ = check_forward(x, weight, bias, running_mean, running_var, eps, out, False)
    out = np.empty_like(x) if out is None else out
    _numba_config.parallel_call(_batchnorm_eval_numba, x, *_affine_arrays(weight, bias, x),
                                running_mean, running_var, eps, out, work=2 * x.size)
    return out


def backward_numba(grad_y, x, weight, mean, invstd, out=None, grad_weight=None,
                   grad_bias=None):
    check_backward(grad_y, x, weight, mean, invstd, out, grad_weight, grad_bias)
    cols = x.shape[1]
    out = np.empty_like(x) if out is None else out
    grad_weight = np.empty(cols, x.dtype) if grad_weight is None else grad_weight
    grad_bias = np.empty(cols, x.dtype) if grad_bias is None else grad_bias
    weight = np.ones(cols, x.dtype) if weight is None else weight
    _numba_config.parallel_call(_batchnorm_backward_numba, grad_y, x, weight, mean, invstd,
                                _bands(x), out, grad_weight, grad_bias, work=4 * x.size)
    return out, grad_weight, grad_bias


VARIANTS["numba"] = {"batchnorm_train": train_numba, "batchnorm_eval": eval_numba,
                     "batchnorm_backward": backward_numba}

_numba_config.stamp_kernel_caches(globals())
