"""Optimizer updates, in place, with PyTorch's update rules.

All arrays of one call have the same shape (one parameter, or the flat buffer
holding every parameter of a model). Versions:
    numpy   the references below

``VARIANTS[variant]`` maps op names to functions:
    "sgd"   f(param, grad, momentum_buf, *, lr, momentum, nesterov, weight_decay, first_step)
        g = grad + weight_decay * param
        buf = g                      on the first step, else  buf = momentum * buf + g
        d = g + momentum * buf       with Nesterov, else      d = buf   (d = g if momentum == 0)
        param -= lr * d
    "adam"  f(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps, weight_decay,
              decoupled)
        Adam:  g = grad + weight_decay * param            AdamW (decoupled): param *= 1 - lr * wd
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
``momentum_buf`` is unused (may be None) when momentum == 0.
"""
import math

import numpy as np

from ._checks import check_float_array, check_same_shape


def _check_state(param, **arrays):
    check_float_array(param, "param")
    for name, a in arrays.items():
        if a is None:
            continue
        check_same_shape(param, "param", a, name)
        if a.dtype != param.dtype:
            raise TypeError(f"{name} must be {param.dtype}, got {a.dtype}")


def sgd_ref(param, grad, momentum_buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
            first_step=False):
    _check_state(param, grad=grad, momentum_buf=momentum_buf)
    g = grad + weight_decay * param if weight_decay else grad.copy()
    if momentum:
        if first_step:
            momentum_buf[...] = g
        else:
            momentum_buf *= momentum
            momentum_buf += g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    param -= (lr * g).astype(param.dtype)


def adam_ref(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0, decoupled=False):
    _check_state(param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    g = grad
    if weight_decay and decoupled:
        param *= 1.0 - lr * weight_decay
    elif weight_decay:
        g = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * g * g
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    param -= ((lr / bias_correction1) * exp_avg / denom).astype(param.dtype)


VARIANTS = {"numpy": {"sgd": sgd_ref, "adam": adam_ref}}
