"""Training and evaluation loops: fit, evaluate, predict, predict_proba.

Data: ``x`` and ``y`` arrays, or a dataset object in place of ``x`` (``y`` omitted) with
    __len__()                        number of samples
    num_features                     columns of one sample
    num_classes                      number of classes (labels lie in [0, num_classes))
    gather_batch(index, x_out, y_out)  fill x_out (B, num_features) float32/float64 and
                                     y_out (B,) int64 with the samples ``index`` (B,) int64
Batches are gathered into buffers allocated once per run, then handed to the model's
backend. One step: logits = model.forward(x); loss = loss_fn(logits, y);
model.backward(loss_fn.backward(), input_grad=False) (no dL/dx: only the parameters'
gradients are needed); loss and gradients checked for NaN/inf; optimizer.step().
``make_train_step`` builds that step: on a backend with a compiled MLP step ("cpu") the
whole of it (gather included; a dataset object's gather_batch first) is one call for a
chain of Linear layers with fused activations (kernels/mlp_step.py), else the
layer-by-layer engine (``LayerByLayerStep``).
Checkpoints and exact resume: see ``fit`` and ``mlpfast.checkpoint``.
"""
import math
import os
import sys
import time

import numpy as np

from .backend import get_backend, to_numpy
from .checkpoint import read_checkpoint, training_arrays, write_checkpoint
from .losses import CrossEntropyLoss, MSELoss, check_labels
from .nn import check_samples


class ArrayDataset:
    """(x, y) arrays seen through the dataset protocol; checks everything up front."""

    def __init__(self, x, y, num_features=None, num_classes=None, name="x", gather=None):
        x = check_samples(x, num_features, name)
        if y is None:
            raise ValueError(f"y is missing: pass labels for {name}, or a dataset as {name}")
        y = np.asarray(y)
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"len({name}) = {x.shape[0]} but len(y) = {y.shape[0] if y.ndim else 0}: "
                             f"every sample needs one label")
        if y.dtype.kind in "iu" and y.ndim == 1:
            if num_classes is not None:
                check_labels(y, y.shape[0], num_classes, "y")
            y = y.astype(np.int64, copy=False)
        elif y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise ValueError("y contains NaN or inf")
        else:
            raise TypeError(f"y must be integer labels (N,) or float targets, got {y.dtype} "
                            f"of shape {y.shape}")
        # contiguous once here, so that gathering a batch never copies the whole dataset
        self.x, self.y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        self.num_features = x.shape[1]
        self.num_classes = num_classes
        self._gather = gather if gather is not None else get_backend("numpy").gather

    def __len__(self):
        return self.x.shape[0]

    def gather_batch(self, index, x_out, y_out):
        self._gather(self.x, index, x_out)
        self._gather(self.y, index, y_out)


def as_dataset(model, x, y, name="x"):
    """x/y arrays or a dataset object, checked against the model's input and output sizes."""
    if hasattr(x, "gather_batch"):
        if y is not None:
            raise ValueError(f"{name} is a dataset, so y must be omitted")
        if len(x) == 0:
            raise ValueError(f"dataset {name} is empty")
        if model.in_features is not None and x.num_features != model.in_features:
            raise ValueError(f"dataset {name} has {x.num_features} features but the model "
                             f"expects {model.in_features}")
        if getattr(x, "num_classes", None) and model.out_features is not None \
                and x.num_classes > model.out_features:
            raise ValueError(f"dataset {name} has {x.num_classes} classes but the model has "
                             f"{model.out_features} outputs")
        return x
    backend = model.backend
    gather = backend.gather if backend.device == "cpu" else None
    return ArrayDataset(x, y, model.in_features, model.out_features, name, gather)


class History:
    """Per-epoch records: loss, train_accuracy, val_loss, val_accuracy, seconds, samples_per_s."""

    def __init__(self):
        self.epochs = []

    def append(self, record):
        self.epochs.append(record)

    def __getitem__(self, key):
        return [record[key] for record in self.epochs]

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        return f"History({self.epochs!r})"


class _Progress:
    """A one-line progress bar on stderr (tqdm when installed); silent when disabled."""

    def __init__(self, enabled, total, desc):
        self.enabled, self.total, self.desc = enabled, total, desc
        self.done, self.last = 0, 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
            except ImportError:
                pass

    def update(self, loss):
        if not self.enabled:
            return
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.done % 20 == 0:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self.last > 0.25 or self.done == self.total:
            self.last = now
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (len(self.desc) + 60) + "\r")
            sys.stderr.flush()


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit(model, optimizer, loss_fn, x, y=None, *, epochs, batch_size, shuffle=True, val=None,
        seed=None, progress=True, verbose=False, checkpoint=None, checkpoint_every="epoch",
        resume=None, lr_schedule=None):
    """Train ``model`` on (x, y) or a dataset; returns a ``History``.

    Each epoch visits every sample once in an order drawn from ``seed`` (when shuffle),
    in batches of ``batch_size`` (the last one may be smaller). ``val`` = (x, y) or a
    dataset, evaluated after each epoch. ``verbose`` prints a line per epoch.

    ``checkpoint`` = PATH writes model, optimizer state, progress, RNG state and data
    order to that one file, replaced atomically (see ``mlpfast.checkpoint``), after every
    epoch (``checkpoint_every="epoch"``) or every N optimizer steps
    (``checkpoint_every=N``, plus once at the end). ``resume`` = PATH continues the run
    saved there: ``epochs`` is the total, so the same call finishes the same schedule, and
    the result is bit-identical to an uninterrupted run (same backend, same threads).
    The returned History then includes the epochs run before the checkpoint.

    A NaN or inf in the loss or the gradients raises ``TrainingDiverged`` naming the epoch
    and step; the model and optimizer keep the state of the last good step.

    ``lr_schedule`` scales the optimizer's lr at each step t of the T steps of the run:
    None (constant), "cosine" (lr * (1 + cos(pi t / T)) / 2, from lr down to 0), or a
    function f(t, T) -> factor. It is a function of the step, so a resumed run follows it.
    """
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    if not isinstance(loss_fn, (CrossEntropyLoss, MSELoss)):
        raise TypeError(f"loss_fn must be CrossEntropyLoss() or MSELoss(), "
                        f"got {type(loss_fn).__name__}")
    if not hasattr(optimizer, "step") or not getattr(optimizer, "params", None):
        raise TypeError(f"optimizer must be an mlpfast optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if optimizer.params[0].backend is not model.backend or \
            not all(id(p) in own for p in optimizer.params):
        raise ValueError("optimizer was built for another model's parameters: build it from "
                         "model.parameters()")
    every_steps = _check_checkpoint_args(checkpoint, checkpoint_every)
    lr_factor = _lr_schedule(lr_schedule)
    train_set = as_dataset(model, x, y)
    _check_targets(loss_fn, train_set, model, "y")
    val_set = None
    if val is not None:
        val_set = val if hasattr(val, "gather_batch") else None
        if val_set is None:
            if not isinstance(val, (tuple, list)) or len(val) != 2:
                raise ValueError("val must be (x_val, y_val) or a dataset")
            val_set = as_dataset(model, val[0], val[1], name="val x")
        else:
            val_set = as_dataset(model, val, None, name="val")
        _check_targets(loss_fn, val_set, model, "val y")

    n = len(train_set)
    batch_size = min(batch_size, n)
    steps_per_epoch = -(-n // batch_size)
    data_spec = {"n": n, "num_features": int(train_set.num_features), "batch_size": batch_size,
                 "shuffle": bool(shuffle)}
    run = _RunState()
    history = History()
    if resume is not None:            # read, check everything, then load (all or nothing)
        rng = _resume(read_checkpoint(resume), model, optimizer, loss_fn, data_spec, epochs,
                      run, history)
    else:
        rng = np.random.default_rng(seed)
    writer = None if checkpoint is None else _CheckpointWriter(
        checkpoint, every_steps, model, optimizer, loss_fn, data_spec)

    backend = model.backend
    loss_fn.backend = backend
    classify = isinstance(loss_fn, CrossEntropyLoss) or _has_labels(train_set)
    train_step = make_train_step(model, loss_fn, optimizer, train_set, batch_size)
    val_loss_fn = type(loss_fn)(backend=backend)
    grads = _gradient_buffers(model, optimizer)
    model.train()
    try:
        for epoch in range(run.epochs_done + 1, epochs + 1):
            start = time.perf_counter() - run.seconds
            if run.batches_done == 0:
                run.order = rng.permutation(n) if shuffle else np.arange(n)
                run.loss_sum, run.correct = 0.0, 0
            bar = _Progress(progress, steps_per_epoch, f"epoch {epoch}/{epochs}")
            try:
                for batch in range(run.batches_done, steps_per_epoch):
                    index = run.order[batch * batch_size:(batch + 1) * batch_size]
                    rows = index.shape[0]
                    loss, correct, finite = train_step(index)
                    if not finite:                  # before the update: state stays good
                        raise _diverged(loss, grads, epoch, batch + 1, steps_per_epoch, run,
                                        checkpoint)
                    if lr_factor is not None:
                        optimizer.lr_scale = lr_factor(run.global_step, epochs * steps_per_epoch)
                    optimizer.step()
                    run.global_step += 1
                    run.batches_done = batch + 1
                    run.loss_sum += loss * rows
                    if classify:
                        run.correct += correct
                    bar.update(loss)
                    if every_steps and run.global_step % every_steps == 0:
                        run.seconds = time.perf_counter() - start
                        writer.write(run, rng, history, epoch)
            finally:
                bar.close()
            _check_state_finite(model, optimizer, f"after epoch {epoch}", checkpoint)
            seconds = time.perf_counter() - start
            record = {"epoch": epoch, "loss": run.loss_sum / n,
                      "train_accuracy": run.correct / n if classify else None,
                      "seconds": seconds, "samples_per_s": n / seconds}
            if val_set is not None:
                result = evaluate(model, val_set, loss_fn=val_loss_fn, confusion=False)
                record["val_loss"], record["val_accuracy"] = result["loss"], result["accuracy"]
                model.train()
            history.append(record)
            run.end_epoch(epoch)
            if writer is not None and (not every_steps or epoch == epochs):
                writer.write(run, rng, history, epoch)
            if verbose:
                print(format_record(record, epochs), flush=True)
    finally:
        optimizer.lr_scale = 1.0
    model.eval()
    return history


def cosine_schedule(step, total_steps):
    """(1 + cos(pi * step / total_steps)) / 2: 1 at the first step, towards 0 at the last."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def _lr_schedule(schedule):
    if schedule is None or schedule == "constant":
        return None
    if schedule == "cosine":
        return cosine_schedule
    if callable(schedule):
        return schedule
    raise ValueError(f"lr_schedule must be None, 'constant', 'cosine' or a function "
                     f"f(step, total_steps) -> factor, got {schedule!r}")


def _check_targets(loss_fn, dataset, model, name):
    """Float targets fit MSELoss only, with one column per model output."""
    if not isinstance(dataset, ArrayDataset) or dataset.y.dtype.kind != "f":
        return
    if isinstance(loss_fn, CrossEntropyLoss):
        raise TypeError(f"{name} holds float values ({dataset.y.dtype}) but CrossEntropyLoss "
                        f"needs integer class labels")
    expected = (len(dataset), model.out_features)
    if model.out_features is not None and dataset.y.shape != expected:
        raise ValueError(f"{name} must have shape {expected} (one target per model output) "
                         f"for MSELoss, got {dataset.y.shape}")


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or inf; ``epoch``, ``step`` (in the epoch,
    1-based) and ``global_step`` locate the failing step, ``loss`` is its loss."""

    def __init__(self, message, epoch, step, global_step, loss):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.loss = epoch, step, global_step, loss


class _RunState:
    """Where a run stands: finished epochs, batches of the epoch in progress, its order
    and running sums. Exactly what a checkpoint must hold to continue bit for bit."""

    def __init__(self):
        self.epochs_done, self.batches_done, self.global_step = 0, 0, 0
        self.loss_sum, self.correct, self.seconds = 0.0, 0, 0.0
        self.order = None

    def end_epoch(self, epoch):
        self.epochs_done, self.batches_done, self.seconds, self.order = epoch, 0, 0.0, None

    def as_json(self):
        return {"epochs_done": self.epochs_done, "batches_done": self.batches_done,
                "global_step": self.global_step, "loss_sum": float(self.loss_sum),
                "correct": int(self.correct), "seconds": float(self.seconds)}


def _check_checkpoint_args(checkpoint, checkpoint_every):
    """Steps between checkpoints (0 = after every epoch); checks the path's directory."""
    if isinstance(checkpoint_every, str) and checkpoint_every == "epoch":
        every_steps = 0
    elif isinstance(checkpoint_every, (int, np.integer)) and not isinstance(checkpoint_every,
                                                                            bool):
        every_steps = _check_positive_int("checkpoint_every", checkpoint_every)
    else:
        raise ValueError(f"checkpoint_every must be 'epoch' or a positive number of steps, "
                         f"got {checkpoint_every!r}")
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
        directory = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(directory):
            raise ValueError(f"checkpoint {checkpoint}: directory {directory} does not exist")
        if os.path.isdir(checkpoint):
            raise ValueError(f"checkpoint {checkpoint} is a directory; give a file path")
    return every_steps


def _gradient_buffers(model, optimizer):
    """The arrays holding every gradient: the model's flat buffer when it has one."""
    flat = getattr(model, "flat_grad", None)
    return [flat] if flat is not None else [p.grad for p in optimizer.params]


def _step_is_finite(loss, grads):
    """loss finite and every gradient finite, in one BLAS dot per buffer.

    sum(g*g) is NaN or inf when any element is; it also overflows (and so stops the run)
    when |g| > ~1.8e19 in float32, far beyond any trainable gradient. Device (non-NumPy)
    gradients are not read back: there only the loss is checked per step.
    """
    if not math.isfinite(loss):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        for g in grads:
            if isinstance(g, np.ndarray) and not math.isfinite(float(np.dot(g.ravel(),
                                                                            g.ravel()))):
                return False
    return True


def _diverged(loss, grads, epoch, step, steps_per_epoch, run, checkpoint):
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif all(np.isfinite(to_numpy(g)).all() for g in grads):
        what = f"the gradient norm overflows (loss {loss:.6g})"
    else:
        what = f"the gradient holds NaN or inf (loss {loss:.6g})"
    where = (f"training diverged at epoch {epoch}, step {step} of {steps_per_epoch} "
             f"(global step {run.global_step + 1}): {what}")
    kept = (f"the model and optimizer keep the state after global step {run.global_step}, "
            f"the last good step" if run.global_step else
            "the model and optimizer keep their initial state")
    hint = "; lower the learning rate" + (f" or resume from {checkpoint}" if checkpoint else "")
    return TrainingDiverged(f"{where}; {kept}{hint}", epoch, step, run.global_step + 1, loss)


def _check_state_finite(model, optimizer, when, checkpoint):
    """Parameters and optimizer state finite (one pass each), else TrainingDiverged.

    Catches an update that overflowed from finite gradients, which the per-step check
    cannot see; run before every checkpoint write so NaN never replaces good weights.
    """
    arrays = [("parameter " + name, p.data) for name, p in model.named_parameters()]
    arrays += [("optimizer state " + name, a)
               for name, a in optimizer.state_dict()["state"].items()]
    for name, a in arrays:
        host = to_numpy(a)
        if not np.isfinite(host).all():
            kept = f"; {checkpoint} keeps the last good checkpoint" if checkpoint else ""
            raise TrainingDiverged(f"training diverged: {name} holds NaN or inf {when} (an "
                                   f"update overflowed){kept}; lower the learning rate",
                                   None, None, None, None)


class _CheckpointWriter:
    """Writes the run's full state to one path, atomically, never with NaN in it."""

    def __init__(self, path, every_steps, model, optimizer, loss_fn, data_spec):
        self.path, self.every_steps = path, every_steps
        self.model, self.optimizer = model, optimizer
        self.loss_name, self.data_spec = type(loss_fn).__name__, data_spec

    def write(self, run, rng, history, epoch):
        _check_state_finite(self.model, self.optimizer, f"in epoch {epoch}", self.path)
        opt = self.optimizer.state_dict()
        meta = {"architecture": self.model.architecture(),
                "optimizer": {"type": opt["type"], "step": opt["step"], "hyper": opt["hyper"]},
                "loss": self.loss_name, "data": self.data_spec, "progress": run.as_json(),
                "rng": _jsonable(rng.bit_generator.state),
                "history": _jsonable(history.epochs)}
        order = run.order if run.batches_done else None
        write_checkpoint(self.path, meta, training_arrays(self.model, self.optimizer, order))


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


def _resume(ckpt, model, optimizer, loss_fn, data_spec, epochs, run, history):
    """Check ``ckpt`` against this call, then load model, optimizer, progress; returns the rng.

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
        if meta["data"].get(key) != value:
            raise ValueError(f"resume: {path} was written with {key}={meta['data'].get(key)!r}"
                             f", this call has {key}={value!r}; exact resume needs the same "
                             f"data and batching")
    progress = meta["progress"]
    if progress["epochs_done"] > epochs:
        raise ValueError(f"resume: {path} has finished {progress['epochs_done']} epochs, more "
                         f"than epochs={epochs} (epochs counts the whole run)")
    model_state = ckpt.model_state()
    own_params = dict(model.named_parameters())
    if set(model_state) != set(own_params):
        raise ValueError(f"resume: {path} parameters {sorted(model_state)} do not match the "
                         f"model's {sorted(own_params)}")
    for name, a in model_state.items():
        if a.shape != own_params[name].shape or a.dtype != model.dtype \
                or not np.isfinite(a).all():
            raise ValueError(f"resume: {path} parameter {name} is not a finite "
                             f"{model.dtype} array of shape {own_params[name].shape}")
    opt_state = ckpt.optimizer_state()
    _check_optimizer_state(path, opt_state, optimizer)
    rng = _rng_from_state(path, meta["rng"])
    # -- everything checked: load
    model.load_state_dict(model_state)
    optimizer.load_state_dict(opt_state)
    run.epochs_done, run.batches_done = progress["epochs_done"], progress["batches_done"]
    run.global_step, run.seconds = progress["global_step"], progress["seconds"]
    run.loss_sum, run.correct = progress["loss_sum"], progress["correct"]
    run.order = ckpt.arrays.get("order") if run.batches_done else None
    history.epochs = [dict(r) for r in meta["history"]]
    return rng


def _check_optimizer_state(path, state, optimizer):
    if state["type"] != type(optimizer).__name__:
        raise ValueError(f"resume: {path} holds {state['type']} state, the optimizer is "
                         f"{type(optimizer).__name__}")
    own = optimizer.state_dict()
    if set(state["state"]) != set(own["state"]):
        raise ValueError(f"resume: {path} optimizer state {sorted(state['state'])} does not "
                         f"match {type(optimizer).__name__}'s {sorted(own['state'])} (e.g. "
                         f"momentum on in one and off in the other)")
    for name, a in state["state"].items():
        ref = own["state"][name]
        if a.shape != ref.shape or a.dtype != ref.dtype or not np.isfinite(a).all():
            raise ValueError(f"resume: {path} optimizer state {name} is not a finite "
                             f"{ref.dtype} array of shape {ref.shape}")
    hyper = state["hyper"]
    if set(hyper) != set(own["hyper"]):
        raise ValueError(f"resume: {path} optimizer hyperparameters {sorted(hyper)} do not "
                         f"match {sorted(own['hyper'])}")
    for key, ref in own["hyper"].items():
        value = hyper[key]
        if isinstance(ref, bool):
            ok = isinstance(value, bool)
        elif isinstance(ref, (tuple, list)):
            ok = isinstance(value, list) and len(value) == len(ref) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value)
            if ok:
                hyper[key] = tuple(value)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0
        if not ok:
            raise ValueError(f"resume: {path} optimizer hyperparameter {key}={value!r} is "
                             f"not valid")


def _rng_from_state(path, state):
    try:
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise ValueError(f"resume: {path} holds an invalid RNG state ({e})") from None
    return np.random.Generator(bit_generator)


def format_record(record, epochs):
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}",
             f"loss {record['loss']:.4f}"]
    if record.get("train_accuracy") is not None:
        parts.append(f"train acc {100 * record['train_accuracy']:.2f}%")
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if record.get("val_accuracy") is not None:
        parts.append(f"val acc {100 * record['val_accuracy']:.2f}%")
    parts.append(f"{record['seconds']:.1f}s ({record['samples_per_s']:,.0f} samples/s)")
    return "  ".join(parts)


def _has_labels(dataset):
    return not isinstance(dataset, ArrayDataset) or dataset.y.dtype == np.int64


def _label_buffer(dataset, rows):
    if isinstance(dataset, ArrayDataset) and dataset.y.dtype.kind == "f":
        return np.empty((rows,) + dataset.y.shape[1:], dtype=dataset.y.dtype)
    return np.empty(rows, dtype=np.int64)


def _correct(loss_fn, logits, labels, backend):
    if isinstance(loss_fn, CrossEntropyLoss):
        return loss_fn.last_correct
    if labels.ndim != 1:                        # float targets: no classes to count
        return 0
    return int((backend.to_numpy(logits).argmax(axis=1) == labels).sum())


def make_train_step(model, loss_fn, optimizer, train_set, batch_size):
    """step(index) -> (mean loss, correct rows, finite): gather the rows ``index`` of the
    training set, forward, loss, backward (no update). The backend's compiled MLP step
    when it has one that fits the model (see _mlp_layout), else the layer-by-layer one."""
    compiled = model.backend.ops.get("mlp_train_step")
    layout = _mlp_layout(model) if compiled is not None else None
    arrays = isinstance(train_set, ArrayDataset)
    if layout is None or not isinstance(loss_fn, CrossEntropyLoss) \
            or model.dtype != np.float32 or (arrays and train_set.y.dtype != np.int64):
        return LayerByLayerStep(model, loss_fn, optimizer, train_set, batch_size)
    if arrays:                      # the step gathers the rows itself
        src_x, src_y = train_set.x, train_set.y
    else:                           # the dataset gathers into buffers the step reads in order
        src_x = np.empty((batch_size, train_set.num_features), np.float32)
        src_y = np.empty(batch_size, np.int64)
        in_order = np.arange(batch_size)
    steps = {}                      # one per batch size: full and tail batches

    def compiled_step(index):
        rows = index.shape[0]
        if rows not in steps:
            steps[rows] = compiled(*layout, model.flat_grad, src_x, src_y, rows)
        if not arrays:
            train_set.gather_batch(index, src_x[:rows], src_y[:rows])
            index = in_order[:rows]
        return steps[rows](np.ascontiguousarray(index, dtype=np.int64))
    return compiled_step


def _mlp_layout(model):
    """(weights, biases, weight_grads, bias_grads, activations) of a model that is a chain
    of Linear layers, each followed by nothing or by an activation its backend fused into
    it (Sequential._steps), the last Linear unfused; None for any other model."""
    steps = getattr(model, "_steps", None)
    if not steps or getattr(model, "flat_grad", None) is None:
        return None
    from .nn import Linear
    layers, names = [], []
    for layer, activation in steps:
        if not isinstance(layer, Linear):
            return None
        layers.append(layer)
        names.append("identity" if activation is None else activation.kind)
    if steps[-1][1] is not None:
        return None
    return ([l.weight.data for l in layers], [None if l.bias is None else l.bias.data
                                              for l in layers],
            [l.weight.grad for l in layers], [None if l.bias is None else l.bias.grad
                                              for l in layers], names)


class LayerByLayerStep:
    """The engine's step: gather into reused buffers, model.forward, the loss,
    model.backward (no dL/dx), loss and gradients checked for NaN/inf."""

    def __init__(self, model, loss_fn, optimizer, train_set, batch_size):
        self.model, self.loss_fn, self.train_set = model, loss_fn, train_set
        self.x_buf = np.empty((batch_size, train_set.num_features), dtype=model.dtype)
        self.y_buf = _label_buffer(train_set, batch_size)
        self.grads = _gradient_buffers(model, optimizer)

    def __call__(self, index):
        rows = index.shape[0]
        xb, yb = self.x_buf[:rows], self.y_buf[:rows]
        self.train_set.gather_batch(index, xb, yb)
        backend = self.model.backend
        logits = self.model.forward(backend.to_device(xb))
        loss = self.loss_fn(logits, yb)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        return loss, _correct(self.loss_fn, logits, yb, backend), _step_is_finite(loss,
                                                                                  self.grads)


def _batches(model, x, y, batch_size, name="x"):
    """Yield (logits on the host, labels or None, rows) over x in order, model in eval mode."""
    dataset = as_dataset(model, x, y, name) if y is not None or hasattr(x, "gather_batch") \
        else None
    if dataset is None:
        x = model.check_input(x, name)
        n = x.shape[0]
    else:
        n = len(dataset)
    batch_size = min(_check_positive_int("batch_size", batch_size), n)
    x_buf = np.empty((batch_size, model.in_features), dtype=model.dtype)
    y_buf = _label_buffer(dataset, batch_size) if dataset is not None else None
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            if dataset is None:
                xb, yb = x[lo:hi], None
            else:
                xb, yb = x_buf[:hi - lo], y_buf[:hi - lo]
                dataset.gather_batch(np.arange(lo, hi), xb, yb)
            yield model.forward(model.backend.to_device(xb)), yb, hi - lo
    finally:
        model.train(was_training)


def evaluate(model, x, y=None, *, batch_size=1024, loss_fn=None, confusion=True):
    """{"loss", "accuracy", "confusion_matrix" (true x predicted counts), "n"} over (x, y)."""
    loss_fn = CrossEntropyLoss(backend=model.backend) if loss_fn is None else loss_fn
    num_classes = model.out_features
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum, correct, n = 0.0, 0, 0
    has_labels = False
    for logits, labels, rows in _batches(model, x, y, batch_size):
        loss_sum += loss_fn.value(logits, labels) * rows
        has_labels = labels.dtype == np.int64
        if has_labels:
            predicted = model.backend.to_numpy(logits).argmax(axis=1)
            correct += int((predicted == labels).sum())
            if confusion:
                np.add.at(matrix, (labels, predicted), 1)
        n += rows
    result = {"loss": loss_sum / n, "accuracy": correct / n if has_labels else None, "n": n}
    if confusion and has_labels:
        result["confusion_matrix"] = matrix
    return result


def predict_proba(model, x, *, batch_size=1024):
    """softmax(model(x)) as a (N, classes) NumPy array."""
    parts = []
    for logits, _, _ in _batches(model, x, None, batch_size):
        z = model.backend.to_numpy(logits).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        parts.append((e / e.sum(axis=1, keepdims=True)).astype(model.dtype))
    return np.concatenate(parts)


def predict(model, x, *, batch_size=1024):
    """argmax of model(x) over classes, int64 of shape (N,)."""
    return np.concatenate([model.backend.to_numpy(logits).argmax(axis=1)
                           for logits, _, _ in _batches(model, x, None, batch_size)])
