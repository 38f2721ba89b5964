"""Training and evaluation: fit, evaluate, predict, predict_proba.

Data: ``x`` and ``y`` arrays, or a dataset object in place of ``x`` (``y`` omitted; the
protocol is in ``mlpfast.datasets``). ``fit`` is a loop over calls of the model's training
step, which its backend builds from ``model.plan()`` (``mlpfast.backend.steps`` has the
contract): each call trains a chunk of an epoch's batches (gather, forward, loss, backward,
finiteness check, optimizer update) and hands back the loss and correct rows, so progress,
the divergence check and checkpoints work at chunk boundaries. Around the loop: the run's
state and learning rates (``mlpfast.run``), the progress bar (``mlpfast.progress``) and
checkpoints (``mlpfast.resume``).
"""
import time

import numpy as np

from . import distributed, tables
from .backend.steps import label_buffer
from .checkpoint import read_checkpoint
from .datasets import ArrayDataset, as_dataset, check_targets, contents_digest, has_labels
from .init import make_rng
from .losses import CrossEntropyLoss, MSELoss
from .metrics import precision_recall_f1
from .nn import BatchNorm1d, Sequential, Softmax, in_use
from .progress import Progress
from .resume import CheckpointWriter, check_checkpoint_args, resume as resume_run
from .run import (ChunkSizes, EarlyStopping, History, Interrupts,  # noqa: F401
                  LearningRates, RunState, TrainingDiverged, check_state_finite, diverged,
                  format_record)


class Evaluation(dict):
    """What ``evaluate`` returns: a plain dict that Jupyter shows as tables."""

    def _repr_html_(self):
        return tables.evaluation_html(self)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit(model, optimizer, loss_fn, x, y=None, *, epochs, batch_size, shuffle=True, val=None,
        seed=None, progress=True, verbose=False, checkpoint=None, checkpoint_every="epoch",
        resume=None, lr_schedule=None, early_stopping=None, monitor="val_loss",
        restore_best=True, comm=None, precision=None):
    """Train ``model`` on (x, y) or a dataset; returns a ``History``.

    Each epoch visits every sample once in an order drawn from ``seed`` (when shuffle),
    in batches of ``batch_size`` (the last one may be smaller). ``x`` is an array (N,
    features) with labels or targets ``y``, or a dataset object (``y`` omitted: README,
    Python API). ``val`` = (x, y) or a dataset, evaluated after each epoch. ``progress``
    shows a bar per epoch on stderr (tqdm, when installed); ``verbose`` prints a line
    per epoch.

    ``checkpoint`` = PATH writes model, optimizer state, progress, RNG state and data
    order to that one file, replaced atomically (see ``mlpfast.checkpoint``), after every
    epoch (``checkpoint_every="epoch"``) or every N optimizer steps
    (``checkpoint_every=N``, plus once at the end). ``resume`` = PATH continues the run
    saved there: ``epochs`` is the total, so the same call finishes the same schedule, and
    the result is bit-identical to an uninterrupted run (same backend, same threads).
    The returned History then includes the epochs run before the checkpoint.

    A NaN or inf in the loss or the gradients raises ``TrainingDiverged`` naming the epoch
    and step; the model and optimizer keep the state of the last good step. Ctrl-C or
    SIGTERM ends the run after the steps in progress, writes a last checkpoint (with
    ``checkpoint``) and raises KeyboardInterrupt (README, Reliability).

    ``lr_schedule`` scales the optimizer's lr at each global step (``mlpfast.schedules``):
    None or "constant", "cosine", "onecycle", "plateau" (with their default arguments), a
    Schedule object (``mf.schedules.make_schedule("cosine", warmup_steps=500)``; "step",
    "multistep" and "exponential" need theirs: ``make_schedule("step", step_size=10)``),
    or a function f(t, T) -> factor (finite, >= 0). Its state is checkpointed, so a
    resumed run follows it.

    ``early_stopping`` = patience stops after that many epochs in which ``monitor``
    ("val_loss", "val_accuracy", "loss" or "train_accuracy") did not improve; with
    ``restore_best`` the model ends with the weights of its best epoch
    (``history.best_epoch``; ``history.stopped_epoch`` is where it stopped).

    ``comm`` (an mpi4py communicator or a ``mlpfast.distributed.Cluster``) trains over its
    ranks, data-parallel: every rank makes the same call, ``batch_size`` is the global
    batch, rank 0 writes the checkpoints (``mlpfast.distributed``).

    ``precision`` "fp32" or "bf16" (None: ``model.precision``): bf16 runs the GEMMs of
    forward and backward on bf16 operands with float32 sums, everything else in float32
    (see ``mlpfast.Sequential``); the cpu backend's compiled step only. A checkpoint
    resumes only in the precision it was written in.
    """
    cluster = distributed.join(comm)
    with distributed.starting(cluster):   # an error on one rank stops every rank
        job = _Job(model, optimizer, loss_fn, x, y, val, epochs, batch_size, shuffle,
                   checkpoint, checkpoint_every, precision)
        stopper = _early_stopping(early_stopping, monitor, job)
        rates = LearningRates(lr_schedule, job.epochs * job.steps_per_epoch,
                              job.steps_per_epoch, optimizer.lr)
        if hasattr(rates.schedule, "monitor"):      # reduce-on-plateau
            _check_monitor(rates.schedule.monitor, job, f"lr_schedule {rates.schedule.name!r}")
        run = RunState(make_rng(seed), rates, stopper)
        if checkpoint is not None or resume is not None or cluster is not None:
            # computed once: checkpoints hold it, ranks compare it
            job.data_spec["contents"] = contents_digest(job.train_set)
        if resume is not None:        # read, check everything, then load (all or nothing)
            resume_run(read_checkpoint(resume), model, optimizer, loss_fn, job.data_spec,
                       job.epochs, run)
    if cluster is not None:           # the ranks agree, then take rank 0's state
        distributed.start(cluster, model, optimizer, job, run, seed, lr_schedule)
    writer = None if checkpoint is None else CheckpointWriter(
        checkpoint, job.every_steps, model, optimizer, loss_fn, job.data_spec)
    with in_use(model):               # another thread's call on this model waits
        step = model.backend.make_step(job.plan, loss_fn, optimizer, job.train_set,
                                       job.batch_size)
        model.train()
        with Interrupts() as interrupts:
            if cluster is not None:   # one step over every rank; rank 0 writes checkpoints
                step, writer = distributed.wrap(cluster, step, writer, model, optimizer,
                                                job.batch_size, interrupts)
            _train_epochs(job, step, run, writer, progress, verbose, interrupts)
        stopper = run.stopper         # a resume put the checkpoint's in place of the new one
        if stopper is not None and restore_best and stopper.best_state is not None:
            model.load_state_dict(stopper.best_state)
        model.eval()
    return run.history


def _train_epochs(job, step, run, writer, progress, verbose, interrupts):
    """The epochs left: train, check, validate, record, checkpoint, stop early."""
    model, optimizer, stopper = job.model, job.optimizer, run.stopper
    for epoch in range(run.epochs_done + 1, job.epochs + 1):
        if stopper is not None and stopper.stopped:
            run.history.stopped_epoch = run.epochs_done
            break
        start = time.perf_counter() - run.seconds
        _train_epoch(job, step, run, epoch, writer, progress, start, interrupts)
        check_state_finite(model, optimizer, f"after epoch {epoch}", job.checkpoint)
        record = job.record(epoch, run, time.perf_counter() - start)
        stop = run.end_epoch(record, model)
        if writer is not None and (not job.every_steps or epoch == job.epochs or stop
                                   or interrupts.requested):
            writer.write(run, epoch)
        if verbose:
            print(format_record(record, job.epochs), flush=True)
        if interrupts.requested and (interrupts.terminating or not (epoch == job.epochs
                                                                    or stop)):
            raise KeyboardInterrupt         # (after a Ctrl-C, a run that has ended returns)


def _early_stopping(patience, monitor, job):
    if patience is None:
        return None
    stopper = EarlyStopping(patience, monitor)
    _check_monitor(monitor, job, "early stopping")
    return stopper


def _check_monitor(monitor, job, user):
    """``monitor`` names a value the run records every epoch, or a ValueError naming
    ``user`` (early stopping, a plateau schedule) before any training."""
    if monitor not in EarlyStopping.MONITORS:
        raise ValueError(f"{user}: monitor must be one of {EarlyStopping.MONITORS}, "
                         f"got {monitor!r}")
    if monitor.startswith("val_") and job.val_set is None:
        raise ValueError(f"{user} on {monitor} needs val=(x_val, y_val) or a dataset")
    labelled = has_labels(job.val_set) if monitor == "val_accuracy" else job.classify
    if monitor.endswith("accuracy") and not labelled:
        where = "val's targets" if monitor == "val_accuracy" else "y"
        raise ValueError(f"{user} on {monitor} needs class labels, but {where} are floats")


def _train_epoch(job, step, run, epoch, writer, progress, start, interrupts):
    """The rest of epoch ``epoch``: calls of ``step`` over chunks of its batches. A Ctrl-C
    ends it at a chunk boundary: a final checkpoint, then KeyboardInterrupt."""
    order = run.start_epoch(len(job.train_set), job.shuffle)
    chunks = ChunkSizes(getattr(step, "max_batches", None))
    with Progress(progress, job.steps_per_epoch, f"epoch {epoch}/{job.epochs}") as bar:
        while run.batches_done < job.steps_per_epoch:
            count = chunks.next(run, job.steps_per_epoch, job.every_steps)
            first, before = run.batches_done, run.loss_sum
            lrs = run.rates.rates(job.optimizer.lr, run.global_step, count)
            done, finite, failed_loss = step.run(order, first, count, lrs, run.sums)
            chunks.done(count)
            run.advance(done)
            if not finite:                  # the failing step was not applied
                raise diverged(failed_loss, job.model, job.optimizer, epoch,
                               run.batches_done + 1, job.steps_per_epoch, run, job.checkpoint,
                               data_checked=isinstance(job.train_set, ArrayDataset))
            rows = min(run.batches_done * job.batch_size, len(job.train_set)) \
                - first * job.batch_size
            bar.update(done, (run.loss_sum - before) / rows)
            at_checkpoint = job.every_steps and run.global_step % job.every_steps == 0
            stop = interrupts.requested and run.batches_done < job.steps_per_epoch
            if writer is not None and (at_checkpoint or stop):
                run.seconds = time.perf_counter() - start
                writer.write(run, epoch)
            if stop:                # (at the epoch's end, after its record and checkpoint)
                raise KeyboardInterrupt


class _Job:
    """fit's arguments, checked before anything changes, and what follows from them."""

    def __init__(self, model, optimizer, loss_fn, x, y, val, epochs, batch_size, shuffle,
                 checkpoint, checkpoint_every, precision):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a Sequential or an MLP (a layer trains as "
                            f"mf.Sequential(layer)), got {type(model).__name__}")
        self.epochs = _check_positive_int("epochs", epochs)
        batch_size = _check_positive_int("batch_size", batch_size)
        if not isinstance(loss_fn, (CrossEntropyLoss, MSELoss)):
            raise TypeError(f"loss_fn must be CrossEntropyLoss() or MSELoss(), "
                            f"got {type(loss_fn).__name__}")
        _check_optimizer(model, optimizer)
        self.every_steps = check_checkpoint_args(checkpoint, checkpoint_every)
        self.train_set = as_dataset(model, x, y)
        check_targets(loss_fn, self.train_set, model, "y")
        self.val_set = _val_set(model, loss_fn, val)
        self.model, self.optimizer, self.checkpoint = model, optimizer, checkpoint
        self.val_loss_fn = loss_fn.on_backend(model.backend)
        self.classify = isinstance(loss_fn, CrossEntropyLoss) or has_labels(self.train_set)
        n = len(self.train_set)
        self.batch_size, self.shuffle = min(batch_size, n), bool(shuffle)
        self.steps_per_epoch = -(-n // self.batch_size)
        _check_batchnorm_batches(model, n, self.batch_size)
        self.plan = model.plan(precision)
        model.backend.check_step(self.plan, loss_fn, optimizer, self.train_set)
        self.data_spec = {"n": n, "num_features": int(self.train_set.num_features),
                          "batch_size": self.batch_size, "shuffle": self.shuffle,
                          "precision": self.plan.precision}

    def record(self, epoch, run, seconds):
        """The History record of a finished epoch (validation included)."""
        n = len(self.train_set)
        record = {"epoch": epoch, "loss": run.loss_sum / n,
                  "train_accuracy": run.correct / n if self.classify else None,
                  "seconds": seconds, "samples_per_s": n / seconds}
        if self.val_set is not None:
            result = evaluate(self.model, self.val_set, loss_fn=self.val_loss_fn,
                              confusion=False)
            record["val_loss"], record["val_accuracy"] = result["loss"], result["accuracy"]
            self.model.train()
        return record


def _check_batchnorm_batches(model, n, batch_size):
    """No batch of 1 sample when the model has a BatchNorm1d (it cannot normalize one)."""
    if not any(isinstance(layer, BatchNorm1d) for layer in model.layers):
        return
    if batch_size == 1 or n % batch_size == 1:
        raise ValueError(f"BatchNorm1d needs more than 1 sample per batch in training, but "
                         f"batch_size={batch_size} with {n} samples gives a batch of 1: "
                         f"choose a batch_size > 1 with {n} % batch_size != 1")


def _check_optimizer(model, optimizer):
    if not hasattr(optimizer, "step") or not getattr(optimizer, "params", None):
        raise TypeError(f"optimizer must be an mlpfast optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if optimizer.params[0].backend is not model.backend or \
            not all(id(p) in own for p in optimizer.params):
        raise ValueError("optimizer was built for another model's parameters: build it from "
                         "model.parameters()")


def _val_set(model, loss_fn, val):
    """The validation dataset of ``val`` ((x, y) or a dataset), checked, or None."""
    if val is None:
        return None
    if hasattr(val, "gather_batch"):
        val_set = as_dataset(model, val, None, name="val")
    elif isinstance(val, (tuple, list)) and len(val) == 2:
        val_set = as_dataset(model, val[0], val[1], name="val x", y_name="val y")
    else:
        raise ValueError("val must be (x_val, y_val) or a dataset")
    check_targets(loss_fn, val_set, model, "val y")
    return val_set


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
    y_buf = label_buffer(dataset, batch_size) if dataset is not None else None
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
    """{"loss", "accuracy", "n"} over (x, y), or over a dataset object ``x`` (y omitted).
    ``loss_fn`` defaults to CrossEntropyLoss; "accuracy" is None when y holds MSE targets
    rather than class labels. With class labels and ``confusion`` also
    "confusion_matrix" (true x predicted counts) and "scores", per-class precision,
    recall, f1 and support with their macro and weighted averages
    (``mlpfast.metrics.precision_recall_f1``)."""
    if y is None and not hasattr(x, "gather_batch"):
        raise ValueError("y is missing: evaluate needs labels (or MSE targets) for x, or a "
                         "dataset as x")
    loss_fn = CrossEntropyLoss(backend=model.backend) if loss_fn is None else loss_fn
    num_classes = model.out_features
    loss_sum, n, truth, predictions = 0.0, 0, [], []
    with in_use(model):
        for logits, labels, rows in _batches(model, x, y, batch_size):
            loss_sum += loss_fn.value(logits, labels) * rows
            if labels.dtype == np.int64:
                truth.append(labels.copy())
                predictions.append(model.backend.to_numpy(logits).argmax(axis=1))
            n += rows
    result = Evaluation(loss=loss_sum / n, accuracy=None, n=n)
    if truth:
        truth, predictions = np.concatenate(truth), np.concatenate(predictions)
        result["accuracy"] = int((truth == predictions).sum()) / n
        if confusion:
            matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
            np.add.at(matrix, (truth, predictions), 1)
            result["confusion_matrix"] = matrix
            result["scores"] = precision_recall_f1(truth, predictions, num_classes)
    return result


def predict_proba(model, x, *, batch_size=1024):
    """softmax(model(x)) as a (N, classes) NumPy array; model(x) itself when the model
    ends in a ``Softmax`` layer (its outputs are the probabilities already)."""
    ends_in_softmax = isinstance(getattr(model, "layers", [model])[-1], Softmax)
    parts = []
    with in_use(model):
        for outputs, _, _ in _batches(model, x, None, batch_size):
            z = model.backend.to_numpy(outputs)
            if ends_in_softmax:
                parts.append(z.copy())
            else:
                z = z.astype(np.float64)
                e = np.exp(z - z.max(axis=1, keepdims=True))
                parts.append((e / e.sum(axis=1, keepdims=True)).astype(model.dtype))
    return np.concatenate(parts)


def predict(model, x, *, batch_size=1024):
    """argmax of model(x) over classes, int64 of shape (N,)."""
    with in_use(model):
        return np.concatenate([model.backend.to_numpy(logits).argmax(axis=1)
                               for logits, _, _ in _batches(model, x, None, batch_size)])
