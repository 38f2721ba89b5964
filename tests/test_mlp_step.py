"""The compiled training steps (kernels/mlp_step.py) against a NumPy float64 reference of
every formula they run: loss, correct rows, every gradient, and the parameters after several
optimizer steps; then how the cpu backend's step plugs into fit (chunks of k batches, dataset
objects, divergence) and its argument checks."""
import time

import numpy as np
import pytest
from conftest import assert_close

import mlpfast as mf
from mlpfast.datasets import as_dataset
from mlpfast.kernels import activations, gemm, gemm_bf16, mlp_step, optim

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")

SLOPE = 0.1                                     # leaky_relu's negative slope in these tests


# --- the NumPy reference ---------------------------------------------------------------------

def bf16_operand(a):
    """float64 a as the GEMM in bf16 precision reads it: to float32, then rounded to bf16."""
    return gemm_bf16.bf16_to_float32(gemm_bf16.round_to_bf16(a.astype(np.float32))) \
        .astype(np.float64)


def reference_gradients(params, acts, x, y, loss, precision="fp32"):
    """(summed loss, correct rows, [(dW, db)]) of one batch in float64. params [(W, b or
    None)]; acts per layer; y int labels or float targets; loss "cross_entropy" or "mse".
    precision "bf16": every GEMM operand rounded to bf16 first (``bf16_operand``)."""
    ref = activations.REFERENCE
    op = bf16_operand if precision == "bf16" else (lambda a: a)
    kw = [{"negative_slope": SLOPE} if f == "leaky_relu" else {} for f in acts]
    hs, zs = [x.astype(np.float64)], []
    for (w, b), f, k in zip(params, acts, kw):
        z = op(hs[-1]) @ op(w).T + (0 if b is None else b)
        zs.append(z)
        hs.append(ref[f].forward(z, **k))
    out, rows = hs[-1], x.shape[0]
    if loss == "cross_entropy":
        shifted = out - out.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total = -log_p[np.arange(rows), y].sum()
        dz = np.exp(log_p)
        dz[np.arange(rows), y] -= 1
        dz /= rows
    else:
        target = np.eye(out.shape[1])[y] if y.ndim == 1 else y.astype(np.float64)
        total = ((out - target) ** 2).sum() / out.shape[1]
        dz = 2 * (out - target) / out.size
    correct = int((out.argmax(axis=1) == y).sum()) if y.ndim == 1 else 0
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        grads[l] = (op(dz).T @ op(hs[l]), dz.sum(axis=0) if params[l][1] is not None else None)
        if l:
            dz = ref[acts[l - 1]].backward(op(dz) @ op(params[l][0]), zs[l - 1], hs[l],
                                           **kw[l - 1])
    return total, correct, grads


def reference_update(params, grads, state, optimizer, hyper, lr, t):
    """The optimizer's reference (kernels/optim.py) on every parameter, in float64."""
    flat = [a for p in params for a in p if a is not None]
    flat_grads = [g for gs in grads for g in gs if g is not None]
    for i, (p, g) in enumerate(zip(flat, flat_grads)):
        if optimizer == "adam":
            m, v = state.setdefault(i, (np.zeros_like(p), np.zeros_like(p)))
            beta1, beta2, eps, wd, decoupled = hyper
            optim.adam_ref(p, g, m, v, step=t, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                           weight_decay=wd, decoupled=bool(decoupled))
        else:
            buf = state.setdefault(i, np.zeros_like(p))
            momentum, nesterov, wd = hyper
            optim.sgd_ref(p, g, buf, lr=lr, momentum=momentum, nesterov=bool(nesterov),
                          weight_decay=wd, first_step=t == 1)


# --- the compiled steps on plain arrays --------------------------------------------------------

def make_steps(sizes, acts, src_x, src_y, batch, loss, optimizer, hyper, rng, bias=True,
               precision="fp32"):
    """MLPSteps over fresh flat buffers; returns (steps, params as float64 copies, flat)."""
    shapes = [(o, i) for i, o in zip(sizes[:-1], sizes[1:])]
    total = sum(o * i + (o if bias else 0) for o, i in shapes)
    flat_data = np.empty(total, np.float32)
    flat_grad = np.full(total, np.nan, np.float32)
    weights, biases, wgrads, bgrads, offset = [], [], [], [], 0
    for o, i in shapes:
        for target, grad_list, shape in ((weights, wgrads, (o, i)), (biases, bgrads, (o,))):
            if target is biases and not bias:
                biases.append(None)
                bgrads.append(None)
                continue
            n = int(np.prod(shape))
            view = flat_data[offset:offset + n].reshape(shape)
            view[...] = rng.uniform(-1, 1, shape) / np.sqrt(i)
            target.append(view)
            grad_list.append(flat_grad[offset:offset + n].reshape(shape))
            offset += n
    state = tuple(np.zeros(total, np.float32) for _ in range(2 if optimizer == "adam" else 1))
    slopes = [SLOPE if f == "leaky_relu" else 0.0 for f in acts]
    steps = mlp_step.MLPSteps((weights, biases, wgrads, bgrads, acts, slopes), flat_data,
                              flat_grad, src_x, src_y, batch, loss, optimizer, hyper, state,
                              precision=precision)
    params = [(w.astype(np.float64), None if b is None else b.astype(np.float64))
              for w, b in zip(weights, biases)]
    return steps, params, (weights, biases, wgrads, bgrads, flat_data)


def batch_rows(order, b, batch):
    return order[b * batch:(b + 1) * batch]


HIDDEN = [f for f in mlp_step.ACTIVATIONS]


@pytest.mark.parametrize("act", HIDDEN)
@pytest.mark.parametrize("batch", [1, 7, 33])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_step_matches_the_reference(act, batch, loss, rng):
    """Loss, correct rows and every gradient of the first step, against float64 NumPy, on
    awkward sizes (prime widths, a batch of 1), every activation, both losses."""
    sizes = [37, 29, 13, 11]
    x = rng.standard_normal((120, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 120)
    acts = [act, act, "identity"]
    steps, params, (_, _, wgrads, bgrads, _) = make_steps(
        sizes, acts, x, y, batch, loss, "sgd", (0.0, 0.0, 0.0), rng)
    order = rng.permutation(120).astype(np.int64)
    sums = np.zeros(2)
    done, finite, _ = steps.run(order, 0, 1, np.zeros(1), 0, sums)   # lr 0: grads only
    rows = batch_rows(order, 0, batch)
    total, correct, grads = reference_gradients(params, acts, x[rows], y[rows], loss)
    assert done == 1 and finite
    assert sums[0] == pytest.approx(total, rel=2e-5) and sums[1] == correct
    for l, (dw, db) in enumerate(grads):
        scale = np.abs(dw).max()
        assert_close(wgrads[l], dw, tol=(1e-5 * scale, 1e-4), what=f"{act} dW{l}")
        assert_close(bgrads[l], db, tol=(1e-5 * np.abs(db).max(), 1e-4), what=f"{act} db{l}")


@pytest.mark.parametrize("optimizer, hyper", [
    ("adam", (0.9, 0.999, 1e-8, 0.0, 0.0)),
    ("adam", (0.8, 0.99, 1e-6, 0.01, 1.0)),                 # AdamW: decoupled weight decay
    ("adam", (0.9, 0.999, 1e-8, 0.01, 0.0)),                # Adam's L2 weight decay
    ("sgd", (0.9, 1.0, 0.001)),                             # Nesterov momentum
    ("sgd", (0.0, 0.0, 0.0)),
])
def test_parameters_after_several_steps_match_the_reference(optimizer, hyper, rng):
    """Five calls of k batches (the epoch's short last batch included) with a different lr
    per step: the parameters against the float64 reference run batch by batch."""
    sizes, batch, n = [23, 17, 5], 16, 75            # 5 batches: 16 x 4 + 11
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    acts = ["tanh", "identity"]
    steps, params, (weights, biases, *_rest) = make_steps(
        sizes, acts, x, y, batch, "cross_entropy", optimizer, hyper, rng)
    order = rng.permutation(n).astype(np.int64)
    lrs = np.array([3e-3, 2e-3, 1e-3, 5e-4, 2.5e-4])
    sums, state = np.zeros(2), {}
    for first, count in ((0, 2), (2, 1), (3, 2)):
        assert steps.run(order, first, count, lrs[first:first + count], first, sums)[:2] == \
            (count, True)
    total = 0.0
    for b in range(5):
        rows = batch_rows(order, b, batch)
        loss, _, grads = reference_gradients(params, acts, x[rows], y[rows], "cross_entropy")
        total += loss
        reference_update(params, grads, state, optimizer, hyper, lrs[b], b + 1)
    assert sums[0] == pytest.approx(total, rel=1e-5)
    for l, (w, b) in enumerate(params):
        assert_close(weights[l], w, tol=(2e-6, 1e-4), what=f"{optimizer} W{l}")
        assert_close(biases[l], b, tol=(2e-6, 1e-4), what=f"{optimizer} b{l}")


def test_the_packed_batch_trains_as_the_batch_in_rows(rng):
    """float32 rows go to the first layer packed by the gather (mlpf_sgather_packed, read
    by mlpf_sgemm_packed_a and _b); the same values as float64 go through the batch in
    rows and mlpf_sgemm. Both block k alike, so after five Adam steps (a short last batch
    among them) the parameters agree bit for bit; a narrow first layer is not packed."""
    sizes, batch, n = [45, 40, 9, 3], 33, 150             # 5 batches: 33 x 4 + 18
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    acts, hyper = ["relu", "tanh", "identity"], (0.9, 0.999, 1e-8, 0.0, 0.0)
    runs = []
    for source in (x, x.astype(np.float64)):
        steps, _, (*_rest, flat) = make_steps(sizes, acts, source, y, batch, "cross_entropy",
                                              "adam", hyper, np.random.default_rng(5))
        assert (steps._buffers[6].size > 0) == (source.dtype == np.float32)
        sums = np.zeros(2)
        assert steps.run(np.arange(n, dtype=np.int64), 0, 5, np.full(5, 1e-2), 0,
                         sums)[:2] == (5, True)
        runs.append((flat.copy(), sums))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    narrow, *_ = make_steps([45, 16, 3], ["relu", "identity"], x, y, batch, "cross_entropy",
                            "adam", hyper, rng)
    assert narrow._buffers[6].size == 0


def test_narrow_layers_take_the_one_pass_backward_up_to_the_c_librarys_bound():
    """The step sends a layer of at most mlp_step.NARROW_N outputs to mlpf_snarrow_backward,
    which takes up to MLPF_NARROW_N (test_one_step_matches_the_reference runs it on its
    13- and 11-output layers); the two bounds are one."""
    assert mlp_step.NARROW_N == gemm.c_library().lib.MLPF_NARROW_N


def test_the_input_gradient_never_writes_at_the_page_offset_it_reads(rng):
    """Layer l's input gradient reads h_l (f') and writes dz_{l-1}, 12 rows x 32 floats (128
    bytes) a tile. No row of the one may overlap a row of the other within a tile mod 4
    KiB, or the loads wait for the stores ("4K aliasing"): rows of 4 KiB, 512 and 256
    bytes here. The step writes the buffers and keeps them where they are."""
    sizes, batch = [784, 1024, 128, 64, 10], 32
    x = rng.standard_normal((64, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 64)
    steps, *_ = make_steps(sizes, ["relu"] * 4 + ["identity"], x, y, batch, "cross_entropy",
                           "adam", (0.9, 0.999, 1e-8, 0.0, 0.0), rng)
    hs, dzs = steps._buffers[0], steps._buffers[2]
    before = [(h.ctypes.data, dz.ctypes.data) for h, dz in zip(hs[1:], dzs)]
    assert steps.run(np.arange(64, dtype=np.int64), 0, 2, np.full(2, 1e-3), 0,
                     np.zeros(2))[:2] == (2, True)
    assert [(h.ctypes.data, dz.ctypes.data) for h, dz in zip(hs[1:], dzs)] == before
    for l in range(1, len(sizes) - 1):
        h, dz = hs[l], dzs[l - 1]
        assert h.shape == dz.shape == (batch, sizes[l]) and h.flags.c_contiguous
        for i in range(12):
            for j in range(12):
                gap = (h.ctypes.data + i * h.strides[0] - dz.ctypes.data - j * dz.strides[0])
                assert 128 <= gap % 4096 <= 4096 - 128, (l, i, j, gap % 4096)


def test_float_targets_uint8_inputs_and_layers_without_bias(rng):
    sizes = [12, 7, 3]
    x = (rng.random((40, 12)) * 255).astype(np.uint8)          # cast to float32 per batch
    targets = rng.standard_normal((40, 3)).astype(np.float32)
    steps, params, (_, _, wgrads, _, _) = make_steps(
        sizes, ["sigmoid", "identity"], x, targets, 9, "mse", "sgd", (0.0, 0.0, 0.0), rng,
        bias=False)
    sums = np.zeros(2)
    order = np.arange(40, dtype=np.int64)
    steps.run(order, 1, 1, np.zeros(1), 0, sums)
    rows = batch_rows(order, 1, 9)
    total, _, grads = reference_gradients(params, ["sigmoid", "identity"], x[rows],
                                          targets[rows], "mse")
    assert sums[0] == pytest.approx(total, rel=1e-5) and sums[1] == 0
    for l, (dw, _) in enumerate(grads):
        assert_close(wgrads[l], dw, tol=(1e-5 * np.abs(dw).max(), 1e-4))


def test_a_non_finite_batch_stops_the_call_before_its_update(rng):
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    x[20, 2] = np.nan                                          # in the third batch of 8
    steps, _, (*_, flat_data) = make_steps([6, 5, 3], ["relu", "identity"], x, y, 8,
                                           "cross_entropy", "adam",
                                           (0.9, 0.999, 1e-8, 0.0, 0.0), rng)
    order, sums = np.arange(40, dtype=np.int64), np.zeros(2)
    steps.run(order, 0, 2, np.full(2, 1e-2), 0, sums)
    after_two, sums_two = flat_data.copy(), sums.copy()
    done, finite, loss = steps.run(order, 2, 3, np.full(3, 1e-2), 2, sums)
    assert (done, finite) == (0, False) and np.isnan(loss)
    assert np.array_equal(flat_data, after_two) and np.array_equal(sums, sums_two)


def test_a_step_wakes_the_threads_its_mid_sized_gemms_use(rng):
    """784-128-10 at batch 32: the largest GEMM (3.2M multiply-adds) uses two threads while
    the workers spin but would not wake them itself, and nothing else in the step is large
    enough to. So a step finding them asleep wakes them (mlpf_wake_threads: an empty job on
    both threads) before its first job; without it they would sleep through every step
    (bench/README.md, "CPU thresholds"). On one thread nothing is woken. The pool's trace
    shows the jobs whatever the machine's speed. A call is retried where the machine's load
    may have had the last word: a worker the OS has not run for the 50 ms still counts as
    spinning (no wake needed), and a GEMM gets both threads only if they still spin when it
    starts."""
    from mlpfast.benchmarks.pool_trace import PoolTrace
    from mlpfast.kernels.cpu_config import THRESHOLDS
    largest = 32 * 128 * 784
    assert THRESHOLDS["min_parallel_fmas_awake"] <= largest < THRESHOLDS["min_parallel_fmas"]
    x, y = rng.standard_normal((96, 784)).astype(np.float32), rng.integers(0, 10, 96)
    steps, _, _ = make_steps([784, 128, 10], ["relu", "identity"], x, y, 32, "cross_entropy",
                             "adam", (0.9, 0.999, 1e-8, 0.0, 0.0), rng)
    order, before = np.arange(96, dtype=np.int64), mf.get_num_threads()

    def traced_call(threads, attempt):
        """The (task, threads) of the jobs of a 3-step call made after the workers slept."""
        mf.set_num_threads(threads)
        time.sleep(0.05)                                     # the workers fall asleep
        with PoolTrace() as trace:
            steps.run(order, 0, 3, np.full(3, 1e-3), 3 * attempt, np.zeros(2))
        return [(job.task, job.threads) for job in trace.jobs]

    try:
        for attempt in range(5):
            jobs = traced_call(2, attempt)
            woken_first = jobs[0] == ("empty_wake_task", 2) and jobs[1][0] == "gather_task"
            if woken_first and ("sgemm_task", 2) in jobs:
                break
        else:
            pytest.fail(f"no call woke the workers first and ran a GEMM on both: {jobs}")
        jobs = traced_call(1, 5)
        assert jobs[0] == ("gather_task", 1) and {t for _, t in jobs} == {1}, jobs
    finally:
        mf.set_num_threads(before)


def test_bad_arguments_are_named(rng):
    x, y = rng.standard_normal((30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    args = ([6, 5, 3], ["relu", "identity"], x, y, 4, "cross_entropy", "sgd", (0.0, 0.0, 0.0))
    steps, _, (weights, biases, wgrads, bgrads, flat_data) = make_steps(*args, rng)
    sums = np.zeros(2)
    with pytest.raises(ValueError, match=r"order must hold row numbers in \[0, 30\)"):
        steps.run(np.array([0, 1, 30, 2], np.int64), 0, 1, np.zeros(1), 0, sums)
    with pytest.raises(ValueError, match="lrs must hold one rate per step"):
        steps.run(np.arange(30, dtype=np.int64), 0, 2, np.zeros(1), 0, sums)
    bad = y.copy()
    bad[7] = 3
    steps, _, (*_, wgrads2, _b, _f) = make_steps(*args[:3], bad, *args[4:], rng)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 outputs"):
        steps.run(np.arange(4, 12, dtype=np.int64), 0, 1, np.zeros(1), 0, sums)
    layers = (weights, biases, wgrads, bgrads, ["relu", "identity"], [0.0, 0.0])
    state = (np.zeros_like(flat_data),)
    with pytest.raises(ValueError, match=r"src_x must be a C-contiguous numeric array \(N, 6\)"):
        mlp_step.MLPSteps(layers, flat_data, flat_data, x[:, :5], y, 4, "cross_entropy", "sgd",
                          (0.0, 0.0, 0.0), state)
    with pytest.raises(ValueError, match=r"weights\[1\] must be a C-contiguous float32 array"):
        mlp_step.MLPSteps(([weights[0], weights[1].T], *layers[1:]), flat_data, flat_data, x, y,
                          4, "cross_entropy", "sgd", (0.0, 0.0, 0.0), state)
    with pytest.raises(ValueError, match="the last layer must output predictions"):
        mlp_step.MLPSteps((*layers[:4], ["relu", "relu"], [0.0, 0.0]), flat_data, flat_data, x,
                          y, 4, "cross_entropy", "sgd", (0.0, 0.0, 0.0), state)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam'"):
        mlp_step.MLPSteps(layers, flat_data, flat_data, x, y, 4, "cross_entropy", "rmsprop",
                          (0.0, 0.0, 0.0), state)
    with pytest.raises(ValueError, match="src_y must be int64 labels"):
        mlp_step.MLPSteps(layers, flat_data, flat_data, x, y.astype(np.float32), 4,
                          "cross_entropy", "sgd", (0.0, 0.0, 0.0), state)
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), "
                                         r"got 'fp16'"):            # not fp32 in silence
        mlp_step.MLPSteps(layers, flat_data, flat_data, x, y, 4, "cross_entropy", "sgd",
                          (0.0, 0.0, 0.0), state, precision="fp16")


# --- the cpu backend's step in fit -------------------------------------------------------------

class FramesLike:
    """A dataset object as the speech frames are: gather_batch fills the caller's buffers."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.num_features, self.num_classes = x.shape[1], int(y.max()) + 1

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        x_out[...] = self.x[index] * 2.0                 # a transform arrays would not have
        y_out[...] = self.y[index]


def step_kind(model, loss_fn, dataset, batch):
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    return type(model.backend.make_step(model.plan(), loss_fn, opt, dataset, batch)).__name__


@pytest.mark.parametrize("data", ["arrays", "dataset object"])
def test_fit_trains_the_same_model_as_the_numpy_backend(data, rng):
    """fit on cpu (compiled steps, chunks of several batches) against fit on numpy (the
    reference kernels, layer by layer): same accuracies, parameters close."""
    x = rng.standard_normal((300, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([20, 16, 4], activation="gelu", backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=3e-2)
        train = FramesLike(x, y) if data != "arrays" else (x, y)
        args = (train,) if data != "arrays" else train
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), *args, epochs=6, batch_size=64,
                         seed=5, progress=False)
        results.append((history, model.flat_data.copy(), opt.step_count))
    (h1, p1, s1), (h2, p2, s2) = results
    assert s1 == s2 == 6 * 5
    assert_close(p1, p2, tol=(1e-4, 1e-3))
    assert h1["train_accuracy"] == h2["train_accuracy"]
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-4)
    assert h1["train_accuracy"][-1] > 0.8


def test_the_cpu_step_covers_mlps_and_leaves_the_rest_to_the_engine(rng):
    x, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    data = lambda m: as_dataset(m, x, y)                            # noqa: E731
    for act in mlp_step.ACTIVATIONS:
        model = mf.MLP([5, 4, 3], activation=act, backend="cpu")
        assert step_kind(model, mf.CrossEntropyLoss(), data(model), 8) == "CompiledStep"
    model = mf.MLP([5, 4, 3], backend="cpu")
    assert step_kind(model, mf.MSELoss(), data(model), 8) == "CompiledStep"
    model = mf.MLP([5, 4, 3], batchnorm=True, dropout=0.5, input_dropout=0.2, backend="cpu")
    assert step_kind(model, mf.CrossEntropyLoss(), data(model), 8) == "CompiledStep"
    for model in (mf.MLP([5, 4, 3], backend="cpu", dtype=np.float64),
                  mf.Sequential(mf.Linear(5, 3), mf.Softmax()),
                  mf.Sequential(mf.Linear(5, 4), mf.ReLU(), mf.Tanh(), mf.Linear(4, 3)),
                  mf.MLP([5, 4, 3], backend="numba")):
        assert step_kind(model, mf.CrossEntropyLoss(), data(model), 8) == "LayerByLayerStep"


def test_the_step_sums_the_squares_of_what_no_weight_gradient_gemm_covers():
    """_unchecked_ranges: flat_grad less the weight and bias gradients (their GEMMs add
    their own squares) when fused, all of it in bf16 or when one is not a view; MLPSteps
    leaves only batchnorm's gamma and beta to the step."""
    flat = np.zeros(100, np.float32)
    ranges = mlp_step._unchecked_ranges(flat, [flat[40:60], flat[10:30]], True)
    assert ranges.tolist() == [[0, 10], [30, 40], [60, 100]]
    assert mlp_step._unchecked_ranges(flat, [flat[0:10], flat[10:100]], True).shape == (0, 2)
    assert mlp_step._unchecked_ranges(flat, [flat[0:10], flat[10:20]], True).tolist() == [[20, 100]]
    assert mlp_step._unchecked_ranges(flat, [flat[40:60]], False).tolist() == [[0, 100]]
    elsewhere = np.zeros(20, np.float32)
    assert mlp_step._unchecked_ranges(flat, [flat[0:10], elsewhere], True).tolist() == [[0, 100]]
    model = mf.MLP([5, 4, 3], backend="cpu", seed=0)
    x, y = np.zeros((16, 5), np.float32), np.zeros(16, np.int64)
    step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(),
                                   mf.optim.Adam(model.parameters()), as_dataset(model, x, y), 8)
    assert step._steps._check[0].shape == (0, 2)             # weights and biases: all covered


def test_nan_gradient_is_reported_and_nothing_else_changes(rng):
    x, y = rng.standard_normal((30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    model = mf.MLP([6, 5, 3], backend="cpu", seed=0)
    opt = mf.optim.Adam(model.parameters())
    before = model.flat_data.copy()
    x[4, 2] = 3e38                                      # finite input, overflowing gradient
    with pytest.raises(mf.TrainingDiverged, match="step 1 of 4"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8,
               shuffle=False, progress=False)
    assert np.array_equal(model.flat_data, before) and opt.step_count == 0


@pytest.mark.parametrize("backend", ["cpu", "numba"])
@pytest.mark.parametrize("data", ["arrays", "dataset object"])
def test_the_two_halves_of_a_step_make_the_whole_step(backend, data, rng):
    """compute_gradients + apply_update (data parallelism's split) give run()'s result."""
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    order = rng.permutation(64).astype(np.int64)
    results = []
    for halves in (False, True):
        model = mf.MLP([10, 8, 3], backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=1e-2)
        dataset = as_dataset(model, x, y) if data == "arrays" else FramesLike(x, y)
        step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), opt, dataset, 16)
        sums = np.zeros(2)
        for b in range(4):
            if halves:
                loss, correct = step.compute_gradients(order[16 * b:16 * (b + 1)])
                step.apply_update(1e-2)
                sums += (loss * 16, correct)
            else:
                step.run(order, b, 1, np.full(1, 1e-2), sums)
        results.append((model.flat_data.copy(), sums, opt.step_count))
    (p1, s1, n1), (p2, s2, n2) = results
    assert np.array_equal(p1, p2) and n1 == n2 == 4
    assert s1[1] == s2[1] and s1[0] == pytest.approx(s2[0], rel=1e-6)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_and_dropout_run_inside_the_compiled_step(act, momentum, rng):
    """An MLP with input dropout, batchnorm and dropout trains in the compiled step (not
    layer by layer) as the numpy backend's reference layers do: the same dropout masks
    (Philox of seed, step, layer), running statistics, batches tracked and parameters.
    (SGD: Adam would amplify the rounding noise of the Linear biases before batchnorm,
    whose true gradient is 0.)"""
    x = rng.standard_normal((150, 12)).astype(np.float32)
    y = rng.integers(0, 4, 150)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([12, 10, 8, 4], act, batchnorm=True, dropout=0.3, input_dropout=0.1,
                       backend=backend, seed=0)
        for layer in model.layers:
            if isinstance(layer, mf.BatchNorm1d):
                layer.momentum = momentum
        opt = mf.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if backend == "cpu":
            assert step_kind(model, mf.CrossEntropyLoss(), as_dataset(model, x, y), 32) == \
                "CompiledStep"
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=3, batch_size=32,
                         seed=1, progress=False)
        steps = [layer.step for layer in model.layers if isinstance(layer, mf.Dropout)]
        results.append((model.state_dict(), history, steps))
    (state, history, steps), (want, want_history, want_steps) = results
    assert steps == want_steps == [15, 15, 15]
    for name, value in state.items():
        assert_close(value, want[name], tol=(2e-5, 1e-4), what=name)
    assert history["train_accuracy"] == want_history["train_accuracy"]


def test_batchnorm_refuses_a_batch_of_one_in_the_compiled_step(rng):
    x, y = rng.standard_normal((33, 5)).astype(np.float32), rng.integers(0, 2, 33)
    model = mf.MLP([5, 4, 2], batchnorm=True, backend="cpu", seed=0)
    with pytest.raises(ValueError, match="needs more than 1 sample per batch"):
        mf.fit(model, mf.optim.SGD(model.parameters(), lr=0.1), mf.CrossEntropyLoss(), x, y,
               epochs=1, batch_size=16, progress=False)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_max_norm_inside_the_compiled_step(optimizer, rng):
    """max_norm (every Linear weight's rows onto the ball after each update) as the
    optimizers' own reference path on the numpy backend."""
    x = rng.standard_normal((96, 10)).astype(np.float32) * 3
    y = rng.integers(0, 3, 96)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([10, 16, 3], backend=backend, seed=0)
        params = model.parameters()
        opt = (mf.optim.SGD(params, lr=0.5, momentum=0.9, max_norm=0.8) if optimizer == "sgd"
               else mf.optim.Adam(params, lr=0.05, max_norm=0.8))
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=3, batch_size=16, seed=2,
               progress=False)
        results.append(model.state_dict())
    (state, want) = results
    norms = np.concatenate([np.sqrt((state[name].astype(np.float64) ** 2).sum(axis=1))
                            for name in ("0.weight", "2.weight")])
    assert norms.max() <= 0.8 * (1 + 1e-6) and (norms > 0.79).sum() > 3    # the ball binds
    for name, value in state.items():
        assert_close(value, want[name], tol=(1e-5, 1e-4), what=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_overflowing_gradient_of_the_narrow_last_layer_stops_the_call(precision, rng):
    """The narrow one-pass backward (fp32: a last layer of at most NARROW_N outputs after
    relu) adds the squares of its dW and db to the step's finiteness check, as the weight
    gradients' GEMMs do; in bf16 those GEMMs add none and the step sums all of flat_grad
    itself. MSE on float targets where h_1 ~ 1e35 and W_1 ~ 1e-26 (exact enough in bf16)
    gives finite predictions, loss and lower gradients, but a dW_1 beyond float32 (the
    float64 reference says so); the call stops before its update and changes nothing."""
    x = np.zeros((8, 2), np.float32)
    x[:, 0] = 1e30
    targets = np.zeros((8, 2), np.float32)
    steps, _, (weights, biases, _, _, flat_data) = make_steps(
        [2, 4, 2], ["relu", "identity"], x, targets, 8, "mse", "sgd", (0.0, 0.0, 0.0), rng,
        precision=precision)
    weights[0][...] = [[1e5, 0]] * 4
    weights[1][...] = 1e-26
    biases[0][...] = biases[1][...] = 0
    params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in zip(weights, biases)]
    total, _, grads = reference_gradients(params, ["relu", "identity"], x, targets, "mse",
                                          precision)
    assert np.isfinite(total) and np.abs(grads[0][0]).max() < 1e20
    assert np.abs(grads[1][0]).max() > np.finfo(np.float32).max      # dW_1 overflows
    before, sums = flat_data.copy(), np.zeros(2)
    done, finite, loss = steps.run(np.arange(8, dtype=np.int64), 0, 1, np.full(1, 1e-3), 0,
                                   sums)
    assert (done, finite) == (0, False)
    assert loss == pytest.approx(total / 8, rel=1e-5 if precision == "fp32" else 1e-2)
    assert np.array_equal(flat_data, before) and not sums.any()


def test_the_two_halves_of_a_step_advance_dropout_and_batchnorm_as_the_layers_do(rng):
    """compute_gradients + apply_update (data parallelism's split) with input dropout,
    batchnorm and dropout: on cpu (the compiled step) as on the numpy backend's layers,
    each half-step's forward draws fresh masks (the dropout step advances) and counts a
    batch for batchnorm."""
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    order = rng.permutation(64).astype(np.int64)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([10, 8, 3], batchnorm=True, dropout=0.3, input_dropout=0.1,
                       backend=backend, seed=0)
        opt = mf.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), opt,
                                       as_dataset(model, x, y), 16)
        model.train()
        for b in range(4):
            step.compute_gradients(order[16 * b:16 * (b + 1)])
            step.apply_update(0.05)
        results.append((model.state_dict(),
                        [layer.step for layer in model.layers if isinstance(layer, mf.Dropout)]))
    (state, steps), (want, want_steps) = results
    assert steps == want_steps == [4, 4]
    assert [int(v) for k, v in state.items() if k.endswith("num_batches_tracked")] == [4]
    for name, value in state.items():
        assert_close(value, want[name], tol=(2e-5, 1e-4), what=name)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("dropout", [dict(dropout=0.3), dict(input_dropout=0.2)])
def test_dropout_without_batchnorm_in_the_compiled_step(act, dropout, rng):
    """Dropout after the hidden layers only, or on the inputs only, no batchnorm: the
    backward pass must take layer l's own dropout (the mask and 1 / (1 - p) of what
    follows layer l - 1), not its neighbour's, before f'. Trained by fit on cpu as by the
    numpy backend's layers."""
    x = rng.standard_normal((96, 12)).astype(np.float32)
    y = rng.integers(0, 4, 96)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([12, 10, 8, 4], act, backend=backend, seed=0, **dropout)
        opt = mf.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16, seed=1,
               progress=False)
        results.append(model.state_dict())
    state, want = results
    for name, value in state.items():
        assert_close(value, want[name], tol=(2e-5, 1e-4), what=name)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_a_step_refuses_a_batchnorm_batch_of_one_row_and_changes_nothing(backend, rng):
    """fit refuses a batch size that leaves a batch of 1 before training; the step itself
    refuses one too, as the layers do, where fit's check cannot see it (a data-parallel
    rank's share of a batch, compute_gradients of 1 row; run over an order whose last
    batch is 1 row), before any running statistic or parameter changes."""
    x, y = rng.standard_normal((17, 5)).astype(np.float32), rng.integers(0, 2, 17)
    model = mf.MLP([5, 4, 2], batchnorm=True, backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), opt,
                                   as_dataset(model, x, y), 8)
    model.train()
    before = {name: value.copy() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs more than 1 sample"):
        step.compute_gradients(np.array([3], np.int64))
    if backend == "cpu":            # (the numpy layers update nothing before they refuse)
        with pytest.raises(ValueError, match="needs more than 1 sample"):
            step.run(np.arange(17, dtype=np.int64), 2, 1, np.full(1, 0.1), np.zeros(2))
    for name, value in model.state_dict().items():
        assert np.array_equal(value, before[name]), name
    assert opt.step_count == 0
