"""The compiled MLP step (kernels/mlp_step.py) against the layer-by-layer engine it
replaces in fit: same loss, correct count and gradients; fit gives the same model either
way; NaN, bad indices and bad arguments handled as everywhere else."""
import numpy as np
import pytest
from conftest import assert_close

import mlpfast as mf
from mlpfast import train
from mlpfast.kernels import gemm, mlp_step

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")


def linear_layers(model):
    return [layer for layer in model.layers if isinstance(layer, mf.Linear)]


def compiled_step(model, x, y, rows):
    return mlp_step.MLPTrainStep(*train._mlp_layout(model), model.flat_grad, x, y, rows)


def layer_by_layer(model, x, y, index):
    loss_fn = mf.CrossEntropyLoss()
    loss = loss_fn(model.forward(np.ascontiguousarray(x[index], dtype=np.float32)), y[index])
    model.backward(loss_fn.backward(), input_grad=False)
    return loss, loss_fn.last_correct, model.flat_grad.copy()


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("src_dtype", [np.float32, np.uint8])
def test_step_matches_the_layer_by_layer_engine(activation, rows, src_dtype, rng):
    x = (rng.random((200, 37)) * 255).astype(src_dtype)
    y = rng.integers(0, 11, 200)
    model = mf.MLP([37, 29, 13, 11], activation=activation, backend="cpu", seed=1)
    step = compiled_step(model, x, y, rows)
    index = rng.permutation(200)[:rows]
    loss, correct, finite = step(index)
    grads = model.flat_grad.copy()
    model.flat_grad[...] = np.nan
    want_loss, want_correct, want_grads = layer_by_layer(model, x, y, index)
    assert finite and correct == want_correct
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert_close(grads, want_grads, tol=(1e-6, 1e-5), what=activation)


def test_layers_without_bias_and_a_single_layer(rng):
    x, y = rng.standard_normal((50, 9)).astype(np.float32), rng.integers(0, 4, 50)
    for layers in ([mf.Linear(9, 6, bias=False, seed=0), mf.Tanh(), mf.Linear(6, 4, seed=1)],
                   [mf.Linear(9, 4, bias=False, seed=2)]):
        model = mf.Sequential(*layers)
        index = rng.permutation(50)[:16]
        loss, correct, finite = compiled_step(model, x, y, 16)(index)
        grads = model.flat_grad.copy()
        want_loss, want_correct, want_grads = layer_by_layer(model, x, y, index)
        assert finite and correct == want_correct and loss == pytest.approx(want_loss, rel=1e-6)
        assert_close(grads, want_grads, tol=(1e-6, 1e-5))


def test_fit_uses_the_compiled_step_and_trains_the_same_model(monkeypatch, rng):
    x = rng.standard_normal((300, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    results = []
    for compiled in (True, False):
        model = mf.MLP([20, 16, 4], backend="cpu", seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=3e-2)
        if not compiled:
            monkeypatch.delitem(model.backend.ops, "mlp_train_step")
        made = train.make_train_step(model, mf.CrossEntropyLoss(), opt,
                                      train.as_dataset(model, x, y), 64)
        assert isinstance(made, train.LayerByLayerStep) != compiled
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=8, batch_size=64,
                         seed=5, progress=False)
        results.append((history, model.flat_data.copy()))
        monkeypatch.undo()
    (h1, p1), (h2, p2) = results
    assert_close(p1, p2, tol=(1e-5, 1e-4))
    assert h1["train_accuracy"] == h2["train_accuracy"]
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    assert h1["train_accuracy"][-1] > 0.8


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


def test_dataset_objects_train_through_the_compiled_step_too(monkeypatch, rng):
    x = rng.standard_normal((150, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    results = []
    for compiled in (True, False):
        model = mf.MLP([12, 10, 4], activation="tanh", backend="cpu", seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=1e-2)
        if not compiled:
            monkeypatch.delitem(model.backend.ops, "mlp_train_step")
        step = train.make_train_step(model, mf.CrossEntropyLoss(), opt, FramesLike(x, y), 32)
        assert isinstance(step, train.LayerByLayerStep) != compiled
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), FramesLike(x, y), epochs=3,
                         batch_size=32, seed=1, progress=False)
        results.append((history, model.flat_data.copy()))
        monkeypatch.undo()
    (h1, p1), (h2, p2) = results
    assert_close(p1, p2, tol=(1e-5, 1e-4))
    assert h1["train_accuracy"] == h2["train_accuracy"]


def test_models_it_does_not_cover_use_the_engine(rng):
    x, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    for model, loss_fn in ((mf.MLP([5, 4, 3], activation="gelu", backend="cpu"),
                            mf.CrossEntropyLoss()),
                           (mf.MLP([5, 4, 3], backend="cpu"), mf.MSELoss()),
                           (mf.MLP([5, 4, 3], backend="cpu", dtype=np.float64),
                            mf.CrossEntropyLoss()),
                           (mf.Sequential(mf.Linear(5, 3), mf.Softmax()), mf.CrossEntropyLoss()),
                           (mf.MLP([5, 4, 3], backend="numba"), mf.CrossEntropyLoss())):
        opt = mf.optim.SGD(model.parameters(), lr=0.1)
        step = train.make_train_step(model, loss_fn, opt, train.as_dataset(model, x, y), 8)
        assert isinstance(step, train.LayerByLayerStep), model


def test_nan_gradient_is_reported_and_nothing_else_changes(rng):
    x, y = rng.standard_normal((30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    model = mf.MLP([6, 5, 3], backend="cpu", seed=0)
    before = model.flat_data.copy()
    x[4, 2] = np.nan
    loss, _, finite = compiled_step(model, x, y, 8)(np.arange(8))
    assert not finite and np.isnan(loss)
    assert np.array_equal(model.flat_data, before)
    x[4, 2] = 3e38                                      # finite input, overflowing gradient
    model.layers[0].weight.data[...] = 3e38
    _, _, finite = compiled_step(model, x, y, 8)(np.arange(8))
    assert not finite


def test_bad_arguments_are_named(rng):
    x, y = rng.standard_normal((30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    model = mf.MLP([6, 5, 3], backend="cpu", seed=0)
    weights, biases, weight_grads, bias_grads, names = train._mlp_layout(model)
    step = compiled_step(model, x, y, 4)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 30\)"):
        step(np.array([0, 1, 30, 2]))
    with pytest.raises(ValueError, match=r"index must be int64 of shape \(4,\)"):
        step(np.arange(5))
    bad_labels = y.copy()
    bad_labels[7] = 3
    before = model.flat_grad.copy()
    step = mlp_step.MLPTrainStep(weights, biases, weight_grads, bias_grads, names,
                                 model.flat_grad, x, bad_labels, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 outputs"):
        step(np.array([5, 6, 7, 8]))
    assert np.array_equal(model.flat_grad, before)        # refused before any gradient
    with pytest.raises(ValueError, match=r"src_x must be a C-contiguous numeric array \(N, 6\)"):
        mlp_step.MLPTrainStep(weights, biases, weight_grads, bias_grads, names,
                              model.flat_grad, x[:, :5], y, 4)
    with pytest.raises(ValueError, match=r"weights\[1\] must be a C-contiguous float32 array"):
        mlp_step.MLPTrainStep([weights[0], weights[1].T], biases, weight_grads, bias_grads,
                              names, model.flat_grad, x, y, 4)
    with pytest.raises(ValueError, match="the last layer must output logits"):
        mlp_step.MLPTrainStep(weights, biases, weight_grads, bias_grads, ["relu", "relu"],
                              model.flat_grad, x, y, 4)
