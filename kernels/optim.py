"""Optimizer updates, in place, with PyTorch's update rules.

All arrays of one call have the same shape (one parameter, or the flat buffer
holding every parameter of a model). Versions:
    numpy   the references below
    numba   each update as one parallel pass over the flat arrays
    c       adam only: the same pass in C (csrc/passes.c) on the C GEMM's threads, which
            right after a training step's last GEMM are still awake: no OpenMP wake-up,
            no two pools sharing the cores (float64 goes to the numba kernel)

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
        (float32: 1 - beta rounded from the float64 beta, as torch's, not 1 - float32(beta))
    "max_norm"  f(weight, max_norm)   after a step, on each 2-D weight (out, in): every row
        w_r (one neuron's incoming weights) is projected onto the L2 ball of radius c:
        w_r *= c / ||w_r||  where ||w_r|| > c  (Srivastava et al. 2014, max-norm
        regularization); norms in float64
``momentum_buf`` is unused (may be None) when momentum == 0.
"""
import math

import numpy as np
from numba import njit, prange

from . import _numba_config
from ._checks import check_float_array, check_same_shape
from ._c_library import c_available, c_library


def _check_state(param, writeable=(), **arrays):
    """param and the state arrays (named in ``writeable``) are updated in place."""
    check_float_array(param, "param")
    if not param.flags.writeable:
        raise ValueError("param is read-only: the update is in place")
    for name, a in arrays.items():
        if a is None:
            continue
        check_same_shape(param, "param", a, name)
        if a.dtype != param.dtype:
            raise TypeError(f"{name} must be {param.dtype}, got {a.dtype}")
        if name in writeable and not a.flags.writeable:
            raise ValueError(f"{name} is read-only: the update is in place")


def sgd_ref(param, grad, momentum_buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
            first_step=False):
    _check_state(param, ("momentum_buf",), grad=grad, momentum_buf=momentum_buf)
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
    _check_state(param, ("exp_avg", "exp_avg_sq"), grad=grad, exp_avg=exp_avg,
                 exp_avg_sq=exp_avg_sq)
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


def check_max_norm(weight, max_norm, check_array=None):
    """weight: a 2-D float array updated in place; max_norm: a positive finite number."""
    (check_array or check_float_array)(weight, "weight", 2)
    if isinstance(weight, np.ndarray) and not weight.flags.writeable:
        raise ValueError("weight is read-only: the constraint is applied in place")
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating)) \
            or not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    return float(max_norm)


def max_norm_ref(weight, max_norm):
    """Rescale each row of weight (out, in) to L2 norm <= max_norm, in place."""
    c = check_max_norm(weight, max_norm)
    norms = np.sqrt((weight.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    weight[...] = (weight * (c / np.maximum(norms, c))).astype(weight.dtype)   # 1 if <= c


VARIANTS = {"numpy": {"sgd": sgd_ref, "adam": adam_ref, "max_norm": max_norm_ref}}


# --- Numba ------------------------------------------------------------------------------
#
# The whole update in one parallel pass over the (flat) arrays: each element of param,
# grad and the state is read once and written once. Scalars are cast to the arrays'
# dtype so float32 updates run in float32.

@njit(parallel=True, fastmath=True, cache=True)
def _sgd_numba(param, grad, buf, lr, momentum, nesterov, weight_decay, first_step):
    zero = param.dtype.type(0)
    for i in prange(param.shape[0]):
        g = grad[i] + weight_decay * param[i] if weight_decay != zero else grad[i]
        if momentum != zero:
            b = g if first_step else momentum * buf[i] + g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g


@njit(parallel=True, fastmath=True, cache=True)
def _adam_numba(param, grad, m, v, step_size, beta1, beta2, rest1, rest2, inv_bc2_sqrt, eps,
                weight_decay, decay_factor):
    """step_size = lr / (1 - beta1^t), inv_bc2_sqrt = 1 / sqrt(1 - beta2^t); rest1, rest2 =
    1 - beta1, 1 - beta2, rounded from float64 (1 - float32(0.9999) is 1.7e-4 off);
    decay_factor = 1 - lr * wd for AdamW (else 1), weight_decay = wd for Adam (else 0)."""
    for i in prange(param.shape[0]):
        p = param[i] * decay_factor
        g = grad[i] + weight_decay * param[i]
        m_i = beta1 * m[i] + rest1 * g
        v_i = beta2 * v[i] + rest2 * g * g
        m[i] = m_i
        v[i] = v_i
        param[i] = p - step_size * m_i / (math.sqrt(v_i) * inv_bc2_sqrt + eps)


@njit(fastmath=True, cache=True, inline="always")
def renorm_row(row, max_norm):
    """row onto the L2 ball of radius max_norm (its squares summed in float64)."""
    squares = 0.0
    for j in range(row.shape[0]):
        squares += np.float64(row[j]) * row[j]
    if squares > max_norm * max_norm:
        factor = max_norm / math.sqrt(squares)
        for j in range(row.shape[0]):
            row[j] = row[j] * factor


@njit(parallel=True, fastmath=True, cache=True)
def _max_norm_numba(weight, max_norm):
    for r in prange(weight.shape[0]):
        renorm_row(weight[r], max_norm)


def _flat_views(*arrays):
    """1-D views of ``arrays``, C-ordered copies of those that are not C-contiguous (the
    update of a copy is written back by _copy_back)."""
    return [np.ascontiguousarray(a).reshape(-1) for a in arrays]


def _copy_back(*pairs):
    """original[...] = updated for each (original, flat updated) pair that is a copy."""
    for original, updated in pairs:
        if not original.flags.c_contiguous:
            original[...] = updated.reshape(original.shape)


def _adam_views(param, grad, exp_avg, exp_avg_sq, step):
    """The four arrays of an Adam step as 1-D views, after checking them and the step."""
    _check_state(param, ("exp_avg", "exp_avg_sq"), grad=grad, exp_avg=exp_avg,
                 exp_avg_sq=exp_avg_sq)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return _flat_views(param, grad, exp_avg, exp_avg_sq)


def sgd_numba(param, grad, momentum_buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
              first_step=False):
    _check_state(param, ("momentum_buf",), grad=grad, momentum_buf=momentum_buf)
    if momentum and momentum_buf is None:
        raise ValueError("momentum_buf is needed when momentum != 0")
    buf = momentum_buf if momentum else param            # unused when momentum == 0
    p, g, b = _flat_views(param, grad, buf)
    t = param.dtype.type
    _numba_config.parallel_call(_sgd_numba, p, g, b, t(lr), t(momentum), bool(nesterov),
                                t(weight_decay), bool(first_step))
    _copy_back((param, p), *([(momentum_buf, b)] if momentum else []))


def adam_numba(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=0.0, decoupled=False):
    views = _adam_views(param, grad, exp_avg, exp_avg_sq, step)
    t = param.dtype.type
    decay_factor = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    _numba_config.parallel_call(
        _adam_numba, *views, t(lr / (1.0 - beta1 ** step)), t(beta1), t(beta2), t(1.0 - beta1),
        t(1.0 - beta2), t(1.0 / math.sqrt(1.0 - beta2 ** step)), t(eps), t(l2), t(decay_factor))
    _copy_back(*zip((param, exp_avg, exp_avg_sq), views[:1] + views[2:]))


def max_norm_numba(weight, max_norm):
    """Rescale each row of weight (out, in) to L2 norm <= max_norm, in place, rows in
    parallel."""
    c = check_max_norm(weight, max_norm)
    _numba_config.parallel_call(_max_norm_numba, weight, c)


VARIANTS["numba"] = {"sgd": sgd_numba, "adam": adam_numba, "max_norm": max_norm_numba}


def adam_c(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, decoupled=False):
    if param.dtype != np.float32:
        return adam_numba(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1,
                          beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
    views = _adam_views(param, grad, exp_avg, exp_avg_sq, step)
    lib = c_library()
    pointers = [lib.ffi.from_buffer("float[]", a) for a in views]
    decay_factor = 1.0 - lr * weight_decay if decoupled else 1.0
    rc = lib.lib.mlpf_sadam(*pointers, param.size, lr / (1.0 - beta1 ** step), beta1, beta2,
                            1.0 / math.sqrt(1.0 - beta2 ** step), eps,
                            0.0 if decoupled else weight_decay, decay_factor)
    if rc != 0:
        raise RuntimeError(f"mlpf_sadam failed with status {rc}")
    _copy_back(*zip((param, exp_avg, exp_avg_sq), views[:1] + views[2:]))


if c_available():
    VARIANTS["c"] = {"adam": adam_c}

_numba_config.stamp_kernel_caches(globals())
