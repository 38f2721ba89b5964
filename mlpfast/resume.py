"""Checkpoints of a run of ``fit``, next to the file format in ``mlpfast.checkpoint``: what
a checkpoint holds (``CheckpointWriter``) and how a run continues from one (``resume``)."""
import copy
import os

import numpy as np

from .checkpoint import training_arrays, unwritable_file, write_checkpoint
from .run import check_state_finite


def check_checkpoint_args(checkpoint, checkpoint_every):
    """Steps between checkpoints (0 = after every epoch); checks the path's directory."""
    if isinstance(checkpoint_every, str) and checkpoint_every == "epoch":
        every_steps = 0
    elif isinstance(checkpoint_every, (int, np.integer)) and not isinstance(checkpoint_every,
                                                                            bool):
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got "
                             f"{checkpoint_every!r}")
        every_steps = int(checkpoint_every)
    else:
        raise ValueError(f"checkpoint_every must be 'epoch' or a positive number of steps, "
                         f"got {checkpoint_every!r}")
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
        problem = unwritable_file("checkpoint", checkpoint)
        if problem:
            raise ValueError(problem)
    return every_steps


class CheckpointWriter:
    """Writes the run's full state to one path, atomically, never with NaN in it."""

    def __init__(self, path, every_steps, model, optimizer, loss_fn, data_spec):
        self.path, self.every_steps = path, every_steps
        self.model, self.optimizer = model, optimizer
        self.loss_name, self.data_spec = type(loss_fn).__name__, data_spec

    def write(self, run, epoch):
        """The state of ``run`` (a RunState) in epoch ``epoch``, with model and optimizer."""
        check_state_finite(self.model, self.optimizer, f"in epoch {epoch}", self.path)
        opt = self.optimizer.state_dict()
        meta = {"architecture": self.model.architecture(),
                "optimizer": {"type": opt["type"], "step": opt["step"], "hyper": opt["hyper"]},
                "loss": self.loss_name, "data": self.data_spec, "progress": run.as_json(),
                "rng": _jsonable(run.rng.bit_generator.state),
                "history": _jsonable(run.history.epochs),
                "schedule": _jsonable(run.rates.schedule.state_dict())}
        order = run.order if run.batches_done else None
        arrays = training_arrays(self.model, self.optimizer, order)
        if run.stopper is not None:
            meta["early_stopping"] = _jsonable(run.stopper.as_json())
            arrays.update({f"best/{k}": a for k, a in (run.stopper.best_state or {}).items()})
        write_checkpoint(self.path, meta, arrays)


def _jsonable(value):
    """Dicts/lists with NumPy arrays and scalars turned into lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def resume(ckpt, model, optimizer, loss_fn, data_spec, epochs, run):
    """Check ``ckpt`` against this call, then load model, optimizer and the run's state
    (progress, RNG, history, schedule, early stopping) into ``run``.

    Every check runs before anything is loaded, so a mismatch changes nothing.
    """
    meta, path = ckpt.meta, ckpt.path
    arch, own_arch = meta["architecture"], model.architecture()
    if arch.get("layers") != own_arch["layers"] or arch.get("dtype") != own_arch["dtype"]:
        raise ValueError(f"resume: {path} holds a {arch.get('dtype')} model with layers "
                         f"{arch.get('layers')}, not this {own_arch['dtype']} model with "
                         f"layers {own_arch['layers']}")
    if meta["loss"] != type(loss_fn).__name__:
        raise ValueError(f"resume: {path} was trained with {meta['loss']}, "
                         f"not {type(loss_fn).__name__}")
    for key, value in data_spec.items():
        written = meta["data"].get(key, "fp32" if key == "precision" else None)
        if key == "contents" and (written is None or value is None):
            continue          # a dataset object without fingerprint(), or an older file
        if written != value:
            differs = (f"for other training data (contents {written} here, {value} in this "
                       f"call)" if key == "contents" else
                       f"with {key}={written!r}, this call has {key}={value!r}")
            raise ValueError(f"resume: {path} was written {differs}; exact resume needs the "
                             f"same data, batching and precision")
    progress = meta["progress"]
    if progress["epochs_done"] > epochs:
        raise ValueError(f"resume: {path} has finished {progress['epochs_done']} epochs, more "
                         f"than epochs={epochs} (epochs counts the whole run)")
    model_state, own_state = ckpt.model_state(), model.state_dict()
    _check_model_state(path, model_state, own_state)
    best_state = {k[len("best/"):]: a for k, a in ckpt.arrays.items() if k.startswith("best/")}
    if best_state:
        _check_model_state(path, best_state, own_state)
    opt_state = ckpt.optimizer_state()
    _check_optimizer_state(path, opt_state, optimizer)
    rng = _rng_from_state(path, meta["rng"])
    schedule = copy.deepcopy(run.rates.schedule)
    if "schedule" in meta:                         # (checkpoints of stateless schedules
        _load_checked(path, "schedule", schedule.load_state_dict, meta["schedule"])  # may lack it)
    stopper = copy.deepcopy(run.stopper)
    if stopper is not None:
        _load_checked(path, "early stopping", lambda state: stopper.load_json(
            state, best_state, path), meta.get("early_stopping"))
    # -- everything checked: load
    model.load_state_dict(model_state)
    optimizer.load_state_dict(opt_state)
    run.load_json(progress, ckpt.arrays.get("order"))
    run.rng, run.rates.schedule, run.stopper = rng, schedule, stopper
    run.history.epochs = [dict(r) for r in meta["history"]]
    run.history.best_epoch = None if stopper is None else stopper.best_epoch
    model.set_training_step(run.global_step)          # dropout masks continue where they were


def _load_checked(path, what, load, state):
    """``load(state)``, a checkpoint's part; its errors name the checkpoint."""
    try:
        load(state)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"resume: {path} holds no valid {what} state for this call ({e})") \
            from None


def _check_model_state(path, state, own):
    """The checkpoint's parameters and buffers: the model's names, shapes and dtypes, finite."""
    if set(state) != set(own):
        raise ValueError(f"resume: {path} parameters and buffers {sorted(state)} do not match "
                         f"the model's {sorted(own)}")
    for name, a in state.items():
        if a.shape != own[name].shape or a.dtype != own[name].dtype or not np.isfinite(a).all():
            raise ValueError(f"resume: {path} entry {name} is not a finite {own[name].dtype} "
                             f"array of shape {own[name].shape}")


def _check_optimizer_state(path, state, optimizer):
    """What optimizer.load_state_dict accepts (its checks run here, before the model is
    loaded), with the optimizer's own state buffers and hyperparameter names: an exact
    resume continues the same kind of optimizer. (The arrays' dtype is the architecture's,
    which read_checkpoint checks, and the model's, which _check_model_state checks.)"""
    kind = type(optimizer).__name__
    if state["type"] != kind:
        raise ValueError(f"resume: {path} holds {state['type']} state, the optimizer is {kind}")
    try:
        optimizer._checked_state(state)
    except (TypeError, ValueError) as e:
        raise ValueError(f"resume: {path} holds optimizer state that {kind} refuses ({e})") \
            from None
    own = optimizer.state_dict()
    if set(state["state"]) != set(own["state"]):
        raise ValueError(f"resume: {path} optimizer state {sorted(state['state'])} does not "
                         f"match {kind}'s {sorted(own['state'])} (e.g. momentum on in one "
                         f"and off in the other)")
    if set(state["hyper"]) != set(own["hyper"]):
        raise ValueError(f"resume: {path} optimizer hyperparameters {sorted(state['hyper'])} "
                         f"do not match {sorted(own['hyper'])}")


def _rng_from_state(path, state):
    try:
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise ValueError(f"resume: {path} holds an invalid RNG state ({e})") from None
    return np.random.Generator(bit_generator)

