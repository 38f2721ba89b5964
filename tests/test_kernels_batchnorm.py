"""BatchNorm1d kernels: every variant against the NumPy reference on awkward shapes, against
torch.nn.BatchNorm1d over 5 training steps and in eval mode, backward against float64 finite
differences and torch's autograd."""
import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, assert_close, numerical_grad

from mlpfast.kernels import batchnorm

VARIANTS = list(batchnorm.VARIANTS)
SHAPES = [(2, 1), (3, 7), (37, 13), (130, 5), (257, 3)]     # 130, 257: several row bands
TORCH_TOL = {np.float32: (1e-5, 1e-5), np.float64: (1e-12, 1e-10)}


def bn_state(rng, features, dtype, affine=True):
    """(weight, bias, running_mean, running_var) as a fresh torch layer would not have them."""
    weight = (1 + 0.5 * rng.standard_normal(features)).astype(dtype) if affine else None
    bias = rng.standard_normal(features).astype(dtype) if affine else None
    return weight, bias, rng.standard_normal(features).astype(dtype), \
        (0.5 + rng.random(features)).astype(dtype)


def batch(rng, shape, dtype):
    return (3 * rng.standard_normal(shape) + rng.standard_normal(shape[1])).astype(dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_training_forward_and_backward_match_reference(variant, dtype, affine, rng):
    ops = batchnorm.VARIANTS[variant]
    for shape in SHAPES:
        weight, bias, rm, rv = bn_state(rng, shape[1], dtype, affine)
        x, g = batch(rng, shape, dtype), rng.standard_normal(shape).astype(dtype)
        rm_ref, rv_ref = rm.copy(), rv.copy()
        y_ref, mean_ref, invstd_ref = batchnorm.train_ref(x, weight, bias, rm_ref, rv_ref,
                                                          momentum=0.3, eps=1e-4)
        y, mean, invstd = ops["batchnorm_train"](x, weight, bias, rm, rv, momentum=0.3,
                                                 eps=1e-4)
        for actual, expected, what in ((y, y_ref, "y"), (mean, mean_ref, "mean"),
                                       (invstd, invstd_ref, "invstd"),
                                       (rm, rm_ref, "running_mean"), (rv, rv_ref, "running_var")):
            assert_close(actual, expected, what=f"{variant} {shape} {what}")
        grads = ops["batchnorm_backward"](g, x, weight, mean_ref, invstd_ref)
        grads_ref = batchnorm.backward_ref(g, x, weight, mean_ref, invstd_ref)
        for actual, expected, what in zip(grads, grads_ref, ("grad_x", "grad_weight",
                                                             "grad_bias")):
            assert_close(actual, expected, what=f"{variant} {shape} {what}",
                         tol={np.float32: (1e-4, 1e-4), np.float64: (1e-11, 1e-10)}[dtype])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_forward_matches_reference(variant, dtype, rng):
    for shape in [(1, 1), (1, 9), (0, 4), (29, 11)]:
        weight, bias, rm, rv = bn_state(rng, shape[1], dtype)
        x = batch(rng, shape, dtype) if shape[0] else np.zeros(shape, dtype)
        y = batchnorm.VARIANTS[variant]["batchnorm_eval"](x, weight, bias, rm, rv, eps=1e-5)
        assert_close(y, batchnorm.eval_ref(x, weight, bias, rm, rv, eps=1e-5), what=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_strided_views_in_and_out(variant, rng):
    ops = batchnorm.VARIANTS[variant]
    wide = batch(rng, (40, 22), np.float64)
    x = wide[:, 1::2]                                  # (40, 11), strided
    weight, bias, rm, rv = bn_state(rng, 11, np.float64)
    out = np.zeros((40, 30))[:, 4:15]
    rm_ref, rv_ref = rm.copy(), rv.copy()
    expected = batchnorm.train_ref(np.ascontiguousarray(x), weight, bias, rm_ref, rv_ref)
    y, mean, invstd = ops["batchnorm_train"](x, weight, bias, rm, rv, out=out)
    assert y is out
    assert_close(out, expected[0])
    g = rng.standard_normal((40, 22))[:, ::2]
    assert_close(ops["batchnorm_backward"](g, x, weight, mean, invstd)[0],
                 batchnorm.backward_ref(np.ascontiguousarray(g), np.ascontiguousarray(x),
                                        weight, mean, invstd)[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("affine", [True, False])
def test_backward_matches_finite_differences(variant, affine, rng):
    ops = batchnorm.VARIANTS[variant]
    x, g = batch(rng, (6, 4), np.float64), rng.standard_normal((6, 4))
    weight, bias, rm, rv = bn_state(rng, 4, np.float64, affine)

    def loss():
        return float((ops["batchnorm_train"](x, weight, bias, rm.copy(), rv.copy())[0] * g).sum())

    _, mean, invstd = ops["batchnorm_train"](x, weight, bias, rm.copy(), rv.copy())
    grad_x, grad_weight, grad_bias = ops["batchnorm_backward"](g, x, weight, mean, invstd)
    assert_close(grad_x, numerical_grad(loss, x), tol=GRAD_TOL, what="grad_x")
    if affine:
        assert_close(grad_weight, numerical_grad(loss, weight), tol=GRAD_TOL, what="grad_weight")
        assert_close(grad_bias, numerical_grad(loss, bias), tol=GRAD_TOL, what="grad_bias")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_five_training_steps_then_eval_match_torch(variant, dtype, rng):
    torch = pytest.importorskip("torch")
    ops = batchnorm.VARIANTS[variant]
    features = 7
    weight, bias, rm, rv = bn_state(rng, features, dtype)
    layer = torch.nn.BatchNorm1d(features, eps=1e-5, momentum=0.2)
    layer = layer.to(getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        for name, value in (("weight", weight), ("bias", bias), ("running_mean", rm),
                            ("running_var", rv)):
            getattr(layer, name).copy_(torch.from_numpy(value))
    tol = TORCH_TOL[dtype]
    for step, rows in enumerate((16, 5, 33, 2, 9)):
        x = batch(rng, (rows, features), dtype)
        g = rng.standard_normal((rows, features)).astype(dtype)
        x_torch = torch.from_numpy(x.copy()).requires_grad_()
        y_torch = layer(x_torch)
        y_torch.backward(torch.from_numpy(g))
        y, mean, invstd = ops["batchnorm_train"](x, weight, bias, rm, rv, momentum=0.2, eps=1e-5)
        grad_x, grad_weight, grad_bias = ops["batchnorm_backward"](g, x, weight, mean, invstd)
        for actual, expected, what in (
                (y, y_torch, "y"), (rm, layer.running_mean, "running_mean"),
                (rv, layer.running_var, "running_var"), (grad_x, x_torch.grad, "grad_x"),
                (grad_weight, layer.weight.grad, "grad_weight"),
                (grad_bias, layer.bias.grad, "grad_bias")):
            assert_close(actual, expected.detach().numpy(), tol=tol, what=f"step {step} {what}")
        layer.zero_grad()
    layer.eval()
    x = batch(rng, (11, features), dtype)
    assert_close(ops["batchnorm_eval"](x, weight, bias, rm, rv, eps=1e-5),
                 layer(torch.from_numpy(x)).detach().numpy(), tol=tol, what="eval")


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_input_is_named_and_changes_nothing(variant):
    ops = batchnorm.VARIANTS[variant]
    x = np.ones((4, 3), np.float32)
    weight, bias = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    cases = [
        (lambda: ops["batchnorm_train"](x[:1], weight, bias, rm, rv), ValueError,
         "more than 1 sample"),
        (lambda: ops["batchnorm_train"](x, weight[:2], bias, rm, rv), ValueError,
         r"weight must be float32 of shape \(3,\)"),
        (lambda: ops["batchnorm_train"](x, weight, bias, rm, rv.astype(np.float64)), ValueError,
         "running_var must be float32"),
        (lambda: ops["batchnorm_train"](x, weight, bias, rm, rv, momentum=1.5), ValueError,
         "momentum must be"),
        (lambda: ops["batchnorm_eval"](x, weight, bias, rm, rv, eps=0), ValueError,
         "eps must be"),
        (lambda: ops["batchnorm_train"](x, weight, bias, None, rv), ValueError,
         "running_mean is needed"),
        (lambda: ops["batchnorm_backward"](x, x[:, :2], weight, rm, rv), ValueError,
         "x must be float32 of shape"),
        (lambda: ops["batchnorm_backward"](x, x, weight, None, rv), ValueError,
         "mean .* is needed"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_uses_the_given_eps(variant, rng):
    """y = (x - running_mean) / sqrt(running_var + eps) weight + bias, eps = 0.5 (not the
    default 1e-5), written out here and checked against torch's eval mode."""
    torch = pytest.importorskip("torch")
    weight, bias, rm, rv = bn_state(rng, 5, np.float64)
    x = batch(rng, (9, 5), np.float64)
    y = batchnorm.VARIANTS[variant]["batchnorm_eval"](x, weight, bias, rm, rv, eps=0.5)
    assert_close(y, (x - rm) / np.sqrt(rv + 0.5) * weight + bias)
    layer = torch.nn.BatchNorm1d(5, eps=0.5).double().eval()
    with torch.no_grad():
        for name, value in (("weight", weight), ("bias", bias), ("running_mean", rm),
                            ("running_var", rv)):
            getattr(layer, name).copy_(torch.from_numpy(value))
    assert_close(y, layer(torch.from_numpy(x)).detach().numpy(), tol=TORCH_TOL[np.float64])


@pytest.mark.parametrize("variant", VARIANTS)
def test_momentum_zero_keeps_and_momentum_one_replaces_the_running_statistics(variant, rng):
    """Both ends of momentum in [0, 1] are allowed: 0 leaves running_mean/var as they are,
    1 sets them to the batch mean and the unbiased (ddof=1) batch variance."""
    ops = batchnorm.VARIANTS[variant]
    x = batch(rng, (11, 4), np.float64)
    weight, bias, rm, rv = bn_state(rng, 4, np.float64)
    kept_mean, kept_var = rm.copy(), rv.copy()
    ops["batchnorm_train"](x, weight, bias, rm, rv, momentum=0.0)
    assert np.array_equal(rm, kept_mean) and np.array_equal(rv, kept_var)
    ops["batchnorm_train"](x, weight, bias, rm, rv, momentum=1.0)
    assert_close(rm, x.mean(axis=0))
    assert_close(rv, x.var(axis=0, ddof=1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_read_only_running_statistics_are_refused_in_training_only(variant, rng):
    ops = batchnorm.VARIANTS[variant]
    x = batch(rng, (6, 3), np.float64)
    weight, bias, rm, rv = bn_state(rng, 3, np.float64)
    for name in ("running_mean", "running_var"):
        stats = {"running_mean": rm.copy(), "running_var": rv.copy()}
        stats[name].flags.writeable = False
        with pytest.raises(ValueError, match=f"{name} is read-only: it is updated in place"):
            ops["batchnorm_train"](x, weight, bias, stats["running_mean"],
                                   stats["running_var"])
        y = ops["batchnorm_eval"](x, weight, bias, stats["running_mean"], stats["running_var"])
        assert_close(y, (x - rm) / np.sqrt(rv + 1e-5) * weight + bias)


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_mean_and_invstd_go_into_the_given_arrays_and_are_checked(variant, rng):
    """mean (F,) = the batch mean, invstd (F,) = 1 / sqrt(biased var + eps), written into the
    arrays passed as mean= and invstd=; a wrong shape or dtype is refused before any write."""
    ops = batchnorm.VARIANTS[variant]
    x = batch(rng, (7, 3), np.float64)
    weight, bias, rm, rv = bn_state(rng, 3, np.float64)
    mean, invstd = np.full(3, np.nan), np.full(3, np.nan)
    _, got_mean, got_invstd = ops["batchnorm_train"](x, weight, bias, rm, rv, eps=1e-3,
                                                     mean=mean, invstd=invstd)
    assert got_mean is mean and got_invstd is invstd
    assert_close(mean, x.mean(axis=0))
    assert_close(invstd, 1.0 / np.sqrt(x.var(axis=0) + 1e-3))
    kept_mean, kept_var = rm.copy(), rv.copy()
    for bad, error, match in ((dict(mean=np.zeros(2)), ValueError, r"mean must have shape \(3,\)"),
                              (dict(invstd=np.zeros(4)), ValueError,
                               r"invstd must have shape \(3,\)"),
                              (dict(mean=np.zeros(3, np.float32)), TypeError,
                               "mean must be float64")):
        with pytest.raises(error, match=match):
            ops["batchnorm_train"](x, weight, bias, rm, rv, **bad)
    assert np.array_equal(rm, kept_mean) and np.array_equal(rv, kept_var)
