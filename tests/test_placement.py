"""Every Numba and C kernel gives the same bits wherever its arrays lie: each in its own
allocation, or all of them one after another in one buffer with 0-8 values between, in
either order. LLVM vectorizes a loop that reads one array and writes another only after a
run-time check that they lie at least a vector apart; closer, it runs the loop element by
element, and with fastmath a sum inside that loop then adds in another order. That once
made a resumed run differ in its last bits from the run it continued (the cross-entropy's
gradient buffer had landed 16 bytes after the logits: tests/test_kernels_losses.py,
test_numba_softmax_results_do_not_depend_on_where_the_output_lies), and GCC does the same
with the C library's plain loops."""
import functools

import numpy as np
import pytest

from mlpfast.kernels import (activations, batchnorm, context, data, dropout, features, gemm,
                             gemm_bf16, linear, losses, optim)

needs_c = pytest.mark.skipif("c" not in gemm.VARIANTS, reason="the C library is not built")

GAPS = range(9)
TRIALS = 4


def layouts(arrays):
    """(name, copies of ``arrays``): apart (each its own allocation), then the ones of the
    first array's float dtype laid out in one buffer, in order and reversed, with 0-8
    values between them."""
    yield "apart", [a.copy() for a in arrays]
    dtype = next(a.dtype for a in arrays if a.dtype.kind == "f")
    floats = [i for i, a in enumerate(arrays) if a.dtype == dtype]
    total = sum(arrays[i].size for i in floats)
    for order, label in ((floats, "in order"), (floats[::-1], "reversed")):
        for gap in GAPS:
            buffer = np.full(16 + total + gap * len(floats), np.nan, dtype)
            placed, start = [a.copy() for a in arrays], 16
            for i in order:
                view = buffer[start:start + arrays[i].size].reshape(arrays[i].shape)
                view[...] = arrays[i]
                placed[i] = view
                start += arrays[i].size + gap
            yield f"{label}, {gap} values between", placed


def results(run, arrays):
    """Everything ``run(*arrays)`` leaves: its arrays afterwards and what it returns."""
    returned = run(*arrays)
    returned = returned if isinstance(returned, tuple) else (returned,)
    return [np.array(a, copy=True) for a in list(arrays) + list(returned) if a is not None]


def assert_placement_free(run, arrays):
    """``run`` (which writes its outputs into its float arrays and may update some in
    place) leaves the same bits in every layout of ``arrays``."""
    expected = None
    for name, placed in layouts(arrays):
        got = results(run, placed)
        if expected is None:
            expected = got
            continue
        for i, (g, e) in enumerate(zip(got, expected)):
            assert np.array_equal(g, e, equal_nan=True), \
                f"result {i} differs with the arrays {name}: {np.flatnonzero(g != e)[:8]}"


def floats(rng, *shape, scale=3.0, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """The Numba kernels' two float types (the C ones take float32 only)."""
    return request.param


# (rows, cols): rows split into bands across threads; 4 columns (narrower than a vector),
# 9 and 37 (awkward), 64 (whole vectors)
SHAPES = [(5, 4), (3, 9), (7, 37), (4, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", activations.NAMES)
def test_activations(name, shape, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    kernel = activations.NUMBA[name]
    for _ in range(TRIALS):
        x = f(*shape)
        y = kernel.forward(x.copy())
        assert_placement_free(lambda x, out: kernel.forward(x, out), [x, np.zeros_like(x)])
        assert_placement_free(lambda g, x, y, out: kernel.backward(g, x, y, out),
                              [f(*shape), x, y, np.zeros_like(x)])


@pytest.mark.parametrize("shape", SHAPES)
def test_losses(shape, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    rows, cols = shape
    for _ in range(TRIALS):
        logits, target = f(rows, cols), f(rows, cols)
        labels = rng.integers(0, cols, rows)
        assert_placement_free(
            lambda logits, grad: losses.softmax_cross_entropy_numba(logits, labels, grad),
            [logits, np.zeros_like(logits)])
        assert_placement_free(lambda logits: losses.softmax_cross_entropy_forward_numba(
            logits, labels), [logits])
        assert_placement_free(losses.mse_numba, [logits, target])
        assert_placement_free(losses.mse_backward_numba,
                              [logits, target, np.zeros_like(logits)])


@pytest.mark.parametrize("shape", SHAPES)
def test_linear(shape, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    rows, cols = shape
    for activation in ("identity", "relu", "tanh"):
        x, w, b = f(rows, 13), f(cols, 13, scale=0.3), f(cols)
        assert_placement_free(
            lambda x, w, b, out: linear.forward_numba(x, w, b, activation, out),
            [x, w, b, np.zeros((rows, cols), dtype)])
    assert_placement_free(linear.bias_grad_numba,
                          [f(rows, cols), np.zeros(cols, dtype)])


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False)])
def test_gemm(trans_a, trans_b, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    m, n, k = 7, 37, 19
    for activation, bias in (("identity", None), ("relu", f(n))):
        a = f(*((k, m) if trans_a else (m, k)))
        b = f(*((n, k) if trans_b else (k, n)))
        arrays = [a, b, f(m, n)] + ([] if bias is None else [bias])
        assert_placement_free(
            lambda a, b, out, *bias: gemm.gemm_numba_fused(
                a, b, out, trans_a, trans_b, 0.5, 1.5, bias[0] if bias else None, activation),
            arrays)


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm(shape, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    rows, cols = shape
    x, weight, bias = f(rows, cols), f(cols), f(cols)
    running = [f(cols), np.abs(f(cols)) + 0.5]
    vector = np.zeros(cols, dtype)
    assert_placement_free(
        lambda x, w, b, rm, rv, out, mean, invstd: batchnorm.train_numba(
            x, w, b, rm, rv, out=out, mean=mean, invstd=invstd),
        [x, weight, bias, *running, np.zeros_like(x), vector, vector])
    assert_placement_free(
        lambda x, w, b, rm, rv, out: batchnorm.eval_numba(x, w, b, rm, rv, out=out),
        [x, weight, bias, *running, np.zeros_like(x)])
    _, mean, invstd = batchnorm.train_numba(x, weight, bias, *[r.copy() for r in running])
    assert_placement_free(
        lambda g, x, w, mean, invstd, out, gw, gb: batchnorm.backward_numba(
            g, x, w, mean, invstd, out, gw, gb),
        [f(rows, cols), x, weight, mean, invstd, np.zeros_like(x), vector, vector])


@pytest.mark.parametrize("shape", SHAPES)
def test_dropout(shape, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    x = f(*shape)
    assert_placement_free(
        lambda x, out, mask: dropout.forward_numba(x, 0.3, 7, 11, 1, out=out, mask=mask),
        [x, np.zeros_like(x), np.zeros(shape, np.uint8)])
    keep = dropout.mask_numba(shape, 0.3, 7, 11, 1)
    assert_placement_free(lambda g, keep, out: dropout.backward_numba(g, keep, 0.3, out),
                          [f(*shape), keep, np.zeros_like(x)])


@pytest.mark.parametrize("size", [4, 37, 1000])
def test_optimizers(size, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    param, grad, m = f(size), f(size), f(size)
    v = np.abs(f(size))
    for nesterov in (False, True):
        assert_placement_free(lambda p, g, b: optim.sgd_numba(
            p, g, b, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2), [param, grad, m])
    for decoupled in (False, True):
        assert_placement_free(lambda p, g, m, v: optim.adam_numba(
            p, g, m, v, step=3, lr=1e-2, weight_decay=1e-2, decoupled=decoupled),
            [param, grad, m, v])
    assert_placement_free(lambda w: optim.max_norm_numba(w, 2.0), [f(7, size)])


def test_gathers(rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    src, index = f(50, 9), rng.integers(0, 50, 17)
    assert_placement_free(lambda src, out: data.gather_numba(src, index, out),
                          [src, np.zeros((17, 9), dtype)])
    offsets = np.array([0, 20, 21, 50])
    assert_placement_free(
        lambda f, out: context.context_gather_numba(f, offsets, index, 2, out),
        [src, np.zeros((17, 45), dtype)])


@pytest.mark.parametrize("stage", ["power_spectrum", "log_mel", "mfcc"])
def test_speech_features(stage, rng, dtype):
    f = functools.partial(floats, rng, dtype=dtype)
    spec = features.make_spec(8000, n_mfcc=13, n_mels=20)
    signal = f(700, scale=0.1)
    kernel = getattr(features, f"{stage}_numba")
    out = np.zeros_like(kernel(signal, spec))
    assert_placement_free(lambda s, out: kernel(s, spec, out), [signal, out])
    frames = f(23, 13)
    assert_placement_free(lambda s, out: features.preemphasis_numba(s, 0.97, out),
                          [signal, np.zeros_like(signal)])
    assert_placement_free(lambda f, out: features.deltas_numba(f, 2, out),
                          [frames, np.zeros_like(frames)])
    assert_placement_free(lambda f, out: features.cmvn_numba(f, 1e-8, out),
                          [frames, np.zeros_like(frames)])


@needs_c
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False)])
def test_c_gemm(trans_a, trans_b, rng):
    m, n, k = 7, 37, 19
    for activation in gemm.C_EPILOGUE:
        a = floats(rng, *((k, m) if trans_a else (m, k)))
        b = floats(rng, *((n, k) if trans_b else (k, n)))
        assert_placement_free(
            lambda a, b, out, bias: gemm.gemm_c_fused(a, b, out, trans_a, trans_b, 0.5, 1.5,
                                                      bias, activations.c_code(activation)),
            [a, b, floats(rng, m, n), floats(rng, n)])
        assert_placement_free(
            lambda a, b, out, bias: gemm_bf16.sbgemm_c(
                a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=1.5, bias=bias,
                activation=activation), [a, b, floats(rng, m, n), floats(rng, n)])


@needs_c
@pytest.mark.parametrize("shape", SHAPES)
def test_c_linear(shape, rng):
    rows, cols = shape
    x, w, b = floats(rng, rows, 13), floats(rng, cols, 13, scale=0.3), floats(rng, cols)
    for activation in gemm.C_EPILOGUE:
        assert_placement_free(
            lambda x, w, b, out: linear.forward_c(x, w, b, activation, out),
            [x, w, b, np.zeros((rows, cols), np.float32)])
    for activation in gemm.C_DERIVATIVE:
        z = floats(rng, rows, 13)
        assert_placement_free(
            lambda g, w, z, out: linear.grad_input_c(g, w, activation, z, out),
            [floats(rng, rows, cols), w, z, np.zeros((rows, 13), np.float32)])
        assert_placement_free(
            lambda g, w, z, out: gemm_bf16.sbgemm_dact_c(g, w, z, activation, out),
            [floats(rng, rows, cols), w, z, np.zeros((rows, 13), np.float32)])


@needs_c
@pytest.mark.parametrize("size", [4, 37, 1000])
def test_c_adam(size, rng):
    param, grad, m = floats(rng, size), floats(rng, size), floats(rng, size)
    for decoupled in (False, True):
        assert_placement_free(lambda p, g, m, v: optim.adam_c(
            p, g, m, v, step=3, lr=1e-2, weight_decay=1e-2, decoupled=decoupled),
            [param, grad, m, np.abs(floats(rng, size))])
