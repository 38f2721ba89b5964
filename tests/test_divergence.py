"""Divergence: a NaN or inf in the loss or the gradients stops training with an error naming
the epoch and step; model and optimizer keep the state of the last good step; a checkpoint
is never overwritten with non-finite values."""
import numpy as np
import pytest

import mlpfast as mf
from mlpfast import TrainingDiverged
from mlpfast.checkpoint import read_checkpoint
from mlpfast.run import check_state_finite
from mlpfast.backend.steps import gradients_finite as _step_is_finite

BACKENDS = mf.backends()


class Samples:
    """x/y through the dataset protocol."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.num_features, self.num_classes = x.shape[1], 10

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        x_out[...] = self.x[index]
        y_out[...] = self.y[index]


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20)).astype(np.float32) * 3
    return x, rng.integers(0, 10, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_diverging_learning_rate_stops_with_the_last_good_parameters(backend, tmp_path):
    x, y = _data()
    model = mf.MLP([20, 64, 64, 10], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=1e4, momentum=0.9)    # far too large
    with pytest.raises(TrainingDiverged) as info:
        mf.fit(model, opt, mf.CrossEntropyLoss(), Samples(x, y), epochs=50, batch_size=16,
               seed=0, progress=False, checkpoint=tmp_path / "c", checkpoint_every=1)
    error = info.value
    message = str(error)
    print("\n" + message)
    assert f"training diverged at epoch {error.epoch}, step {error.step} of 4 " \
           f"(global step {error.global_step})" in message
    assert "the last good step" in message and "lower the learning rate" in message
    assert error.global_step == 4 * (error.epoch - 1) + error.step and error.global_step > 1
    assert opt.step_count == error.global_step - 1
    # the checkpoint written after every step holds the last good step, and so do the model
    # and the optimizer: the failing step changed nothing
    ckpt = read_checkpoint(tmp_path / "c")
    assert ckpt.progress["global_step"] == error.global_step - 1
    params = dict(model.named_parameters())
    for name, a in ckpt.model_state().items():
        assert np.isfinite(a).all()
        assert np.array_equal(a, params[name].numpy()), name
    assert np.array_equal(ckpt.optimizer_state()["state"]["momentum_buffer"],
                          opt.state_dict()["state"]["momentum_buffer"])


class NaNGradientAt(mf.CrossEntropyLoss):
    """Cross-entropy whose gradient gets one NaN at global step ``step`` (loss stays finite)."""

    def __init__(self, step=None, backend=None):
        super().__init__(backend)
        self.step, self.calls = step, 0

    def backward(self):
        self.calls += 1
        grad = super().backward()
        if self.calls == self.step:
            grad[0, 0] = np.nan
        return grad


def test_nan_gradient_with_a_finite_loss_is_caught_before_the_update():
    x, y = _data()
    model = mf.MLP([20, 8, 10], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters())
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 2 of 4 \(global step 6\): "
                                               r"the gradient holds NaN or inf \(loss "):
        mf.fit(model, opt, NaNGradientAt(6), x, y, epochs=3, batch_size=16, seed=0,
               progress=False)
    assert opt.step_count == 5 and np.isfinite(model.flat_data).all()
    assert np.isfinite(opt.state_dict()["state"]["exp_avg"]).all()


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_an_update_that_overflows_is_reported_and_never_checkpointed(tmp_path):
    """lr = 1e300 turns finite gradients into inf weights inside the first update; the
    next check names the overflow, and the checkpoint of the last good epoch survives."""
    x, y = _data()
    model = mf.MLP([20, 8, 10], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "c"
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=64, progress=False,
           checkpoint=path)
    good = read_checkpoint(path).model_state()
    opt.lr = 1e300
    with pytest.raises(TrainingDiverged, match="holds NaN or inf after epoch 1 \\(an update "
                                               "overflowed\\).*keeps the last good checkpoint"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=64,
               progress=False, checkpoint=path)
    after = read_checkpoint(path)
    assert after.progress["global_step"] == 1
    for name, a in after.model_state().items():
        assert np.array_equal(a, good[name])


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_after_an_overflowed_update_does_not_claim_a_good_state(backend):
    """A schedule factor of 1e45 at step 3 makes Adam's update overflow the weights from
    finite gradients; step 4's loss is NaN. The error names the parameter that is not
    finite, not the state after step 3 as 'the last good step'."""
    x, y = _data()
    model = mf.MLP([20, 8, 10], backend=backend, seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(TrainingDiverged, match=r"global step 4\): the loss is nan; parameter "
                                               r"0.weight already holds NaN or inf \(an "
                                               r"update overflowed\); lower the learning rate"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16, seed=0,
               progress=False, lr_schedule=lambda t, total: 1e45 if t == 2 else 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_check_names_an_optimizer_moment_that_is_not_finite(backend, tmp_path):
    """The end-of-epoch check reads the optimizer's own buffers: an inf planted in Adam's
    second moment alone (parameters and gradients finite) stops fit after the epoch, and
    no checkpoint of that state is written."""
    x, y = _data()
    model = mf.MLP([20, 8, 10], backend=backend, seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    check_state_finite(model, opt, "now", None)            # finite: no error
    moments = opt.state_arrays()
    assert sorted(moments) == ["exp_avg", "exp_avg_sq"]
    host = mf.to_numpy(moments["exp_avg_sq"]).copy()
    host[-1] = np.inf                                      # the last bias's moment
    model.backend.assign(moments["exp_avg_sq"], host)
    assert mf.to_numpy(opt.state_arrays()["exp_avg_sq"])[-1] == np.inf   # no copy
    with pytest.raises(TrainingDiverged, match="optimizer state exp_avg_sq holds NaN or inf "
                                               "now"):
        check_state_finite(model, opt, "now", None)
    path = tmp_path / "c"
    with pytest.raises(TrainingDiverged, match="exp_avg_sq holds NaN or inf after epoch 1.*"
                                               "keeps the last good checkpoint"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=64,
               progress=False, checkpoint=path)
    assert not path.exists()

def test_step_check_sees_nan_and_inf_anywhere():
    g = np.zeros(1001, np.float32)
    assert _step_is_finite(0.5, [g])
    assert not _step_is_finite(float("nan"), [g])
    assert not _step_is_finite(float("inf"), [g])
    for i in (0, 500, 1000):
        for bad in (np.nan, np.inf, -np.inf):
            h = g.copy()
            h[i] = bad
            assert not _step_is_finite(0.5, [g, h])


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_logits_stop_training_with_a_clear_error(backend):
    # weights so large that the logits overflow to inf: TrainingDiverged, not an exception
    # from inside a kernel, and the weights are those the run started with
    x, y = _data()
    model = mf.MLP([20, 8, 10], backend=backend, seed=0)
    model.layers[0].weight.data[...] = 3e38
    before = model.flat_data.copy()
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1 of 4"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=16,
               progress=False)
    assert np.array_equal(mf.to_numpy(model.flat_data), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")    # the numpy backend's NaN and inf
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_from_a_dataset_objects_batches_is_pointed_at(backend):
    # arrays are checked before training; a dataset object's gather_batch is not, so the
    # divergence it causes names it as a possible source
    x, y = _data()
    poisoned = x.copy()
    poisoned[37, 3] = np.nan
    model = mf.MLP([20, 16, 10], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(TrainingDiverged, match="the loss is nan.*came from the dataset's "
                                               "gather_batch") as info:
        mf.fit(model, opt, mf.CrossEntropyLoss(), Samples(poisoned, y), epochs=1,
               batch_size=64, seed=0, progress=False)
    assert info.value.global_step == 1 and opt.step_count == 0
    model = mf.MLP([20, 16, 10], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=1e4, momentum=0.9)
    with pytest.raises(TrainingDiverged) as info:
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=50, batch_size=16, seed=0,
               progress=False)
    assert "gather_batch" not in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")    # the numpy backend's NaN
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_diverged_batchs_forward_pass_counts_for_dropout(backend):
    # a NaN in sample 37 of an unshuffled run diverges at the third batch of 16; its forward
    # pass ran, so every Dropout's step is 3, as the layer-by-layer numpy backend counts,
    # and training on from there draws fresh masks
    x, y = _data()
    poisoned = x.copy()
    poisoned[37, 3] = np.nan
    model = mf.MLP([20, 16, 16, 10], dropout=0.2, input_dropout=0.1, backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(TrainingDiverged) as info:
        mf.fit(model, opt, mf.CrossEntropyLoss(), Samples(poisoned, y), epochs=1,
               batch_size=16, shuffle=False, seed=0, progress=False)
    assert info.value.global_step == 3 and opt.step_count == 2
    assert [m.step for m in model if isinstance(m, mf.Dropout)] == [3, 3, 3]
