"""Optimizer updates on the GPU, in place, with PyTorch's update rules.

Same contract and formulas as ``mlpfast.kernels.optim`` (SGD with momentum / Nesterov /
weight decay, Adam and AdamW), on device arrays of one shape: usually the flat buffer that
holds every parameter of a model, so one step is one kernel launch.

Versions:
    cuda   one grid-stride kernel per optimizer, one thread per element, reading each of
           param, grad and state once and writing param and state once. Scalars that do not
           depend on the element (bias corrections) are computed on the host. The
           per-element updates are device functions (sgd_update, adam_update), shared
           with the training step's kernels (kernels/cuda/mlp_step.py).
           max_norm: one thread per row of a weight (its norm in float64, then the rescale).
"""
import math

from numba import cuda

from ..optim import check_max_norm
from ._device import blocks_for, check_device_float, check_same_device_shape, THREADS_PER_BLOCK


def _check_state(param, **arrays):
    check_device_float(param, "param")
    for name, a in arrays.items():
        if a is None:
            continue
        check_device_float(a, name)
        check_same_device_shape(param, "param", a, name)
        if a.dtype != param.dtype:
            raise TypeError(f"{name} must be {param.dtype}, got {a.dtype}")
    if not param.is_c_contiguous() or not all(a is None or a.is_c_contiguous()
                                              for a in arrays.values()):
        raise ValueError("param, grad and optimizer state must be C-contiguous device arrays")


@cuda.jit(device=True)
def sgd_update(param, grad, buf, e, lr, momentum, nesterov, weight_decay, first_step):
    # element e: g = grad + wd * param; buf = g (first step) or momentum * buf + g;
    # d = g + momentum * buf (Nesterov) or buf (or g without momentum); param -= lr * d
    g = grad[e] + weight_decay * param[e]
    if momentum != 0:
        b = g if first_step else momentum * buf[e] + g
        buf[e] = b
        g = g + momentum * b if nesterov else b
    param[e] -= lr * g


@cuda.jit(device=True)
def adam_update(param, grad, exp_avg, exp_avg_sq, e, step_size, bias_correction2_sqrt, beta1,
                beta2, eps, weight_decay, decay_factor):
    # element e: g = grad (+ wd * param for Adam); param *= 1 - lr * wd first for AdamW
    # (decay_factor); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    # param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    p = param[e] * decay_factor
    g = grad[e] + weight_decay * p
    m = beta1 * exp_avg[e] + (1.0 - beta1) * g
    v = beta2 * exp_avg_sq[e] + (1.0 - beta2) * g * g
    exp_avg[e] = m
    exp_avg_sq[e] = v
    param[e] = p - step_size * m / (math.sqrt(v) / bias_correction2_sqrt + eps)


@cuda.jit
def _sgd_kernel(param, grad, buf, lr, momentum, nesterov, weight_decay, first_step):
    for e in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        sgd_update(param, grad, buf, e, lr, momentum, nesterov, weight_decay, first_step)


@cuda.jit
def _adam_kernel(param, grad, exp_avg, exp_avg_sq, step_size, bias_correction2_sqrt, beta1,
                 beta2, eps, weight_decay, decay_factor):
    for e in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adam_update(param, grad, exp_avg, exp_avg_sq, e, step_size, bias_correction2_sqrt,
                    beta1, beta2, eps, weight_decay, decay_factor)


@cuda.jit
def _max_norm_kernel(weight, max_norm):
    # row r of weight (out, in): w_r *= c / ||w_r|| where ||w_r|| > c
    rows, cols = weight.shape
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        squares = 0.0
        for j in range(cols):
            squares += weight[r, j] * (weight[r, j] + 0.0)
        if squares > max_norm * max_norm:
            factor = max_norm / math.sqrt(squares)
            for j in range(cols):
                weight[r, j] = weight[r, j] * factor


def _flat(a):
    return a.reshape(a.size)


def sgd_cuda(param, grad, momentum_buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
             first_step=False):
    _check_state(param, grad=grad, momentum_buf=momentum_buf)
    if momentum and momentum_buf is None:
        raise ValueError("momentum_buf is None but momentum != 0: pass the momentum buffer")
    if param.size == 0:
        return
    buf = momentum_buf if momentum_buf is not None else param    # not touched when momentum == 0
    _sgd_kernel[blocks_for(param.size), THREADS_PER_BLOCK](
        _flat(param), _flat(grad), _flat(buf), float(lr), float(momentum), bool(nesterov),
        float(weight_decay), bool(first_step))


def adam_cuda(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled=False):
    _check_state(param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if param.size == 0:
        return
    decay_factor = 1.0 - lr * weight_decay if decoupled else 1.0
    l2_decay = 0.0 if decoupled else weight_decay
    _adam_kernel[blocks_for(param.size), THREADS_PER_BLOCK](
        _flat(param), _flat(grad), _flat(exp_avg), _flat(exp_avg_sq),
        float(lr / (1.0 - beta1 ** step)), math.sqrt(1.0 - beta2 ** step), float(beta1),
        float(beta2), float(eps), float(l2_decay), float(decay_factor))


def max_norm_cuda(weight, max_norm):
    """Rescale each row of the device array weight (out, in) to L2 norm <= max_norm."""
    c = check_max_norm(weight, max_norm, check_device_float)
    if weight.shape[0]:
        _max_norm_kernel[blocks_for(weight.shape[0]), THREADS_PER_BLOCK](weight, c)


VARIANTS = {"cuda": {"sgd": sgd_cuda, "adam": adam_cuda, "max_norm": max_norm_cuda}}
