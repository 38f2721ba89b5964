"""Softmax cross-entropy and MSE: variants vs reference, reference vs formulas and finite differences."""
import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, assert_close, numerical_grad

from mlpfast.kernels import losses

VARIANTS = list(losses.VARIANTS)


def naive_cross_entropy(logits, labels):
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(labels)), labels]).mean(), p


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (64, 3), (129, 41)])
def test_cross_entropy_matches_naive_formula(variant, dtype, batch, classes, rng):
    ops = losses.VARIANTS[variant]
    logits = rng.standard_normal((batch, classes)).astype(dtype)
    labels = rng.integers(0, classes, batch)
    loss_expected, p = naive_cross_entropy(logits.astype(np.float64), labels)
    onehot = np.eye(classes)[labels]
    loss, grad, correct = ops["softmax_cross_entropy"](logits, labels, np.empty_like(logits))
    assert abs(loss - loss_expected) <= 1e-5 * max(1, loss_expected)
    assert_close(grad, (p - onehot) / batch, what=variant)
    assert correct == int((logits.argmax(axis=1) == labels).sum())
    assert abs(ops["softmax_cross_entropy_forward"](logits, labels) - loss_expected) <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_entropy_is_stable_for_huge_logits(variant):
    logits = np.array([[1e4, 0.0, -1e4], [-5e3, 5e3, 0.0]], dtype=np.float32)
    labels = np.array([0, 0])
    loss, grad, _ = losses.VARIANTS[variant]["softmax_cross_entropy"](logits, labels,
                                                                      np.empty_like(logits))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert abs(loss - 5e3) < 1.0          # row 0: 0, row 1: 1e4 -> mean 5e3
    assert_close(grad, [[0, 0, 0], [-0.5, 0.5, 0]], tol=(1e-6, 1e-6))


def test_cross_entropy_gradient_matches_finite_differences(rng):
    ops = losses.VARIANTS["numpy"]
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    numeric = numerical_grad(lambda: ops["softmax_cross_entropy_forward"](logits, labels), logits)
    _, grad, _ = ops["softmax_cross_entropy"](logits, labels)
    assert_close(grad, numeric, tol=GRAD_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_entropy_rejects_bad_labels(variant):
    f = losses.VARIANTS[variant]["softmax_cross_entropy"]
    logits = np.zeros((3, 10), np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), found 10"):
        f(logits, np.array([1, 10, 2]))
    with pytest.raises(ValueError, match="shape"):
        f(logits, np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        f(logits, np.array([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_mse_in_bands(threads, dtype, rng):
    """Large enough for one band per thread (ELEMENTS_PER_BAND each), of uneven sizes."""
    import mlpfast
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(threads)
    try:
        pred = rng.standard_normal((301, 217)).astype(dtype)
        target = rng.standard_normal((301, 217)).astype(dtype)
        assert losses._bands(pred.size, losses.ELEMENTS_PER_BAND) == threads
        expected = ((pred.astype(np.float64) - target) ** 2).mean()
        assert abs(losses.VARIANTS["numba"]["mse"](pred, target) - expected) <= 1e-12
    finally:
        mlpfast.set_num_threads(previous)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_formula_and_finite_differences(variant, dtype, rng):
    ops = losses.VARIANTS[variant]
    pred = rng.standard_normal((9, 4)).astype(dtype)
    target = rng.standard_normal((9, 4)).astype(dtype)
    diff = pred.astype(np.float64) - target
    assert abs(ops["mse"](pred, target) - (diff ** 2).mean()) <= 1e-6
    assert_close(ops["mse_backward"](pred, target, np.empty_like(pred)), 2 * diff / diff.size,
                 what=variant)
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    numeric = numerical_grad(lambda: losses.mse_ref(p64, t64), p64)
    assert_close(losses.mse_backward_ref(p64, t64), numeric, tol=GRAD_TOL)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (129, 41), (40, 1000)])
def test_numba_cross_entropy_streaming_stores(batch, classes, dtype, threads, rng, monkeypatch):
    """The streaming-store path for the gradient (grad_out of STREAM_MIN_BYTES and more),
    forced on small arrays; grad_out starts one element past a 64-byte boundary."""
    import mlpfast
    from mlpfast.kernels import _numba_math
    monkeypatch.setattr(_numba_math, "STREAM_MIN_BYTES", 0)
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(threads)
    try:
        logits = (3 * rng.standard_normal((batch, classes))).astype(dtype)
        labels = rng.integers(0, classes, batch)
        loss_expected, p = naive_cross_entropy(logits.astype(np.float64), labels)
        buffer = np.empty(logits.size + 64, dtype)
        skip = (-buffer.ctypes.data % 64) // buffer.itemsize + 1
        grad_out = buffer[skip:skip + logits.size].reshape(logits.shape)
        loss, grad, correct = losses.VARIANTS["numba"]["softmax_cross_entropy"](logits, labels,
                                                                                 grad_out)
        assert grad is grad_out
        assert abs(loss - loss_expected) <= 1e-5 * max(1, loss_expected)
        assert_close(grad, (p - np.eye(classes)[labels]) / batch)
        assert correct == int((logits.argmax(axis=1) == labels).sum())
    finally:
        mlpfast.set_num_threads(previous)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_counts_ties_for_the_first_maximum_only(variant, dtype):
    """A row is correct when its label is the first maximum (np.argmax, torch.argmax): tied
    logits are common (a relu head's zeros, a model at zero weights). Counting any maximum
    as correct passed the random logits above."""
    logits = np.array([[1, 3, 3, 0], [3, 3, 3, 3], [0, 0, 0, 0], [2, 5, 5, 5], [0, 0, 0, 0],
                       [-1, 4, 2, 4]], dtype)
    labels = np.array([2, 3, 0, 1, 2, 3])
    _, _, correct = losses.VARIANTS[variant]["softmax_cross_entropy"](logits, labels)
    assert correct == int((logits.argmax(axis=1) == labels).sum()) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_cross_entropy_into_a_strided_grad_out_never_streams(dtype, rng, monkeypatch):
    """A grad_out whose rows are not contiguous takes plain stores even past
    STREAM_MIN_BYTES (forced to 0): streaming stores write 64 contiguous bytes."""
    from mlpfast.kernels import _numba_math
    monkeypatch.setattr(_numba_math, "STREAM_MIN_BYTES", 0)
    logits = (3 * rng.standard_normal((6, 40))).astype(dtype)
    labels = rng.integers(0, 40, 6)
    base = np.full((6, 80), 7.0, dtype)
    _, grad, _ = losses.VARIANTS["numba"]["softmax_cross_entropy"](logits, labels, base[:, ::2])
    _, p = naive_cross_entropy(logits.astype(np.float64), labels)
    assert_close(grad, (p - np.eye(40)[labels]) / 6)
    assert (base[:, 1::2] == 7).all()


@pytest.mark.parametrize("kernel", ["cross_entropy", "softmax"])
def test_numba_softmax_results_do_not_depend_on_where_the_output_lies(kernel, rng):
    # The same logits give the same bits whether the output lies far from them or right
    # after them (0-8 floats between): LLVM runs a loop that reads one array and writes
    # another element by element when they lie closer than a vector, and a sum inside such
    # a loop then adds in another order (fastmath). That made a resumed run differ in the
    # last bits from the run it continued (5-row batch: fresh buffers, adjacent in the heap)
    from mlpfast.kernels import activations
    rows, classes = 5, 4                # (with 10 classes the old loop passed this test)
    arena = np.zeros(4096, np.float32)
    logits = arena[1024:1024 + rows * classes].reshape(rows, classes)
    for _ in range(30):
        logits[...] = rng.standard_normal((rows, classes)) * 3
        labels = rng.integers(0, classes, rows)
        if kernel == "cross_entropy":
            def run(out):
                return losses.softmax_cross_entropy_numba(logits, labels, out)[1]
        else:
            def run(out):
                return activations.NUMBA["softmax"].forward(logits, out)
        far = run(np.empty((rows, classes), np.float32)).copy()
        for gap in range(0, 9):
            start = 1024 + rows * classes + gap
            near = arena[start:start + rows * classes].reshape(rows, classes)
            assert np.array_equal(run(near), far), (gap, logits, labels)
