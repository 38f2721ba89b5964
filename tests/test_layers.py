"""Dropout and BatchNorm1d layers, MLP(batchnorm=, dropout=), buffers in state_dict and
save/load, the max_norm optimizer option, and fit on the layer-by-layer engine against a
hand-written torch loop from the same state."""
import copy

import numpy as np
import pytest
from conftest import GRAD_TOL, assert_close, numerical_grad
from torch_parity import torch_sequential_like

import mlpfast as mf
from mlpfast.kernels import dropout as dropout_kernels
from mlpfast.kernels import optim as optim_kernels

torch = pytest.importorskip("torch")

CPU_BACKENDS = [b for b in mf.backends() if b != "cuda"]
TOL64 = (1e-10, 1e-9)


# --- Dropout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dropout_masks_follow_seed_step_and_layer_id(backend, rng):
    layer = mf.Dropout(0.4, seed=11, layer_id=3, backend=backend)
    x = rng.standard_normal((9, 13)).astype(np.float32)
    g = rng.standard_normal((9, 13)).astype(np.float32)
    outputs = []
    for step in range(2):
        expected, keep = dropout_kernels.forward_ref(x, 0.4, 11, step, 3)
        outputs.append(layer.forward(x).copy())
        np.testing.assert_array_equal(outputs[-1], expected)
        np.testing.assert_array_equal(layer.backward(g), dropout_kernels.backward_ref(g, keep, 0.4))
    assert layer.step == 2
    assert not np.array_equal(outputs[0], outputs[1])               # a new mask each step
    kept = outputs[0] != 0
    assert_close(outputs[0][kept] / x[kept], np.full(kept.sum(), 1 / 0.6), what="1/(1-p)")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dropout_is_the_identity_in_eval_and_at_p_zero(backend, rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    g = rng.standard_normal((4, 6)).astype(np.float32)
    layer = mf.Dropout(0.5, seed=1, backend=backend).eval()
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(g), g)
    assert layer.step == 0                                          # eval draws no mask
    zero = mf.Dropout(0.0, backend=backend)
    np.testing.assert_array_equal(zero.forward(x), x)
    np.testing.assert_array_equal(zero.backward(g), g)


def test_dropout_rejects_bad_arguments():
    for call, match in ((lambda: mf.Dropout(1.2), "p must be a probability"),
                        (lambda: mf.Dropout(0.5, seed=-1), "seed must be"),
                        (lambda: mf.Dropout(0.5, layer_id=2 ** 32), "layer_id must be")):
        with pytest.raises(ValueError, match=match):
            call()


# --- BatchNorm1d -------------------------------------------------------------------------------

def torch_batchnorm_like(layer, dtype):
    t = torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                             affine=layer.affine).to(getattr(torch, np.dtype(dtype).name))
    state = {name: p.data for name, p in layer.named_parameters()}
    state.update(layer.named_buffers())
    t.load_state_dict({k: torch.from_numpy(mf.to_numpy(v).copy()) for k, v in state.items()})
    return t


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,affine", [(0.1, True), (None, True), (0.3, False)])
def test_batchnorm_layer_follows_torch_for_five_steps_and_in_eval(backend, dtype, momentum,
                                                                  affine, rng):
    layer = mf.BatchNorm1d(6, momentum=momentum, affine=affine, backend=backend, dtype=dtype)
    if affine:
        layer.weight.data[...] = rng.uniform(0.5, 2, 6)
        layer.bias.data[...] = rng.standard_normal(6)
    reference = torch_batchnorm_like(layer, dtype)
    tol = {np.float32: (1e-5, 1e-5), np.float64: TOL64}[dtype]
    for step, rows in enumerate((8, 3, 17, 2, 5)):
        x = (2 * rng.standard_normal((rows, 6)) + 1).astype(dtype)
        g = rng.standard_normal((rows, 6)).astype(dtype)
        x_torch = torch.from_numpy(x.copy()).requires_grad_()
        y_torch = reference(x_torch)
        y_torch.backward(torch.from_numpy(g))
        assert_close(layer.forward(x), y_torch.detach().numpy(), tol=tol, what=f"y {step}")
        assert_close(layer.backward(g), x_torch.grad.numpy(), tol=tol, what=f"dx {step}")
        if affine:
            assert_close(layer.weight.grad, reference.weight.grad.numpy(), tol=tol)
            assert_close(layer.bias.grad, reference.bias.grad.numpy(), tol=tol)
            reference.zero_grad()
    assert_close(layer.running_mean, reference.running_mean.numpy(), tol=tol)
    assert_close(layer.running_var, reference.running_var.numpy(), tol=tol)
    assert int(layer.num_batches_tracked) == int(reference.num_batches_tracked) == 5
    x = rng.standard_normal((4, 6)).astype(dtype)
    layer.eval(), reference.eval()
    assert_close(layer(x), reference(torch.from_numpy(x)).detach().numpy(), tol=tol, what="eval")
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones((4, 6), dtype))


def test_batchnorm_rejects_one_sample_in_training_before_counting_it():
    layer = mf.BatchNorm1d(3, backend="numpy")
    with pytest.raises(ValueError, match="more than 1 sample"):
        layer.forward(np.ones((1, 3), np.float32))
    assert int(layer.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        mf.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum must be a probability"):
        mf.BatchNorm1d(3, momentum=2.0)


# --- MLP with both, state_dict, torch ----------------------------------------------------------

def test_mlp_layers_and_state_dict_keys_are_torchs():
    model = mf.MLP([5, 4, 3, 2], batchnorm=True, dropout=0.25, input_dropout=0.1, seed=0,
                   backend="numpy")
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear",
                     "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert [layer.layer_id for layer in model if isinstance(layer, mf.Dropout)] == [0, 4, 8]
    assert list(model.state_dict()) == list(torch_sequential_like(torch, model).state_dict())
    state = model.state_dict()
    counter = state["2.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == ()
    assert dict(model.named_buffers()).keys() == {f"{i}.{name}" for i in (2, 6) for name in
                                                  ("running_mean", "running_var",
                                                   "num_batches_tracked")}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_model_with_both_gives_torchs_eval_logits_and_takes_its_state_back(backend, rng):
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = mf.MLP([10, 8, 6, 3], batchnorm=True, dropout=0.3, seed=2, backend=backend)
    mf.fit(model, mf.optim.Adam(model.parameters(), lr=1e-2), mf.CrossEntropyLoss(), x, y,
           epochs=2, batch_size=16, progress=False, seed=0)
    assert int(model.state_dict()["1.num_batches_tracked"]) == 8
    model_torch = torch_sequential_like(torch, model).eval()
    assert_close(model(x), model_torch(torch.from_numpy(x)).detach().numpy(), tol=(1e-5, 1e-4),
                 what="eval logits, mlpfast -> torch")
    model_torch.train()                                      # torch moves its own state
    opt = torch.optim.SGD(model_torch.parameters(), lr=0.1)
    for lo in range(0, 64, 16):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model_torch(torch.from_numpy(x[lo:lo + 16])),
                                          torch.from_numpy(y[lo:lo + 16])).backward()
        opt.step()
    model.load_state_dict(model_torch.state_dict())
    model_torch.eval()
    assert_close(model(x), model_torch(torch.from_numpy(x)).detach().numpy(), tol=(1e-5, 1e-4),
                 what="eval logits, torch -> mlpfast")
    assert int(model.state_dict()["5.num_batches_tracked"]) == 12


def test_save_and_load_keep_buffers_and_layers(tmp_path, rng):
    model = mf.MLP([6, 5, 4], batchnorm=True, dropout=0.2, seed=1, backend="numpy")
    x = rng.standard_normal((20, 6)).astype(np.float32)
    for _ in range(3):
        model.forward(x)                                     # moves the running statistics
    model.save(tmp_path / "m.npz")
    loaded = mf.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.architecture() == model.architecture()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    model.eval()
    np.testing.assert_array_equal(loaded.eval()(x), model(x))
    dropout_layer = loaded[3]
    assert (dropout_layer.p, dropout_layer.seed, dropout_layer.layer_id) == \
        (0.2, model[3].seed, 3)


def test_load_state_dict_checks_buffers_before_writing():
    model = mf.MLP([4, 3, 2], batchnorm=True, seed=0, backend="numpy")
    before = model.state_dict()
    cases = [("1.num_batches_tracked", np.array(-1), TypeError, "integers >= 0"),
             ("1.num_batches_tracked", np.array(2.0), TypeError, "integers >= 0"),
             ("1.running_var", np.array([1.0, np.nan, 1.0]), ValueError, "NaN"),
             ("1.running_mean", np.zeros(4), ValueError, r"shape \(3,\)")]
    for key, value, error, match in cases:
        state = dict(before, **{"0.weight": before["0.weight"] + 1, key: value})
        with pytest.raises(error, match=match):
            model.load_state_dict(state)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match=r"missing \['1.running_var'\]"):
        model.load_state_dict({k: v for k, v in before.items() if k != "1.running_var"})


def test_load_rejects_a_batchnorm_size_that_does_not_match_its_arrays(tmp_path):
    import json
    model = mf.MLP([4, 3, 2], batchnorm=True, seed=0, backend="numpy")
    arrays = model.state_dict()
    arch = model.architecture()
    arch["layers"][1]["num_features"] = 10 ** 12
    arrays["__mlpfast__"] = np.frombuffer(json.dumps(arch).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"1.weight.npy: expected float32 of shape "
                                         r"\(1000000000000,\), the file holds float32 of shape"):
        mf.load(tmp_path / "bad.npz")


# --- gradients through BatchNorm1d and Dropout -------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_through_batchnorm_and_dropout_match_finite_differences(backend, rng):
    model = mf.MLP([5, 6, 4, 3], activation="tanh", batchnorm=True, dropout=0.3,
                   input_dropout=0.2, dtype=np.float64, seed=5, backend=backend)
    x, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    dropouts = [layer for layer in model if isinstance(layer, mf.Dropout)]
    loss_fn = mf.CrossEntropyLoss()

    def forward():
        for layer in dropouts:
            layer.step = 4                                   # the same masks every time
        return model.forward(x)

    def loss():
        return loss_fn.value(forward(), y)

    loss_fn(forward(), y)
    grad_x = model.backward(loss_fn.backward()).copy()
    analytic = mf.to_numpy(model.flat_grad).copy()
    assert_close(analytic, numerical_grad(loss, model.flat_data), tol=GRAD_TOL, what="params")
    assert_close(grad_x, numerical_grad(loss, x), tol=GRAD_TOL, what="input")


# --- max_norm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda p, c: mf.optim.SGD(p, lr=0.5, momentum=0.9, max_norm=c),
                                  lambda p, c: mf.optim.Adam(p, lr=0.3, max_norm=c),
                                  lambda p, c: mf.optim.AdamW(p, lr=0.3, max_norm=c)])
def test_max_norm_projects_each_linear_weight_row_after_the_step(make, rng):
    models = [mf.MLP([6, 5, 4], batchnorm=True, seed=0, backend="numpy") for _ in range(2)]
    constrained, free = make(models[0].parameters(), 0.8), make(models[1].parameters(), None)
    grads = rng.standard_normal(models[0].flat_grad.shape)
    for model in models:
        model.flat_grad[...] = grads
    constrained.step()
    free.step()
    for (name, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        expected = q.data.copy()
        if expected.ndim == 2:
            optim_kernels.max_norm_ref(expected, 0.8)
            assert (np.linalg.norm(p.data, axis=1) <= 0.8 * (1 + 1e-6)).all()
        np.testing.assert_array_equal(p.data, expected, err_msg=name)   # 1-D: untouched
    assert constrained.state_dict()["hyper"]["max_norm"] == 0.8
    assert "max_norm" not in free.state_dict()["hyper"]
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        mf.optim.SGD(models[0].parameters(), lr=0.1, max_norm=0)


# --- fit on the layer-by-layer engine against a torch loop -------------------------------------

class ReplayedDropout(torch.nn.Module):
    """torch dropout with mlpfast's mask for (seed, step, layer_id): the same draws."""

    def __init__(self, layer):
        super().__init__()
        self.p, self.seed, self.layer_id, self.step = layer.p, layer.seed, layer.layer_id, 0

    def forward(self, x):
        if not self.training:
            return x
        keep = dropout_kernels.mask_ref(tuple(x.shape), self.p, self.seed, self.step,
                                        self.layer_id)
        self.step += 1
        return x * torch.from_numpy(keep).to(x.dtype) / (1 - self.p)


def torch_loop(model_torch, optimizer, x, y, epochs, batch_size, max_norm=None):
    """Plain torch training, in order; returns the per-epoch mean loss."""
    losses = []
    for _ in range(epochs):
        total = 0.0
        for lo in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[lo:lo + batch_size])
            yb = torch.from_numpy(y[lo:lo + batch_size])
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model_torch(xb), yb)
            loss.backward()
            optimizer.step()
            if max_norm is not None:
                with torch.no_grad():
                    for m in model_torch:
                        if isinstance(m, torch.nn.Linear):
                            norms = m.weight.norm(dim=1, keepdim=True)
                            m.weight.mul_(max_norm / norms.clamp(min=max_norm))
            total += float(loss.detach()) * len(xb)
        losses.append(total / len(x))
    return losses


@pytest.mark.parametrize("backend", [b for b in ("numpy", "numba") if b in CPU_BACKENDS])
@pytest.mark.parametrize("case", ["sgd, batchnorm", "sgd + max_norm, batchnorm and dropout",
                                  "adam, dropout"])
def test_fit_matches_a_torch_loop_from_the_same_state(backend, case, rng):
    x = rng.standard_normal((45, 8))
    y = rng.integers(0, 4, 45)
    use_dropout, max_norm = "dropout" in case, 0.9 if "max_norm" in case else None
    model = mf.MLP([8, 7, 6, 4], batchnorm="batchnorm" in case,
                   dropout=0.3 if use_dropout else 0.0, dtype=np.float64, seed=3, backend=backend)
    mods = list(torch_sequential_like(torch, model, np.float64))
    mods = [ReplayedDropout(layer) if isinstance(layer, mf.Dropout) else m
            for layer, m in zip(model, mods)]
    model_torch = torch.nn.Sequential(*mods)
    if case.startswith("adam"):
        opt = mf.optim.Adam(model.parameters(), lr=1e-2)
        opt_torch = torch.optim.Adam(model_torch.parameters(), lr=1e-2)
    else:
        opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, max_norm=max_norm)
        opt_torch = torch.optim.SGD(model_torch.parameters(), lr=0.1, momentum=0.9)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=3, batch_size=16,
                     shuffle=False, progress=False)
    losses = torch_loop(model_torch, opt_torch, x, y, 3, 16, max_norm)
    assert_close(history["loss"], losses, tol=TOL64, what="epoch losses")
    state_torch = model_torch.state_dict()
    for key, value in model.state_dict().items():
        assert_close(value, state_torch[key].numpy(), tol=TOL64, what=key)
    if use_dropout:
        assert [layer.step for layer in model if isinstance(layer, mf.Dropout)] == [9, 9]


# --- checks before training and at construction -----------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,batch_size", [(9, 4), (8, 1)])
def test_fit_refuses_a_batch_of_one_with_batchnorm_before_training(backend, n, batch_size,
                                                                   rng):
    x, y = rng.random((n, 3)).astype(np.float32), rng.integers(0, 2, n)
    model = mf.MLP([3, 4, 2], seed=0, batchnorm=True, backend=backend)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    with pytest.raises(ValueError, match=f"batch_size={batch_size} with {n} samples gives a "
                                         f"batch of 1: choose a batch_size > 1"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=batch_size,
               progress=False)
    assert opt.step_count == 0
    for name, value in model.state_dict().items():
        assert np.array_equal(value, before[name]), name
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=3,
                     progress=False)
    assert opt.step_count == -(-n // 3) and history["loss"][0] > 0


def test_sequential_refuses_another_models_layers_and_a_layer_twice():
    model = mf.MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="layer 0 .* belongs to another model.*deepcopy"):
        mf.Sequential(*model.layers)
    relu = mf.ReLU()
    with pytest.raises(ValueError, match="layer 3 is layer 1 again"):
        mf.Sequential(mf.Linear(3, 3), relu, mf.Linear(3, 3), relu, mf.Linear(3, 2))
    linear = mf.Linear(3, 3, seed=0)
    with pytest.raises(ValueError, match="layer 1 is layer 0 again: .* build another Linear"):
        mf.Sequential(linear, linear)
    assert model[0].weight.flat_slice[0] is model.flat_data       # nothing moved
    head = mf.Sequential(*mf.MLP([3, 4, 2], seed=0).layers, mf.Softmax())   # a model gone
    assert np.array_equal(head.flat_data, model.flat_data)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_copies_of_a_model_or_its_layers_train_apart_from_it(backend, rng):
    """copy.deepcopy(model) and Sequential(*copy.deepcopy(model.layers)) train their own
    flat buffers; the original model still trains its own (its weights move)."""
    x, y = rng.random((24, 3)).astype(np.float32), rng.integers(0, 2, 24)
    model = mf.MLP([3, 4, 2], seed=0, backend=backend)
    start = mf.to_numpy(model.flat_data).copy()
    copies = [copy.deepcopy(model), mf.Sequential(*copy.deepcopy(model.layers)), model]
    results = []
    for m in copies:
        opt = mf.optim.SGD(m.parameters(), lr=0.5)
        assert opt._flat is not None and opt._flat[0] is m.flat_data
        history = mf.fit(m, opt, mf.CrossEntropyLoss(), x, y, epochs=3, batch_size=8, seed=0,
                         progress=False)
        results.append((mf.to_numpy(m.flat_data).copy(), history["loss"]))
    for params, losses in results:
        assert np.array_equal(params, results[0][0]) and losses == results[0][1]
    assert not np.array_equal(results[0][0], start) and losses[0] != losses[-1]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_evaluate_and_predict_leave_the_models_mode_as_they_found_it(backend, rng):
    """evaluate, predict and predict_proba run in eval mode and give the mode back: a model
    in eval mode stays deterministic (no dropout, running statistics) afterwards, and one
    in training mode stays in training mode."""
    model = mf.MLP([4, 8, 3], batchnorm=True, dropout=0.5, backend=backend, seed=0)
    x, y = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
    model.eval()
    before = model(x)
    for training in (False, True):
        model.train(training)
        mf.evaluate(model, x, y)
        mf.predict(model, x)
        mf.predict_proba(model, x)
        assert model.training is training
        assert all(layer.training is training for layer in model), training
    model.eval()
    assert np.array_equal(model(x), before)


def test_activation_and_init_arguments_are_checked():
    for call, error, match in (
            (lambda: mf.LeakyReLU(float("nan")), ValueError, "negative_slope must be finite"),
            (lambda: mf.LeakyReLU("a"), TypeError, "negative_slope must be a number, got 'a'"),
            (lambda: mf.Linear(3, 2, nonlinearity="foo"), ValueError,
             "nonlinearity must be one of .* got 'foo'")):
        with pytest.raises(error, match=match):
            call()
    assert mf.LeakyReLU(np.float32(0.2)).params == {"negative_slope": pytest.approx(0.2)}
