"""fit with learning-rate schedules and early stopping: the rates each step gets, the best
epoch's weights restored, and exact resume with both (their state is checkpointed)."""
import signal

import numpy as np
import pytest

import mlpfast as mf
from conftest import BatchSamples, Crash

BACKENDS = mf.backends()


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(np.int64)


class RecordingSGD(mf.optim.SGD):
    """SGD that records the learning rate of every step it takes."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.rates = []

    def step(self, lr=None):
        self.rates.append(lr)
        super().step(lr)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("step", {"step_size": 2, "gamma": 0.5}, lambda t: 0.1 * 0.5 ** (t // 8)),
    ("exponential", {"gamma": 0.9}, lambda t: 0.1 * 0.9 ** (t // 4)),
    ("cosine", {"warmup_steps": 4, "warmup_start_factor": 0.25},
     lambda t: 0.1 * (0.25 + 0.75 * t / 4 if t < 4 else
                      0.5 * (1 + np.cos(np.pi * (t - 4) / 12)))),
])
def test_each_step_gets_the_scheduled_rate(name, kwargs, expected):
    x, y = _data(64)
    model = mf.MLP([6, 5, 2], backend="numpy", seed=0)
    opt = RecordingSGD(model.parameters(), lr=0.1)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=4, batch_size=16, progress=False,
           lr_schedule=mf.schedules.make_schedule(name, **kwargs))
    np.testing.assert_allclose(opt.rates, [expected(t) for t in range(16)], rtol=1e-12)
    assert opt.lr == 0.1                                     # the schedule leaves no trace


def test_plateau_lowers_the_rate_when_the_monitored_value_stalls():
    x, y = _data(64)
    model = mf.MLP([6, 5, 2], backend="numpy", seed=0)
    opt = RecordingSGD(model.parameters(), lr=0.1)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=6, batch_size=32, progress=False,
           val=(x, y), lr_schedule=mf.schedules.make_schedule(         # no epoch improves
               "plateau", patience=1, factor=0.5, threshold=0.9))       # by 90%
    per_epoch = opt.rates[::2]
    assert per_epoch == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("monitor, mode, threshold", [("loss", "min", 0.1),
                                                     ("train_accuracy", "max", 0.0),
                                                     ("val_accuracy", "max", 0.0)])
def test_plateau_reads_its_own_monitor_as_torchs_scheduler_fed_it(monitor, mode, threshold):
    """A plateau schedule on another History key than val_loss (val is given too): the
    per-epoch rates are those of torch's ReduceLROnPlateau stepped with history[monitor]
    (they differ from the rates val_loss would give)."""
    torch = pytest.importorskip("torch")
    x, y = _data(64)
    model = mf.MLP([6, 5, 2], backend="numpy", seed=0)
    opt = RecordingSGD(model.parameters(), lr=0.5)
    kwargs = dict(mode=mode, patience=0, factor=0.5, threshold=threshold)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=8, batch_size=32, seed=0,
                     progress=False, val=_data(40, seed=3), lr_schedule=mf.schedules.
                     make_schedule("plateau", monitor=monitor, **kwargs))

    def torch_rates(values):
        param = torch.nn.Parameter(torch.zeros(1))
        torch_opt = torch.optim.SGD([param], lr=0.5)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
        rates = []
        for value in values:
            rates.append(torch_opt.param_groups[0]["lr"])
            scheduler.step(value)
        return rates

    expected = torch_rates(history[monitor])
    assert opt.rates[::2] == opt.rates[1::2] == expected
    assert len(set(expected)) > 2 and expected != torch_rates(history["val_loss"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_restores_the_best_epochs_weights(backend):
    """A planted overfit: a wide net on 24 noisy samples, validated on others, at a high
    lr. The model ends with the weights of the epoch with the lowest val_loss, which are
    those of the same run stopped by epochs= at that epoch."""
    x, y = _data(224, seed=1)
    train, val = (x[:24], y[:24]), (x[24:], y[24:])

    def run(**kwargs):
        model = mf.MLP([6, 64, 64, 2], backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=3e-2)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), *train, batch_size=8, seed=0,
                         progress=False, val=val, **kwargs)
        return model, history

    model, history = run(epochs=60, early_stopping=5)
    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss)) + 1
    assert history.best_epoch == best and best < len(val_loss)
    assert history.stopped_epoch == len(val_loss) == best + 5
    reference, _ = run(epochs=best)
    assert np.array_equal(mf.to_numpy(model.flat_data), mf.to_numpy(reference.flat_data))
    kept, _ = run(epochs=60, early_stopping=5, restore_best=False)
    assert not np.array_equal(mf.to_numpy(kept.flat_data), mf.to_numpy(model.flat_data))
    model, history = run(epochs=60, early_stopping=3, monitor="val_accuracy")
    assert history["val_accuracy"][history.best_epoch - 1] == max(history["val_accuracy"])


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy", "loss", "train_accuracy"])
def test_early_stopping_counts_a_tie_as_no_improvement(monitor):
    """At lr 0 (and without shuffling) every epoch repeats epoch 1's numbers exactly; a value
    equal to the best is no improvement (a strict comparison, as Keras' EarlyStopping and
    torch's ReduceLROnPlateau make), so patience 2 stops after epoch 3 and keeps epoch 1."""
    x, y = _data(32)
    model = mf.MLP([6, 5, 2], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.0)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=8, batch_size=8,
                     shuffle=False, progress=False, val=(x, y), early_stopping=2,
                     monitor=monitor)
    assert len(set(history[monitor])) == 1
    assert (len(history), history.best_epoch, history.stopped_epoch) == (3, 1, 3)


def test_resuming_an_early_stopped_run_trains_nothing_and_keeps_its_record(tmp_path):
    """The checkpoint of a run that early stopping ended (after epoch 3, best epoch 1, as
    above): resuming it trains no step and returns that run's history, best_epoch and
    stopped_epoch, with the best epoch's weights."""
    x, y = _data(32)
    path = tmp_path / "run.ckpt"

    def run(seed, **extra):
        model = mf.MLP([6, 5, 2], backend="numpy", seed=seed)
        opt = mf.optim.SGD(model.parameters(), lr=0.0)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=8, batch_size=8,
                         shuffle=False, progress=False, val=(x, y), early_stopping=2,
                         checkpoint=path, **extra)
        return model, opt, history

    model_a, opt_a, hist_a = run(0)
    model_b, opt_b, hist_b = run(5, resume=path)
    assert (len(hist_b), hist_b.best_epoch, hist_b.stopped_epoch) == (3, 1, 3)
    assert hist_b["val_loss"] == hist_a["val_loss"]
    assert opt_b.step_count == opt_a.step_count == 12
    assert np.array_equal(model_b.flat_data, model_a.flat_data)


def test_early_stopping_arguments_are_checked():
    x, y = _data(32)
    model = mf.MLP([6, 5, 2], seed=0)
    opt = mf.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="early stopping on val_loss needs val="):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=8,
               early_stopping=2)
    with pytest.raises(ValueError, match="monitor must be one of"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=8, val=(x, y),
               early_stopping=2, monitor="val_f1")
    with pytest.raises(ValueError, match="early_stopping must be a positive number"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=8, val=(x, y),
               early_stopping=0)
    assert opt.step_count == 0


def Samples(x, y, crash_at=None):
    return BatchSamples(x, y, 16, crash_at, num_classes=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "plateau", "step"])
def test_resume_with_a_schedule_and_early_stopping_is_bit_identical(backend, schedule,
                                                                    tmp_path):
    x, y = _data(120, seed=2)
    train, val = (x[:80], y[:80]), (x[80:], y[80:])
    kwargs = {"plateau": {"patience": 1}, "step": {"step_size": 2}}.get(schedule, {})

    def run(data, **extra):
        model = mf.MLP([6, 9, 2], backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=2e-2)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), data, epochs=8, batch_size=16,
                         seed=3, progress=False, val=val, early_stopping=4,
                         lr_schedule=mf.schedules.make_schedule(schedule, **kwargs), **extra)
        return model, opt, history

    model_a, opt_a, hist_a = run(Samples(*train))
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):                 # 5 batches an epoch: a crash in epoch 6
        run(Samples(*train, crash_at=28), checkpoint=path)
    model_c, opt_c, hist_c = run(Samples(*train), checkpoint=path, resume=path)
    assert np.array_equal(mf.to_numpy(model_a.flat_data), mf.to_numpy(model_c.flat_data))
    assert opt_a.step_count == opt_c.step_count
    assert hist_a["val_loss"] == hist_c["val_loss"] and hist_a["loss"] == hist_c["loss"]
    assert (hist_a.best_epoch, hist_a.stopped_epoch) == (hist_c.best_epoch, hist_c.stopped_epoch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_between_the_best_epoch_and_the_stop_restores_both_states(backend, tmp_path):
    """A crash after the best epoch (3) and after the plateau schedule lowered the rate,
    before early stopping ends the run (epoch 7): the resumed run takes the best epoch's
    weights and the schedule's state from the checkpoint, and ends as the uninterrupted
    run, bit for bit (restored best weights, optimizer state, history). (The test above
    crashes before the best epoch and before any reduction: both states could be lost.)"""
    x, y = _data(224, seed=1)
    train, val = (x[:24], y[:24]), (x[24:], y[24:])
    path = tmp_path / "run.ckpt"

    def run(crash_at=None, **extra):
        model = mf.MLP([6, 64, 64, 2], backend=backend, seed=0)
        opt = mf.optim.Adam(model.parameters(), lr=3e-2)
        schedule = mf.schedules.make_schedule("plateau", patience=0, factor=0.5)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(),
                         BatchSamples(*train, 8, crash_at, num_classes=2), epochs=40,
                         batch_size=8, seed=0, progress=False, val=val, early_stopping=4,
                         lr_schedule=schedule, **extra)
        return model, opt, history, schedule

    model_a, opt_a, hist_a, schedule_a = run()
    assert (hist_a.best_epoch, hist_a.stopped_epoch, schedule_a.scale) == (3, 7, 0.0625)
    with pytest.raises(Crash):                  # 3 batches an epoch: batch 14 is in epoch 5
        run(crash_at=14, checkpoint=path)
    model_c, opt_c, hist_c, _ = run(checkpoint=path, resume=path)
    assert np.array_equal(mf.to_numpy(model_a.flat_data), mf.to_numpy(model_c.flat_data))
    state_a, state_c = opt_a.state_dict(), opt_c.state_dict()
    assert state_a["step"] == state_c["step"]
    for name in state_a["state"]:
        assert np.array_equal(state_a["state"][name], state_c["state"][name]), name
    assert hist_a["val_loss"] == hist_c["val_loss"] and hist_a["loss"] == hist_c["loss"]
    assert (hist_c.best_epoch, hist_c.stopped_epoch) == (3, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor, message", [
    (lambda t, total: -1.0, "returned -1.0 at step 0"),
    (lambda t, total: float("nan") if t >= 2 else 1.0, "returned nan at step 2"),
    (lambda t, total: float("inf"), "returned inf at step 0"),
    (lambda t, total: "1", "returned '1' at step 0"),
])
def test_a_bad_schedule_factor_stops_fit_before_its_step(backend, factor, message):
    """A factor that is negative (gradient ascent), NaN, inf or not a number is refused
    before the step that would use it: the steps before it stand, and are finite."""
    x, y = _data(64)
    model = mf.MLP([6, 5, 2], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"lr_schedule .*{message}: the factor must be"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16,
               progress=False, lr_schedule=factor)
    assert np.isfinite(mf.to_numpy(model.flat_data)).all()
    assert opt.step_count <= (2 if "step 2" in message else 0)


class RisingSchedule(mf.schedules.Schedule):
    """A schedule object of one's own whose factor turns ``bad`` (NaN) at step 2."""
    name = "rising"

    def __init__(self, bad=float("nan")):
        super().__init__()
        self.bad = bad

    def factor(self, step):
        return self.bad if step >= 2 else 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, rate", [(float("nan"), "nan"), (-0.5, "-0.05")])
def test_a_schedule_object_giving_a_bad_rate_stops_fit_before_its_step(backend, bad, rate):
    """Also on the cpu backend, whose compiled step takes the rates as they are (no
    optimizer.step(lr) to refuse a negative one)."""
    x, y = _data(64)
    model = mf.MLP([6, 5, 2], backend=backend, seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"lr_schedule 'rising' gives the learning rate {rate} "
                                         f"at step 2: rates must be finite and >= 0"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=16,
               progress=False, lr_schedule=RisingSchedule(bad))
    assert np.isfinite(mf.to_numpy(model.flat_data)).all() and opt.step_count <= 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_schedule="step"), "lr_schedule 'step' needs step_size"),
    (dict(lr_schedule="plateau"), "lr_schedule 'plateau' on val_loss needs val="),
    (dict(lr_schedule=mf.schedules.make_schedule("plateau", monitor="foo"), val="xy"),
     "lr_schedule 'plateau': monitor must be one of"),
    (dict(lr_schedule=mf.schedules.make_schedule("plateau", monitor="train_accuracy",
                                                 mode="max"), loss="mse"),
     "lr_schedule 'plateau' on train_accuracy needs class labels, but y are floats"),
    (dict(early_stopping=2, monitor="val_accuracy", val="xy", loss="mse"),
     "early stopping on val_accuracy needs class labels, but val's targets are floats"),
])
def test_schedule_and_monitor_errors_come_before_training(kwargs, message):
    x, y = _data(32)
    targets = np.eye(2, dtype=np.float32)[y]
    mse = kwargs.pop("loss", None) == "mse"
    if kwargs.get("val") == "xy":
        kwargs["val"] = (x, targets if mse else y)
    model = mf.MLP([6, 5, 2], seed=0)
    before = model.flat_data.copy()
    opt = mf.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=message):
        mf.fit(model, opt, mf.MSELoss() if mse else mf.CrossEntropyLoss(), x,
               targets if mse else y, epochs=2, batch_size=8, progress=False, **kwargs)
    assert opt.step_count == 0 and np.array_equal(model.flat_data, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("early_stopping", [None, 1])
def test_ctrl_c_in_the_last_chunk_of_a_run_finishes_it(backend, early_stopping):
    """SIGINT while the run's last batch is gathered: every step is done, so fit returns
    the whole history (final validation, restore_best) instead of KeyboardInterrupt.
    With early stopping at patience 1 on a constant loss, epoch 2 ends the run."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    x, y = _data(64)
    last = 8 if early_stopping else 16          # 4 batches an epoch, 4 epochs

    def run(at):
        model = mf.MLP([6, 5, 2], backend=backend, seed=0)
        opt = mf.optim.SGD(model.parameters(), lr=0.1)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), BatchSamples(
            x, y, 16, at, lambda: signal.raise_signal(signal.SIGINT), 2), epochs=4,
            batch_size=16, seed=0, progress=False, val=(x, y),
            early_stopping=early_stopping, monitor="loss",
            lr_schedule=(lambda t, total: 0.0) if early_stopping else None)
        return model, opt, history
    try:
        reference = run(None)
        try:
            model, opt, history = run(last)
        except KeyboardInterrupt:
            pytest.fail("fit raised KeyboardInterrupt after the run's last step")
        with pytest.raises(KeyboardInterrupt):
            run(last - 4)                        # the run had an epoch left
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(history) == len(reference[2]) == last // 4
    assert history["val_loss"] == reference[2]["val_loss"] and opt.step_count == last
    assert history.stopped_epoch == reference[2].stopped_epoch
    assert np.array_equal(mf.to_numpy(model.flat_data), mf.to_numpy(reference[0].flat_data))
