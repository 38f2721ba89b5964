"""The engine: gradients against finite differences, weights in PyTorch's layout, save/load,
training, evaluation, and clear errors that leave model and optimizer untouched."""
import numpy as np
import pytest
from conftest import GRAD_TOL, assert_close, numerical_grad

import mlpfast as mf

BACKENDS = mf.backends()


def relative_error(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "gelu",
                                        "gelu_tanh", "identity"])
def test_mlp_gradients_match_finite_differences(backend, activation, rng):
    model = mf.MLP([6, 5, 4, 3], activation=activation, backend=backend, dtype=np.float64, seed=3)
    x = rng.standard_normal((7, 6))
    y = rng.integers(0, 3, 7)
    loss_fn = mf.CrossEntropyLoss()
    loss_fn(model.forward(x), y)
    model.backward(loss_fn.backward())
    analytic = mf.to_numpy(model.flat_grad).copy()
    numeric = numerical_grad(lambda: loss_fn.value(model.forward(x), y), model.flat_data)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_backward_without_input_gradient_sets_the_same_parameter_gradients(backend, activation,
                                                                            rng):
    # training skips dL/dx of the first layer; every parameter gradient stays the same
    model = mf.MLP([6, 5, 4, 3], activation=activation, backend=backend, dtype=np.float64, seed=3)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    loss_fn = mf.CrossEntropyLoss()
    loss_fn(model.forward(x), y)
    grad_x = model.backward(loss_fn.backward())
    assert grad_x.shape == (7, 6)
    with_input = mf.to_numpy(model.flat_grad).copy()
    model.flat_grad[...] = np.nan
    assert model.backward(loss_fn.backward(), input_grad=False) is None
    assert np.array_equal(mf.to_numpy(model.flat_grad), with_input)


def test_input_gradient_and_every_layer_type(rng):
    layers = [mf.Linear(4, 6, dtype=np.float64, seed=0), mf.LeakyReLU(0.2, dtype=np.float64),
              mf.Linear(6, 5, bias=False, dtype=np.float64, seed=1), mf.GELU("tanh", dtype=np.float64),
              mf.Linear(5, 5, dtype=np.float64, seed=2), mf.Sigmoid(dtype=np.float64),
              mf.Tanh(dtype=np.float64), mf.Identity(dtype=np.float64), mf.Softmax(dtype=np.float64)]
    model = mf.Sequential(*layers)
    x = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 5))
    loss_fn = mf.MSELoss()
    loss_fn(model.forward(x), target)
    grad_x = model.backward(loss_fn.backward()).copy()
    assert_close(grad_x, numerical_grad(lambda: loss_fn.value(model.forward(x), target), x),
                 tol=GRAD_TOL)
    assert_close(model.flat_grad.copy(),
                 numerical_grad(lambda: loss_fn.value(model.forward(x), target), model.flat_data),
                 tol=GRAD_TOL)


def test_mlp_layers_and_state_dict_follow_torch_layout():
    model = mf.MLP([784, 512, 256, 10], seed=0)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        "0.weight": (512, 784), "0.bias": (512,), "2.weight": (256, 512), "2.bias": (256,),
        "4.weight": (10, 256), "4.bias": (10,)}
    assert sum(v.size for v in state.values()) == 535818
    assert all(v.dtype == np.float32 for v in state.values())
    # PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = state["0.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(784) and np.abs(w).max() > 0.9 / np.sqrt(784)
    assert abs(w.std() - (1 / np.sqrt(784)) / np.sqrt(3)) < 1e-3


def test_seed_makes_models_identical_and_different_seeds_differ():
    a, b, c = (mf.MLP([10, 8, 3], seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not np.array_equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_state_dict_round_trip_and_save_load(tmp_path, rng):
    model = mf.MLP([5, 7, 3], activation="gelu", seed=0)
    other = mf.MLP([5, 7, 3], activation="gelu", seed=1)
    other.load_state_dict(model.state_dict())
    x = rng.standard_normal((4, 5)).astype(np.float32)
    assert np.array_equal(model(x), other(x))
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = mf.load(path)
    assert [type(layer).__name__ for layer in loaded] == ["Linear", "GELU", "Linear"]
    assert np.array_equal(loaded(x), model(x))
    with np.load(path, allow_pickle=False) as npz:    # plain arrays, no pickles
        assert set(npz.files) == {"0.weight", "0.bias", "2.weight", "2.bias", "__mlpfast__"}


def test_call_returns_fresh_arrays(rng):
    model = mf.MLP([3, 4, 2], seed=0)
    x1, x2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    y1 = model(x1)
    y1_copy = y1.copy()
    model(x2)
    assert np.array_equal(y1, y1_copy)


def test_optimizer_step_over_flat_buffer_equals_per_parameter(rng):
    model = mf.MLP([6, 5, 3], seed=0)
    loose = [mf.Linear(6, 5, seed=0), mf.Linear(5, 3, seed=0)]
    for layer, src in zip(loose, (model[0], model[2])):
        layer.weight.data[...] = src.weight.data
        layer.bias.data[...] = src.bias.data
    params_loose = [p for layer in loose for p in layer.parameters()]
    for p_model, p_loose in zip(model.parameters(), params_loose):
        g = rng.standard_normal(p_model.shape).astype(np.float32)
        p_model.grad[...] = g
        p_loose.grad[...] = g
    for cls, kwargs in ((mf.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
                        (mf.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                        (mf.optim.AdamW, {"lr": 0.01})):
        flat_opt, loose_opt = cls(model.parameters(), **kwargs), cls(params_loose, **kwargs)
        assert flat_opt._flat is not None and loose_opt._flat is None
        for _ in range(2):
            flat_opt.step()
            loose_opt.step()
        for p_model, p_loose in zip(model.parameters(), params_loose):
            assert_close(p_model.data, p_loose.data)


def test_optimizer_state_dict_round_trip(rng):
    model = mf.MLP([4, 3, 2], seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=0.01)
    model.flat_grad[...] = rng.standard_normal(model.flat_grad.shape)
    opt.step()
    state = opt.state_dict()
    other = mf.optim.Adam(mf.MLP([4, 3, 2], seed=0).parameters())
    other.load_state_dict(state)
    assert other.step_count == 1 and other.hyper["lr"] == 0.01
    assert np.array_equal(other.state_dict()["state"]["exp_avg"], state["state"]["exp_avg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_learns_a_separable_problem(backend, rng):
    x = rng.standard_normal((600, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + 2 * (x[:, 3] > 0.5)
    model = mf.MLP([8, 32, 4], backend=backend, seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=0.01)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=15, batch_size=32,
                     val=(x[:100], y[:100]), seed=0, progress=False)
    assert len(history) == 15
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["train_accuracy"][-1] > 0.9
    assert history["val_accuracy"][-1] > 0.9 and history["val_loss"][-1] > 0
    assert all(r["samples_per_s"] > 0 and r["seconds"] > 0 for r in history.epochs)
    result = mf.evaluate(model, x, y)
    assert result["n"] == 600 and result["confusion_matrix"].sum() == 600
    assert np.trace(result["confusion_matrix"]) == round(result["accuracy"] * 600)
    predicted = mf.predict(model, x, batch_size=77)
    assert predicted.dtype == np.int64 and (predicted == y).mean() == result["accuracy"]
    proba = mf.predict_proba(model, x)
    assert_close(proba.sum(axis=1), np.ones(600), tol=(1e-5, 0))
    assert np.array_equal(proba.argmax(axis=1), predicted)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_proba_is_softmax_of_the_logits_or_a_softmax_heads_output(backend, rng):
    x = rng.standard_normal((37, 5))
    def layers(*extra):
        where = dict(backend=backend, dtype=np.float64)
        return mf.Sequential(mf.Linear(5, 4, **where), mf.Tanh(**where),
                             mf.Linear(4, 3, **where), *(layer(**where) for layer in extra))
    logits_model = layers()
    z = logits_model(x)
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert_close(mf.predict_proba(logits_model, x, batch_size=10), expected, np.float64)
    # the same layers with a Softmax head: its outputs are the probabilities (softmax was
    # applied twice, flattening them towards 1/3)
    head = layers(mf.Softmax)
    head.load_state_dict(logits_model.state_dict())
    assert_close(mf.predict_proba(head, x, batch_size=10), expected, np.float64)
    assert np.array_equal(mf.predict(head, x), expected.argmax(axis=1))
    # a float32 model's probabilities are float32 (softmax taken in float64, then rounded)
    model32 = mf.MLP([5, 4, 3], backend=backend, seed=0)
    z = model32(x).astype(np.float64)
    proba = mf.predict_proba(model32, x, batch_size=10)
    assert proba.dtype == np.float32 and proba.shape == (37, 3)
    assert_close(proba, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), np.float32)


def test_fit_with_sgd_and_mse_on_regression(rng):
    x = rng.standard_normal((256, 3)).astype(np.float32)
    target = np.stack([x[:, 0] - 2 * x[:, 1], x[:, 2] * 0.5], axis=1).astype(np.float32)
    model = mf.MLP([3, 16, 2], activation="tanh", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = mf.fit(model, opt, mf.MSELoss(), x, target, epochs=30, batch_size=16, seed=0,
                     progress=False)
    assert history["train_accuracy"][0] is None
    assert history["loss"][-1] < 0.02 < history["loss"][0]


def test_fit_is_reproducible_with_a_seed(rng):
    x = rng.standard_normal((100, 4)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    runs = []
    for _ in range(2):
        model = mf.MLP([4, 6, 3], seed=0)
        mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), x, y,
               epochs=2, batch_size=16, seed=7, progress=False)
        runs.append(model.flat_data.copy())
    assert np.array_equal(runs[0], runs[1])


class TinyDataset:
    """The dataset protocol: x[i] = i-th row, label = i % 3."""
    num_features, num_classes = 4, 3

    def __init__(self, n):
        self.x = np.arange(n * 4, dtype=np.float32).reshape(n, 4) / (n * 4)
        self.y = np.arange(n) % 3

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        x_out[...] = self.x[index]
        y_out[...] = self.y[index]


def test_fit_and_evaluate_accept_a_dataset():
    data = TinyDataset(50)
    model = mf.MLP([4, 8, 3], seed=0)
    history = mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), data,
                     epochs=2, batch_size=8, val=TinyDataset(20), seed=0, progress=False)
    assert len(history) == 2          # val was evaluated on the dataset object, as evaluate does
    val = mf.evaluate(model, TinyDataset(20))
    assert (history["val_accuracy"][-1], history["val_loss"][-1]) == pytest.approx(
        (val["accuracy"], val["loss"]))
    assert mf.evaluate(model, data)["n"] == 50
    with pytest.raises(ValueError, match="y must be omitted"):
        mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), data, data.y,
               epochs=1, batch_size=8)


def test_load_state_dict_checks_before_copying():
    model = mf.MLP([4, 3, 2], seed=0)
    before = model.flat_data.copy()
    state = model.state_dict()
    state["2.weight"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"2.weight must have shape \(2, 3\)"):
        model.load_state_dict(state)
    state = mf.MLP([4, 3, 2], seed=1).state_dict()
    state.pop("0.bias")
    with pytest.raises(ValueError, match="missing \\['0.bias'\\]"):
        model.load_state_dict(state)
    assert np.array_equal(model.flat_data, before)


def test_constructor_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        mf.MLP([3, 2], activation="swish")
    with pytest.raises(ValueError, match="sizes must list"):
        mf.MLP([3])
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        mf.Linear(0, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        mf.MLP([3, 2], backend="tpu")
    with pytest.raises(ValueError, match="lr must be >= 0"):
        mf.optim.Adam(mf.MLP([3, 2]).parameters(), lr=-1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        mf.optim.SGD(mf.MLP([3, 2]).parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="n must be an integer from 1 to 256"):
        mf.set_num_threads(0)


def test_lr_schedule_scales_each_step(rng):
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    frozen = mf.MLP([4, 6, 3], seed=0)
    before = frozen.flat_data.copy()
    opt = mf.optim.SGD(frozen.parameters(), lr=0.1)
    mf.fit(frozen, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16, progress=False,
           lr_schedule=lambda step, total: 0.0)
    assert np.array_equal(frozen.flat_data, before)        # lr * 0: nothing moves
    assert opt.lr == 0.1                                     # the schedule leaves no trace
    seen = []
    model = mf.MLP([4, 6, 3], seed=0)
    mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), x, y, epochs=2,
           batch_size=16, progress=False, lr_schedule=lambda t, total: seen.append((t, total)) or 1)
    assert seen == [(t, 8) for t in range(8)]
    with pytest.raises(ValueError, match="lr schedule must be one of"):
        mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), x, y, epochs=1,
               batch_size=16, lr_schedule="stairs")


def test_assert_close_fails_on_nan_and_infinities():
    from conftest import assert_close
    assert_close([1.0, np.nan, np.inf], [1.0, np.nan, np.inf])
    for actual, expected in (([np.nan], [1.0]), ([1.0], [np.nan]), ([np.inf], [1.0]),
                             ([-np.inf], [np.inf]), ([2.0], [1.0])):
        with pytest.raises(AssertionError):
            assert_close(actual, expected, tol=(1e-3, 1e-3))


@pytest.mark.parametrize("backend", mf.backends())
@pytest.mark.parametrize("saved,own", [(0.9, 0.0), (0.0, 0.9)])
def test_sgd_load_state_dict_takes_the_saved_momentum_as_torch_does(backend, saved, own, rng):
    """torch's load_state_dict restores the param groups' hyperparameters: an SGD built with
    one momentum that loads another's state trains exactly as the saved one would."""
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    def train(model, opt):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8, seed=0,
               progress=False)

    model = mf.MLP([4, 6, 3], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=saved)
    train(model, opt)
    twin = mf.MLP([4, 6, 3], backend=backend, seed=1)
    twin.load_state_dict(model.state_dict())
    twin_opt = mf.optim.SGD(twin.parameters(), lr=0.5, momentum=own)
    twin_opt.load_state_dict(opt.state_dict())
    assert twin_opt.hyper == opt.hyper and twin_opt.state_names == opt.state_names
    train(model, opt)
    train(twin, twin_opt)
    assert np.array_equal(mf.to_numpy(twin.flat_data), mf.to_numpy(model.flat_data))
    assert twin_opt.step_count == opt.step_count == 10
