"""Optimizer kernels against updates computed by hand, one scalar at a time, for two steps."""
import math

import numpy as np
import pytest
from conftest import DTYPES, assert_close

from mlpfast.kernels import optim

SGD_VARIANTS = [v for v in optim.VARIANTS if "sgd" in optim.VARIANTS[v]]
ADAM_VARIANTS = [v for v in optim.VARIANTS if "adam" in optim.VARIANTS[v]]


def sgd_by_hand(p, grads, lr, momentum, nesterov, wd):
    buf = None
    for g in grads:
        g = g + wd * p
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_by_hand(p, grads, lr, b1, b2, eps, wd, decoupled):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("variant", SGD_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.5, True, 0.1),
                                                  (0.0, False, 0.01)])
def test_sgd_two_steps(variant, dtype, momentum, nesterov, wd, rng):
    sgd = optim.VARIANTS[variant]["sgd"]
    p0 = rng.standard_normal(37)
    grads = [rng.standard_normal(37) for _ in range(2)]
    param = p0.astype(dtype)
    buf = np.zeros_like(param)
    for step, g in enumerate(grads):
        sgd(param, g.astype(dtype), buf, lr=0.1, momentum=momentum, nesterov=nesterov,
            weight_decay=wd, first_step=step == 0)
    expected = [sgd_by_hand(p0[i], [g[i] for g in grads], 0.1, momentum, nesterov, wd)
                for i in range(37)]
    assert_close(param, expected, what=variant)


@pytest.mark.parametrize("variant", ADAM_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
@pytest.mark.parametrize("size", [41, 100003])     # one thread; ranges cut across threads
def test_adam_two_steps(variant, dtype, wd, decoupled, size, rng):
    adam = optim.VARIANTS[variant]["adam"]
    p0 = rng.standard_normal(size)
    grads = [rng.standard_normal(size) for _ in range(2)]
    param = p0.astype(dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    for step, g in enumerate(grads, start=1):
        adam(param, g.astype(dtype), m, v, step=step, lr=0.01, beta1=0.9, beta2=0.999,
             eps=1e-8, weight_decay=wd, decoupled=decoupled)
    expected = [adam_by_hand(p0[i], [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8, wd, decoupled)
                for i in range(0, size, max(1, size // 97))]
    assert_close(param[::max(1, size // 97)], expected, what=variant)


def test_adam_first_step_moves_each_weight_by_lr():
    # with bias correction, step 1 is lr * g / (|g| + eps): a move of lr in the sign of -g
    param = np.zeros(3)
    optim.adam_ref(param, np.array([2.0, -0.5, 1e-3]), np.zeros(3), np.zeros(3), step=1, lr=0.1)
    assert_close(param, [-0.1 * 2 / (2 + 1e-8), 0.1 * 0.5 / (0.5 + 1e-8), -0.1 * 1e-3 / (1e-3 + 1e-8)])


@pytest.mark.parametrize("variant", list(optim.VARIANTS))
def test_optimizer_kernels_check_shapes(variant):
    ops = optim.VARIANTS[variant]
    p = np.zeros(4, np.float32)
    if "sgd" in ops:
        with pytest.raises(ValueError, match="grad must have the shape"):
            ops["sgd"](p, np.zeros(5, np.float32), None, lr=0.1)
    with pytest.raises(ValueError, match="grad must have the shape"):
        ops["adam"](p, np.zeros(5, np.float32), p.copy(), p.copy(), step=1, lr=0.1)
    with pytest.raises(TypeError, match="exp_avg must be float32"):
        ops["adam"](p, np.zeros(4, np.float32), np.zeros(4), np.zeros(4, np.float32), step=1, lr=0.1)


MAX_NORM_VARIANTS = [v for v in optim.VARIANTS if "max_norm" in optim.VARIANTS[v]]


@pytest.mark.parametrize("variant", MAX_NORM_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (13, 257), (300, 3)])
def test_max_norm_rescales_rows_above_the_bound(variant, dtype, shape, rng):
    weight = (rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0], 1))).astype(dtype)
    norms = np.linalg.norm(weight.astype(np.float64), axis=1)
    ranked = np.sort(norms)                            # c halfway between two rows' norms
    c = (ranked[max(0, len(norms) // 2 - 1)] + ranked[len(norms) // 2]) / 2 if len(norms) > 1 \
        else ranked[0] / 2
    expected = [w * (c / n if n > c else 1.0) for w, n in zip(weight.astype(np.float64), norms)]
    before = weight.copy()
    optim.VARIANTS[variant]["max_norm"](weight, c)
    assert_close(weight, np.array(expected), what=variant)
    after = np.linalg.norm(weight.astype(np.float64), axis=1)
    assert (after <= c * (1 + 1e-6)).all()
    inside = norms <= c
    assert np.array_equal(weight[inside], before[inside])  # rows within the ball untouched


@pytest.mark.parametrize("variant", MAX_NORM_VARIANTS)
def test_max_norm_matches_torch_renorm_and_strided_views(variant, rng):
    torch = pytest.importorskip("torch")
    big = rng.standard_normal((9, 20))
    before = big.copy()
    view = big[1:8, 2:14]                                # rows of a larger array
    expected = torch.renorm(torch.from_numpy(before[1:8, 2:14].copy()), p=2, dim=0, maxnorm=1.5)
    optim.VARIANTS[variant]["max_norm"](view, 1.5)
    assert_close(view, expected.numpy(), tol=(1e-7, 1e-6))   # torch divides by norm + 1e-7
    outside = np.ones((9, 20), bool)
    outside[1:8, 2:14] = False
    assert np.array_equal(big[outside], before[outside])


@pytest.mark.parametrize("variant", MAX_NORM_VARIANTS)
def test_max_norm_rejects_bad_input(variant):
    f = optim.VARIANTS[variant]["max_norm"]
    weight = np.ones((3, 4), np.float32)
    for bad in (0.0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="max_norm must be a positive finite number"):
            f(weight, bad)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        f(np.ones(4, np.float32), 1.0)
    read_only = np.ones((3, 4), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        f(read_only, 1.0)
    assert (weight == 1).all()


@pytest.mark.parametrize("variant", SGD_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_first_step_sets_the_momentum_buffer_whatever_it_held(variant, dtype, nesterov,
                                                                   rng):
    """first_step: buf = g, as torch starts its buffer from a copy of the gradient; the
    buffer's old values (another run's, or np.empty's) must not leak in. On a zeroed
    buffer momentum * buf + g is the same, so test_sgd_two_steps passes without it."""
    sgd = optim.VARIANTS[variant]["sgd"]
    p0, g = rng.standard_normal(37), rng.standard_normal(37)
    param, buf = p0.astype(dtype), (10 * rng.standard_normal(37)).astype(dtype)
    sgd(param, g.astype(dtype), buf, lr=0.1, momentum=0.9, nesterov=nesterov,
        weight_decay=0.01, first_step=True)
    expected = [sgd_by_hand(p0[i], [g[i]], 0.1, 0.9, nesterov, 0.01) for i in range(37)]
    assert_close(param, expected, what=variant)
    assert_close(buf, g + 0.01 * p0, what=f"{variant} buffer")


@pytest.mark.parametrize("variant", SGD_VARIANTS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_updates_strided_views_and_their_buffer_in_place(variant, nesterov, rng):
    """param and momentum_buf as views with no unit stride: both are updated in place
    (through C-ordered copies written back) over two steps, and nothing between them."""
    sgd = optim.VARIANTS[variant]["sgd"]
    p0 = rng.standard_normal(23)
    grads = [rng.standard_normal(23) for _ in range(2)]
    param_base, buf_base = np.full(46, 7.0), np.full(46, 7.0)
    param, buf = param_base[::2], buf_base[::2]
    param[...] = p0
    for step, g in enumerate(grads):
        sgd(param, g, buf, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.0,
            first_step=step == 0)
    expected = [sgd_by_hand(p0[i], [g[i] for g in grads], 0.1, 0.9, nesterov, 0.0)
                for i in range(23)]
    assert_close(param, expected, what=variant)
    assert_close(buf, 0.9 * grads[0] + grads[1], what=f"{variant} buffer")
    assert (param_base[1::2] == 7).all() and (buf_base[1::2] == 7).all()


@pytest.mark.parametrize("variant", MAX_NORM_VARIANTS)
def test_max_norm_sums_float32_squares_in_float64(variant):
    """Norms in float64 (the module's docstring): the squares of float32 weights of 3e20 and
    4e20 overflow float32 (a float32 sum made the norm inf and the row 0); the row's norm is
    5e20 and it is scaled to [0.6, 0.8]."""
    weight = np.array([[3e20, 4e20], [3e-3, 4e-3]], np.float32)
    optim.VARIANTS[variant]["max_norm"](weight, 1.0)
    assert_close(weight, [[0.6, 0.8], [3e-3, 4e-3]], tol=(1e-7, 1e-6), what=variant)
