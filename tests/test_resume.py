"""Exact resume: a run stopped (after an epoch, or mid-epoch by a crash) and resumed from its
checkpoint ends bit-identical to the uninterrupted run: parameters, optimizer state, history."""
import json

import numpy as np
import pytest

import mlpfast as mf
from conftest import BatchSamples, Crash
from mlpfast.checkpoint import read_checkpoint, write_checkpoint

BACKENDS = mf.backends()
BATCH = 8
OPTIMIZERS = {
    "sgd_nesterov_wd": lambda p: mf.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=1e-3),
    "sgd_plain": lambda p: mf.optim.SGD(p, lr=0.1),
    "adam": lambda p: mf.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda p: mf.optim.AdamW(p, lr=1e-2),
}


def Samples(x, y, crash_at=None):
    return BatchSamples(x, y, BATCH, crash_at, num_classes=4)


def _data(n=53, features=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


def _model(backend, optimizer, init_seed=0, dtype=np.float32):
    model = mf.MLP([7, 9, 4], activation="tanh", backend=backend, seed=init_seed, dtype=dtype)
    return model, OPTIMIZERS[optimizer](model.parameters())


def _assert_same_run(model_a, opt_a, hist_a, model_b, opt_b, hist_b):
    assert np.array_equal(mf.to_numpy(model_a.flat_data), mf.to_numpy(model_b.flat_data))
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["step"] == state_b["step"]
    for name in state_a["state"]:
        assert np.array_equal(state_a["state"][name], state_b["state"][name]), name
    for key in ("epoch", "loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert [r.get(key) for r in hist_a.epochs] == [r.get(key) for r in hist_b.epochs], key


def _fit(model, opt, data, epochs, **kwargs):
    return mf.fit(model, opt, mf.CrossEntropyLoss(), data, epochs=epochs, batch_size=BATCH,
                  seed=11, progress=False, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_resume_after_an_epoch_is_bit_identical(backend, optimizer, tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model_a, opt_a = _model(backend, optimizer)
    hist_a = _fit(model_a, opt_a, Samples(x, y), 5, val=(x[:20], y[:20]))

    model_b, opt_b = _model(backend, optimizer)
    _fit(model_b, opt_b, Samples(x, y), 2, val=(x[:20], y[:20]), checkpoint=path)
    model_c, opt_c = _model(backend, optimizer, init_seed=99)     # other initial weights
    hist_c = _fit(model_c, opt_c, Samples(x, y), 5, val=(x[:20], y[:20]), checkpoint=path,
                  resume=path)
    _assert_same_run(model_a, opt_a, hist_a, model_c, opt_c, hist_c)
    assert len(hist_c) == 5


@pytest.mark.parametrize("backend", BACKENDS)
# 7 batches per epoch; (checkpoint every N steps, crash in gather call k): saved mid-epoch 1,
# crash in epoch 1; saved mid-epoch 1, crash in epoch 2; crash right after a save; saved at
# the last batch of an epoch (batches_done == 7, before the epoch's record is made)
@pytest.mark.parametrize("every,crash_at", [(3, 5), (3, 8), (3, 13), (7, 10)])
def test_resume_after_a_mid_epoch_crash_is_bit_identical(backend, every, crash_at, tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model_a, opt_a = _model(backend, "adam")
    hist_a = _fit(model_a, opt_a, Samples(x, y), 3)

    model_b, opt_b = _model(backend, "adam")
    with pytest.raises(Crash):
        _fit(model_b, opt_b, Samples(x, y, crash_at=crash_at), 3, checkpoint=path,
             checkpoint_every=every)
    model_c, opt_c = _model(backend, "adam", init_seed=5)
    hist_c = _fit(model_c, opt_c, Samples(x, y), 3, checkpoint=path, checkpoint_every=every,
                  resume=path)
    _assert_same_run(model_a, opt_a, hist_a, model_c, opt_c, hist_c)


def test_resume_without_shuffle_with_mse_and_float64(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 7))
    target = rng.normal(size=(30, 4))
    path = tmp_path / "run.ckpt"

    def run(epochs, init_seed=0, **kwargs):
        model, opt = _model("numpy", "sgd_nesterov_wd", init_seed, dtype=np.float64)
        hist = mf.fit(model, opt, mf.MSELoss(), x, target, epochs=epochs, batch_size=7,
                      shuffle=False, progress=False, **kwargs)
        return model, opt, hist

    a = run(4)
    run(1, checkpoint=path, checkpoint_every=2)
    c = run(4, init_seed=3, resume=path)
    _assert_same_run(*a, *c)


def test_resume_keeps_a_user_generator_of_another_kind(tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"

    def run(epochs, **kwargs):
        model, opt = _model("numpy", "adam")
        hist = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=epochs, batch_size=8,
                      progress=False, **kwargs)
        return model, opt, hist

    a = run(3, seed=np.random.Generator(np.random.MT19937(4)))
    run(1, seed=np.random.Generator(np.random.MT19937(4)), checkpoint=path)
    c = run(3, resume=path)
    _assert_same_run(*a, *c)


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model_a, opt_a = _model("numpy", "adam")
    hist_a = _fit(model_a, opt_a, Samples(x, y), 2, checkpoint=path)
    model_b, opt_b = _model("numpy", "adam", init_seed=8)
    hist_b = _fit(model_b, opt_b, Samples(x, y), 2, resume=path)
    _assert_same_run(model_a, opt_a, hist_a, model_b, opt_b, hist_b)
    assert not model_b.training


@pytest.mark.parametrize("change,message", [
    ("batch_size", "written with batch_size=8, this call has batch_size=5"),
    ("samples", "written with n=53, this call has n=52"),
    ("shuffle", "written with shuffle=True, this call has shuffle=False"),
    ("architecture", "not this float32 model with layers"),
    ("optimizer", "holds Adam state, the optimizer is AdamW"),
    ("momentum", "optimizer state \\[\\] does not match SGD's \\['momentum_buffer'\\]"),
    ("loss", "trained with CrossEntropyLoss, not MSELoss"),
    ("epochs", "finished 2 epochs, more than epochs=1"),
])
def test_resume_refuses_a_different_run_and_changes_nothing(change, message, tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model, opt = _model("numpy", "sgd_plain" if change == "momentum" else "adam")
    _fit(model, opt, Samples(x, y), 2, checkpoint=path)
    args = dict(batch_size=8, shuffle=True, epochs=3)
    loss = mf.CrossEntropyLoss()
    target = y
    if change == "batch_size":
        args["batch_size"] = 5
    elif change == "samples":
        x, y, target = x[:-1], y[:-1], y[:-1]
    elif change == "shuffle":
        args["shuffle"] = False
    elif change == "epochs":
        args["epochs"] = 1
    elif change == "loss":
        loss = mf.MSELoss()
    if change == "architecture":
        model = mf.MLP([7, 10, 4], activation="tanh", backend="numpy", seed=0)
        opt = mf.optim.Adam(model.parameters())
    elif change == "optimizer":
        model, opt = _model("numpy", "adamw")
    elif change == "momentum":
        model, opt = _model("numpy", "sgd_nesterov_wd")
    else:
        model, opt = _model("numpy", "adam")
    params, state = model.flat_data.copy(), opt.state_dict()
    with pytest.raises(ValueError, match=message):
        mf.fit(model, opt, loss, x, target, progress=False, resume=path, **args)
    assert np.array_equal(model.flat_data, params)
    assert opt.step_count == state["step"] and opt.hyper == state["hyper"]
    for name, a in opt.state_dict()["state"].items():
        assert np.array_equal(a, state["state"][name])


@pytest.mark.parametrize("part,key,value,message", [
    ("progress", "correct", 2 ** 1100, "progress.correct must be an integer >= 0"),
    ("progress", "global_step", 2 ** 70, "progress.global_step must be an integer >= 0"),
    ("progress", "loss_sum", 2 ** 80, "progress.loss_sum must be a number"),
    ("progress", "batches_done", 99, "progress.batches_done 99 > 7 batches"),
    ("early_stopping", "best", "abc", "holds early stopping .*best must be a number or null"),
    ("early_stopping", "bad_epochs", "x", "holds early stopping"),
    ("early_stopping", "bad_epochs", 9, "holds early stopping"),
    ("history", 0, {}, "history record 1 must hold its epoch, loss and numbers or null"),
    ("history", 1, {"epoch": 2, "loss": "low"}, "history record 2 must hold"),
    ("history", None, None, "history holds 1 records for 2 epochs done"),
], ids=["correct", "global_step", "loss_sum", "batches_done", "best", "bad_epochs_text",
        "bad_epochs_9", "history_empty_record", "history_text_loss", "history_short"])
def test_resume_refuses_rewritten_metadata_and_changes_nothing(part, key, value, message,
                                                               tmp_path):
    """A checkpoint whose JSON entry was rewritten (its digests recomputed) with values that
    would fail, or train wrongly, after loading: refused before anything changes."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model, opt = _model("numpy", "adam")
    _fit(model, opt, Samples(x, y), 2, checkpoint=path, val=(x, y), early_stopping=3)
    ckpt = read_checkpoint(path)
    meta = json.loads(json.dumps(ckpt.meta))
    if part == "history" and key is None:
        meta["history"].pop()
    else:
        meta[part][key] = value
    write_checkpoint(path, meta, ckpt.arrays)
    model, opt = _model("numpy", "adam", init_seed=5)
    params = model.flat_data.copy()
    with pytest.raises(ValueError, match=message):
        _fit(model, opt, Samples(x, y), 3, resume=path, val=(x, y), early_stopping=3)
    assert np.array_equal(model.flat_data, params) and opt.step_count == 0


@pytest.mark.parametrize("optimizer,hyper,message", [
    ("adam", {"betas": [0.9, 1.0]}, r"betas\[1\] must be >= 0.0 and < 1.0"),
    ("sgd_nesterov_wd", {"momentum": 0.0}, "nesterov=True needs momentum > 0"),
    ("sgd_nesterov_wd", {"momentum": 0.0, "nesterov": False},
     r"holds \['momentum_buffer'\], but SGD with .* keeps \[\]"),
    ("adam", {"lr": "0.001"}, "lr must be a number, got '0.001'"),
    ("adam", {"betas": [0.9, None]}, r"betas\[1\] must be a number, got None"),
    ("sgd_nesterov_wd", {"nesterov": "false"}, "nesterov must be True or False"),
    ("sgd_nesterov_wd", {"max_norm": 2.0}, r"hyperparameters \[.*'max_norm'.*\] do not match"),
], ids=["beta2_1", "nesterov_without_momentum", "momentum_off_with_its_buffer", "lr_text",
        "beta2_null", "nesterov_text", "max_norm_added"])
def test_resume_refuses_hyperparameters_the_optimizer_refuses_and_changes_nothing(
        optimizer, hyper, message, tmp_path):
    """Rewritten optimizer hyperparameters that the optimizer's own load_state_dict
    refuses (torch's ranges; text or null for a number or a flag), or that configure
    another optimizer than the caller's (max_norm added): refused before the model is
    loaded (the model took the checkpoint's weights, then the optimizer raised)."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model, opt = _model("numpy", optimizer)
    _fit(model, opt, Samples(x, y), 2, checkpoint=path)
    ckpt = read_checkpoint(path)
    meta = json.loads(json.dumps(ckpt.meta))
    meta["optimizer"]["hyper"].update(hyper)
    write_checkpoint(path, meta, ckpt.arrays)
    model, opt = _model("numpy", optimizer, init_seed=5)
    params, state = model.flat_data.copy(), opt.state_dict()
    with pytest.raises(ValueError, match=message):
        _fit(model, opt, Samples(x, y), 3, resume=path)
    assert np.array_equal(model.flat_data, params)
    assert opt.step_count == 0 and opt.hyper == state["hyper"]


@pytest.mark.parametrize("entry,message", [
    ("order", "order is not a permutation of the samples"),
    ("model/0.weight", "entry 0.weight is not a finite float32 array"),
    ("best/0.weight", "entry 0.weight is not a finite float32 array"),
])
def test_resume_refuses_rewritten_arrays_and_changes_nothing(entry, message, tmp_path):
    """A mid-epoch checkpoint whose arrays were rewritten with their digests: an order
    that visits a sample twice (and skips another), NaN in the weights or in early
    stopping's best weights (restored only at the end of the run): refused before any
    training."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model, opt = _model("numpy", "adam")
    with pytest.raises(Crash):
        _fit(model, opt, Samples(x, y, crash_at=12), 3, checkpoint=path, checkpoint_every=3,
             val=(x, y), early_stopping=3)
    ckpt = read_checkpoint(path)
    arrays = {name: a.copy() for name, a in ckpt.arrays.items()}
    assert ckpt.progress["batches_done"] > 0 and entry in arrays
    if entry == "order":
        arrays["order"][0] = arrays["order"][1]
    else:
        arrays[entry][0, 0] = np.nan
    write_checkpoint(path, {k: v for k, v in ckpt.meta.items() if k != "sha256"}, arrays)
    model, opt = _model("numpy", "adam", init_seed=5)
    params = model.flat_data.copy()
    with pytest.raises(ValueError, match=message):
        _fit(model, opt, Samples(x, y), 3, resume=path, val=(x, y), early_stopping=3)
    assert np.array_equal(model.flat_data, params) and opt.step_count == 0


def test_resume_refuses_other_training_data_of_the_same_shape(tmp_path):
    """The checkpoint holds CRC-32s of x and y (a dataset object's fingerprint(), if it has
    one): other rows, say another --holdout draw, are refused before anything changes."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    model, opt = _model("numpy", "adam")
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=BATCH, seed=11,
           progress=False, checkpoint=path)
    other = x.copy()
    other[7, 3] += 1.0
    model, opt = _model("numpy", "adam")
    params = model.flat_data.copy()
    with pytest.raises(ValueError, match=r"was written for other training data \(contents"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), other, y, epochs=2, batch_size=BATCH,
               seed=11, progress=False, resume=path)
    assert np.array_equal(model.flat_data, params) and opt.step_count == 0
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=BATCH, seed=11,
           progress=False, resume=path)                          # the same data resumes
    assert opt.step_count == 2 * 7


class Fingerprinted(BatchSamples):
    def __init__(self, x, y, value):
        super().__init__(x, y, BATCH, num_classes=4)
        self.value = value

    def fingerprint(self):
        return self.value


def test_a_dataset_fingerprint_must_be_json_and_resumes_as_written(tmp_path):
    # A NumPy scalar trained a whole epoch, then failed writing the checkpoint ("Object of
    # type int64 is not JSON serializable"); a tuple was read back as a list and a NaN
    # never equals itself, so their runs could not resume ("other training data")
    x, y = _data()
    path = tmp_path / "run.ckpt"
    for value in (np.int64(5), {"crc": np.uint32(7)}, float("nan")):
        model, opt = _model("numpy", "adam")
        params = model.flat_data.copy()
        with pytest.raises(TypeError, match=r"Fingerprinted.fingerprint\(\) must return a "
                                            r"JSON value .*, got "):
            _fit(model, opt, Fingerprinted(x, y, value), 1, checkpoint=path)
        assert np.array_equal(model.flat_data, params) and opt.step_count == 0
        assert not path.exists()
    model, opt = _model("numpy", "adam")
    _fit(model, opt, Fingerprinted(x, y, (1, "a")), 1, checkpoint=path)
    _fit(model, opt, Fingerprinted(x, y, (1, "a")), 2, resume=path)
    assert opt.step_count == 2 * 7


def test_resume_from_a_file_that_is_not_a_checkpoint_changes_nothing(tmp_path):
    x, y = _data()
    model, opt = _model("numpy", "adam")
    model.save(tmp_path / "model.npz")
    params = model.flat_data.copy()
    with pytest.raises(ValueError, match="not an mlpfast checkpoint"):
        _fit(model, opt, Samples(x, y), 2, resume=tmp_path / "model.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _fit(model, opt, Samples(x, y), 2, resume=tmp_path / "nothing.ckpt")
    assert np.array_equal(model.flat_data, params) and opt.step_count == 0


def test_cli_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path, capsys):
    from mlpfast import cli

    common = ["train", "xor", "--per-corner", "8", "--no-progress", "--seed", "3"]
    assert cli.main(common + ["--epochs", "40", "--save", str(tmp_path / "full.npz")]) == 0
    ckpt = str(tmp_path / "run.ckpt")
    assert cli.main(common + ["--epochs", "15", "--checkpoint", ckpt, "--resume",
                              "--checkpoint-every", "4"]) == 0     # no file yet: a fresh run
    assert cli.main(common + ["--epochs", "40", "--checkpoint", ckpt, "--resume",
                              "--save", str(tmp_path / "resumed.npz")]) == 0
    assert "resuming from" in capsys.readouterr().out
    full, resumed = mf.load(tmp_path / "full.npz"), mf.load(tmp_path / "resumed.npz")
    assert np.array_equal(full.flat_data, resumed.flat_data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:              # refused before any data
        cli.main(common + ["--epochs", "2", "--resume"])
    assert exit_info.value.code == 2
    assert "--resume needs --checkpoint PATH" in capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_batchnorm_and_dropout_is_bit_identical(backend, tmp_path):
    """Running statistics and num_batches_tracked are checkpointed; dropout masks, a
    function of the global step, continue where the crash left them."""
    x, y = _data()
    path = tmp_path / "run.ckpt"

    def model_and_optimizer():
        model = mf.MLP([7, 9, 4], activation="tanh", batchnorm=True, dropout=0.3,
                       backend=backend, seed=3)
        return model, mf.optim.Adam(model.parameters(), lr=1e-2)

    model_a, opt_a = model_and_optimizer()
    hist_a = _fit(model_a, opt_a, Samples(x, y), 3)
    model_b, opt_b = model_and_optimizer()
    with pytest.raises(Crash):
        _fit(model_b, opt_b, Samples(x, y, crash_at=12), 3, checkpoint=path, checkpoint_every=4)
    model_c, opt_c = model_and_optimizer()
    model_c.flat_data[...] = 0.5                            # everything comes from the file
    hist_c = _fit(model_c, opt_c, Samples(x, y), 3, checkpoint=path, checkpoint_every=4,
                  resume=path)
    _assert_same_run(model_a, opt_a, hist_a, model_c, opt_c, hist_c)
    for name, value in model_a.state_dict().items():
        assert np.array_equal(value, model_c.state_dict()[name]), name
