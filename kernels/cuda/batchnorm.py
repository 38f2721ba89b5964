"""BatchNorm1d on the GPU: training and eval forward, backward, with torch's semantics.

Same contract and formulas as ``mlpfast.kernels.batchnorm`` (sums, means and variances in
float64; mean and invstd stored in the dtype of x), on (B, F) device arrays.

Versions:
    cuda   column statistics: one thread per feature j loops over the batch (a warp reads
           consecutive features of a row: coalesced), two passes for mean and variance,
           then the running statistics; y and grad_x: one thread per element.
           Without affine parameters (weight None) the kernels take a flag and read none.
"""
import math

import numpy as np
from numba import cuda

from .. import batchnorm as cpu
from ._device import (ScratchBuffers, blocks_for, check_device_float, check_device_out,
                      THREADS_PER_BLOCK)

_scratch = ScratchBuffers()


@cuda.jit
def _statistics_kernel(x, momentum, eps, running_mean, running_var, mean, invstd):
    # per feature j: mean, biased var, invstd; running stats with the unbiased var
    rows, cols = x.shape
    for j in range(cuda.grid(1), cols, cuda.gridsize(1)):
        total = 0.0
        for i in range(rows):
            total += x[i, j]
        m = total / rows
        squares = 0.0
        for i in range(rows):
            d = x[i, j] - m
            squares += d * d
        var = squares / rows
        mean[j] = m
        invstd[j] = 1.0 / math.sqrt(var + eps)
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * m
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * var * rows / (rows - 1)


@cuda.jit
def _normalize_kernel(x, center, spread, from_variance, eps, weight, bias, affine, out):
    # y = (x - center_j) s_j weight_j + bias_j, s_j = spread_j (training: invstd) or, when
    # from_variance, 1 / sqrt(spread_j + eps) (eval: spread = running_var)
    rows, cols = x.shape
    for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = e // cols
        j = e - i * cols
        scale = 1.0 / math.sqrt(spread[j] + eps) if from_variance else spread[j] + 0.0
        y = (x[i, j] - center[j]) * scale
        out[i, j] = y * weight[j] + bias[j] if affine else y


@cuda.jit
def _gradient_sums_kernel(grad_y, x, mean, invstd, sums, grad_weight, grad_bias):
    # sums[0, j] = sum_i dy_ij = grad_bias_j, sums[1, j] = sum_i dy_ij xhat_ij = grad_weight_j
    # (sums in float64)
    rows, cols = x.shape
    for j in range(cuda.grid(1), cols, cuda.gridsize(1)):
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for i in range(rows):
            g = grad_y[i, j] + 0.0
            sum_dy += g
            sum_dy_xhat += g * ((x[i, j] - mean[j]) * (invstd[j] + 0.0))
        sums[0, j] = sum_dy
        sums[1, j] = sum_dy_xhat
        grad_bias[j] = sum_dy
        grad_weight[j] = sum_dy_xhat


@cuda.jit
def _grad_input_kernel(grad_y, x, weight, mean, invstd, sums, affine, out):
    # grad_x = weight_j invstd_j / B (B dy - sum dy - xhat sum dy xhat)
    rows, cols = x.shape
    for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = e // cols
        j = e - i * cols
        inv = invstd[j] + 0.0
        xhat = (x[i, j] - mean[j]) * inv
        coef = (weight[j] * inv if affine else inv) / rows
        out[i, j] = coef * (rows * grad_y[i, j] - sums[0, j] - xhat * sums[1, j])


def _affine(weight, bias, stand_in):
    """(weight, bias, affine): absent parameters replaced by an array the kernel never reads."""
    if weight is None:
        return stand_in, stand_in, False
    return weight, bias if bias is not None else stand_in, True


def train_cuda(x, weight, bias, running_mean, running_var, *, momentum=0.1, eps=1e-5,
               out=None, mean=None, invstd=None):
    eps, momentum = cpu.check_forward(x, weight, bias, running_mean, running_var, eps, out, True,
                                      momentum, mean, invstd, check_device_float,
                                      check_device_out)
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given or both be None on cuda")
    rows, cols = x.shape
    out = cuda.device_array((rows, cols), x.dtype) if out is None else out
    mean = cuda.device_array(cols, x.dtype) if mean is None else mean
    invstd = cuda.device_array(cols, x.dtype) if invstd is None else invstd
    if cols:
        _statistics_kernel[blocks_for(cols), THREADS_PER_BLOCK](
            x, momentum, eps, running_mean, running_var, mean, invstd)
        w, b, affine = _affine(weight, bias, mean)
        _normalize_kernel[blocks_for(x.size), THREADS_PER_BLOCK](x, mean, invstd, False, eps,
                                                                 w, b, affine, out)
    return out, mean, invstd


def eval_cuda(x, weight, bias, running_mean, running_var, *, eps=1e-5, out=None):
    eps, _ = cpu.check_forward(x, weight, bias, running_mean, running_var, eps, out, False,
                               check_array=check_device_float, check_output=check_device_out)
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given or both be None on cuda")
    out = cuda.device_array(x.shape, x.dtype) if out is None else out
    if x.size:
        w, b, affine = _affine(weight, bias, running_mean)
        _normalize_kernel[blocks_for(x.size), THREADS_PER_BLOCK](
            x, running_mean, running_var, True, eps, w, b, affine, out)
    return out


def backward_cuda(grad_y, x, weight, mean, invstd, out=None, grad_weight=None, grad_bias=None):
    cpu.check_backward(grad_y, x, weight, mean, invstd, out, grad_weight, grad_bias,
                       check_device_float, check_device_out)
    rows, cols = x.shape
    out = cuda.device_array((rows, cols), x.dtype) if out is None else out
    affine = weight is not None
    # grad_weight and grad_bias as the reference gives them, with or without weights
    grad_weight = cuda.device_array(cols, x.dtype) if grad_weight is None else grad_weight
    grad_bias = cuda.device_array(cols, x.dtype) if grad_bias is None else grad_bias
    if cols:
        sums = _scratch.get("batchnorm sums", 2, np.float64, cols)
        _gradient_sums_kernel[blocks_for(cols), THREADS_PER_BLOCK](
            grad_y, x, mean, invstd, sums, grad_weight, grad_bias)
        _grad_input_kernel[blocks_for(x.size), THREADS_PER_BLOCK](
            grad_y, x, weight if affine else mean, mean, invstd, sums, affine, out)
    return out, grad_weight, grad_bias


VARIANTS = {"cuda": {"batchnorm_train": train_cuda, "batchnorm_eval": eval_cuda,
                     "batchnorm_backward": backward_cuda}}
