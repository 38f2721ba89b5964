"""The pieces of ``fit``'s loop: where a run stands, its learning rates, how many steps go
in one call of the backend's step, and what happens when training diverges."""
import math
import time

import numpy as np

from .backend import to_numpy


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or inf; ``epoch``, ``step`` (in the epoch,
    1-based) and ``global_step`` locate the failing step, ``loss`` is its loss."""

    def __init__(self, message, epoch, step, global_step, loss):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.loss = epoch, step, global_step, loss


class RunState:
    """Where a run stands: finished epochs, batches of the epoch in progress, its order
    and running sums. Exactly what a checkpoint must hold to continue bit for bit.

    ``sums`` = [summed loss, correct rows] of the epoch in progress (float64, added to by
    the backend's step, one batch after the other, so a resumed run adds the same numbers
    in the same order)."""

    def __init__(self):
        self.epochs_done, self.batches_done, self.global_step = 0, 0, 0
        self.sums = np.zeros(2, np.float64)
        self.seconds = 0.0
        self.order = None

    @property
    def loss_sum(self):
        return float(self.sums[0])

    @property
    def correct(self):
        return int(self.sums[1])

    def start_epoch(self, rng, n, shuffle):
        """The sample order of the epoch: drawn at its start, kept when resuming within it."""
        if self.batches_done == 0:
            self.order = rng.permutation(n) if shuffle else np.arange(n)
            self.sums[:] = 0
        self.order = np.ascontiguousarray(self.order, dtype=np.int64)
        return self.order

    def advance(self, steps):
        self.batches_done += steps
        self.global_step += steps

    def end_epoch(self, epoch):
        self.epochs_done, self.batches_done, self.seconds, self.order = epoch, 0, 0.0, None

    def as_json(self):
        return {"epochs_done": self.epochs_done, "batches_done": self.batches_done,
                "global_step": self.global_step, "loss_sum": self.loss_sum,
                "correct": self.correct, "seconds": float(self.seconds)}

    def load_json(self, progress, order):
        self.epochs_done, self.batches_done = progress["epochs_done"], progress["batches_done"]
        self.global_step, self.seconds = progress["global_step"], progress["seconds"]
        self.sums[:] = (progress["loss_sum"], progress["correct"])
        self.order = order if self.batches_done else None


def cosine_schedule(step, total_steps):
    """(1 + cos(pi * step / total_steps)) / 2: 1 at the first step, towards 0 at the last."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


class LearningRates:
    """The learning rate of every step: the optimizer's lr times the schedule's factor at
    global step t of T. ``schedule``: None or "constant", "cosine", or f(t, T) -> factor."""

    def __init__(self, schedule, total_steps):
        if schedule is None or schedule == "constant":
            self.factor = None
        elif schedule == "cosine":
            self.factor = cosine_schedule
        elif callable(schedule):
            self.factor = schedule
        else:
            raise ValueError(f"lr_schedule must be None, 'constant', 'cosine' or a function "
                             f"f(step, total_steps) -> factor, got {schedule!r}")
        self.total_steps = total_steps

    def rates(self, lr, first_step, count):
        """float64 (count,): the rates of global steps first_step .. first_step + count - 1."""
        if self.factor is None:
            return np.full(count, lr)
        return np.array([lr * self.factor(t, self.total_steps)
                         for t in range(first_step, first_step + count)], np.float64)


class ChunkSizes:
    """How many steps go in one call of the backend's step: as many as take about
    ``target_seconds`` (so the progress bar and Ctrl-C answer within that time), at most
    ``limit`` (the step's own bound, or None), never past the epoch's end or the next
    checkpoint. The count only changes where the calls split: never the results."""

    def __init__(self, limit=None, target_seconds=0.1, most=1024):
        self.limit = most if limit is None else min(limit, most)
        self.target = target_seconds
        self.size = 1
        self.started = None

    def next(self, run, steps_per_epoch, every_steps):
        self.started = time.perf_counter()
        count = min(self.size, steps_per_epoch - run.batches_done)
        if every_steps:
            count = min(count, every_steps - run.global_step % every_steps)
        return count

    def done(self, count):
        """Grow or shrink the next call by the time this one took for ``count`` steps."""
        seconds = max(time.perf_counter() - self.started, 1e-6)
        wanted = count * self.target / seconds
        self.size = int(max(1, min(self.limit, 2 * self.size, wanted)))


def diverged(loss, grads, epoch, step, steps_per_epoch, run, checkpoint):
    """The TrainingDiverged for a step whose loss or gradients were not finite."""
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


def check_state_finite(model, optimizer, when, checkpoint):
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
