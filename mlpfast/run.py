"""The pieces of ``fit``'s loop: where a run stands, its learning rates, how many steps go
in one call of the backend's step, and what happens when training diverges."""
import math
import signal
import threading
import time

import numpy as np

from . import tables
from .backend import to_numpy
from .checkpoint import _is_int, _is_number
from .schedules import make_schedule


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or inf; ``epoch``, ``step`` (in the epoch,
    1-based) and ``global_step`` locate the failing step, ``loss`` is its loss."""

    def __init__(self, message, epoch, step, global_step, loss):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.loss = epoch, step, global_step, loss


class History:
    """Per-epoch records: loss, train_accuracy, val_loss, val_accuracy, seconds, samples_per_s.

    ``history["loss"]`` is the list over epochs. With early stopping, ``best_epoch`` is the
    epoch whose weights the model ends with (restore_best) and ``stopped_epoch`` the epoch
    after which training stopped (None when it ran every epoch)."""

    def __init__(self):
        self.epochs = []
        self.best_epoch = self.stopped_epoch = None

    def append(self, record):
        self.epochs.append(record)

    def __getitem__(self, key):
        return [record[key] for record in self.epochs]

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        return f"History({self.epochs!r})"

    def _repr_html_(self):
        """Jupyter's view: a table, one row per epoch."""
        return tables.history_html(self.epochs)


class RunState:
    """Everything a checkpoint must hold to continue a run bit for bit: finished epochs,
    batches of the epoch in progress, its order and running sums, the RNG that draws the
    orders, the history, the learning-rate schedule's state and early stopping's.

    ``sums`` = [summed loss, correct rows] of the epoch in progress (float64, added to by
    the backend's step, one batch after the other, so a resumed run adds the same numbers
    in the same order)."""

    def __init__(self, rng, rates, stopper=None):
        self.epochs_done, self.batches_done, self.global_step = 0, 0, 0
        self.sums = np.zeros(2, np.float64)
        self.seconds = 0.0
        self.order = None
        self.rng, self.rates, self.stopper = rng, rates, stopper
        self.history = History()

    @property
    def loss_sum(self):
        return float(self.sums[0])

    @property
    def correct(self):
        return int(self.sums[1])

    def start_epoch(self, n, shuffle):
        """The sample order of the epoch: drawn at its start, kept when resuming within it."""
        if self.batches_done == 0:
            self.order = self.rng.permutation(n) if shuffle else np.arange(n)
            self.sums[:] = 0
        self.order = np.ascontiguousarray(self.order, dtype=np.int64)
        return self.order

    def advance(self, steps):
        self.batches_done += steps
        self.global_step += steps

    def end_epoch(self, record, model):
        """Record the finished epoch; True when early stopping says to stop."""
        self.history.append(record)
        self.rates.end_epoch(record)
        self.epochs_done, self.batches_done, self.seconds, self.order = \
            record["epoch"], 0, 0.0, None
        if self.stopper is None:
            return False
        stop = self.stopper.update(record, model)
        self.history.best_epoch = self.stopper.best_epoch
        return stop

    def as_json(self):
        return {"epochs_done": self.epochs_done, "batches_done": self.batches_done,
                "global_step": self.global_step, "loss_sum": self.loss_sum,
                "correct": self.correct, "seconds": float(self.seconds)}

    def load_json(self, progress, order):
        self.epochs_done, self.batches_done = progress["epochs_done"], progress["batches_done"]
        self.global_step, self.seconds = progress["global_step"], progress["seconds"]
        self.sums[:] = (progress["loss_sum"], progress["correct"])
        self.order = order if self.batches_done else None


class LearningRates:
    """The learning rate of every step: the optimizer's lr times the schedule's factor at
    global step t (``mlpfast.schedules``: a name, a Schedule, or f(t, T) -> factor)."""

    def __init__(self, schedule, total_steps, steps_per_epoch, base_lr):
        self.schedule = make_schedule(schedule).start(total_steps, steps_per_epoch, base_lr)

    def rates(self, lr, first_step, count):
        """float64 (count,): the rates of global steps first_step .. first_step + count - 1,
        each finite and >= 0 (else a ValueError, before any of them is used)."""
        rates = np.array([lr * self.schedule.factor(t)
                          for t in range(first_step, first_step + count)], np.float64)
        bad = np.flatnonzero(~(np.isfinite(rates) & (rates >= 0)))
        if bad.size:
            raise ValueError(f"lr_schedule {self.schedule.name!r} gives the learning rate "
                             f"{rates[bad[0]]} at step {first_step + bad[0]}: rates must be "
                             f"finite and >= 0")
        return rates

    def end_epoch(self, record):
        """Feed the epoch's record to the schedule (reduce-on-plateau reads its monitor)."""
        self.schedule.end_epoch(record.get(getattr(self.schedule, "monitor", "val_loss")))


class EarlyStopping:
    """Stop after ``patience`` epochs in which ``monitor`` (a History key) did not improve
    on its best (lower for losses, higher for accuracies); keep a host copy of the best
    epoch's parameters and buffers to restore at the end."""
    MONITORS = ("val_loss", "val_accuracy", "loss", "train_accuracy")

    def __init__(self, patience, monitor):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) \
                or patience < 1:
            raise ValueError(f"early_stopping must be a positive number of epochs (the "
                             f"patience), got {patience!r}")
        if monitor not in self.MONITORS:
            raise ValueError(f"monitor must be one of {self.MONITORS}, got {monitor!r}")
        self.patience, self.monitor = int(patience), monitor
        self.higher_is_better = monitor.endswith("accuracy")
        self.best, self.best_epoch, self.bad_epochs, self.best_state = None, None, 0, None

    @property
    def stopped(self):
        return self.bad_epochs >= self.patience

    def update(self, record, model):
        """After an epoch: True when training should stop."""
        value = record[self.monitor]
        better = self.best is None or (value > self.best if self.higher_is_better
                                       else value < self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            self.best_state = model.state_dict()
        else:
            self.bad_epochs += 1
        return self.stopped

    def as_json(self):
        return {"monitor": self.monitor, "patience": self.patience, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_json(self, state, best_state, path):
        """Continue from a checkpoint's early-stopping state and best weights."""
        if not isinstance(state, dict) or state.get("monitor") != self.monitor \
                or state.get("patience") != self.patience:
            raise ValueError(f"resume: {path} was written with early stopping {state!r}, this "
                             f"call has patience {self.patience} on {self.monitor}")
        best, best_epoch, bad_epochs = (state.get(k) for k in ("best", "best_epoch",
                                                                 "bad_epochs"))
        if not (_is_int(bad_epochs) and bad_epochs <= self.patience
                and (best_epoch is None or _is_int(best_epoch, 1))
                and (best is None or _is_number(best, finite=False))):
            raise ValueError(f"resume: {path} holds early stopping {state!r}: best must be a "
                             f"number or null, best_epoch a positive integer or null, "
                             f"bad_epochs an integer in [0, {self.patience}]")
        self.best, self.best_epoch = best, best_epoch
        self.bad_epochs, self.best_state = bad_epochs, best_state or None


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


def diverged(loss, model, optimizer, epoch, step, steps_per_epoch, run, checkpoint,
             data_checked=True):
    """The TrainingDiverged for a step whose loss or gradients were not finite.

    ``data_checked``: False when the batches come from a dataset object, whose
    ``gather_batch`` output is not checked for NaN or inf (arrays are, before training).
    """
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif np.isfinite(to_numpy(model.flat_grad)).all():
        what = f"the gradient norm overflows (loss {loss:.6g})"
    else:
        what = f"the gradient holds NaN or inf (loss {loss:.6g})"
    where = (f"training diverged at epoch {epoch}, step {step} of {steps_per_epoch} "
             f"(global step {run.global_step + 1}): {what}")
    overflowed = _not_finite(model, optimizer)
    if overflowed is not None:          # an earlier update overflowed from finite gradients
        kept = (f"{overflowed} already holds NaN or inf (an update overflowed)"
                + (f"; {checkpoint} keeps the last good checkpoint" if checkpoint else ""))
    elif run.global_step:
        kept = (f"the model and optimizer keep the state after global step {run.global_step}, "
                f"the last good step")
    else:
        kept = "the model and optimizer keep their initial state"
    hint = "; lower the learning rate" + (f" or resume from {checkpoint}" if checkpoint else "")
    if not data_checked:
        hint += ("; if the batch itself held NaN or inf, it came from the dataset's "
                 "gather_batch (a dataset object's batches are not checked)")
    return TrainingDiverged(f"{where}; {kept}{hint}", epoch, step, run.global_step + 1, loss)


def check_state_finite(model, optimizer, when, checkpoint):
    """Parameters and optimizer state finite (one pass each), else TrainingDiverged.

    Catches an update that overflowed from finite gradients, which the per-step check
    cannot see; run before every checkpoint write so NaN never replaces good weights.
    """
    name = _not_finite(model, optimizer)
    if name is not None:
        kept = f"; {checkpoint} keeps the last good checkpoint" if checkpoint else ""
        raise TrainingDiverged(f"training diverged: {name} holds NaN or inf {when} (an "
                               f"update overflowed){kept}; lower the learning rate",
                               None, None, None, None)


def _not_finite(model, optimizer):
    """The first parameter or optimizer state array that holds NaN or inf, or None."""
    arrays = [("parameter " + name, p.data) for name, p in model.named_parameters()]
    arrays += [("optimizer state " + name, a)
               for name, a in optimizer.state_arrays().items()]
    return next((name for name, a in arrays if not np.isfinite(to_numpy(a)).all()), None)


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


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM (what batch schedulers and service managers send) while
    fit runs, taken at the next chunk boundary instead of wherever it lands: the chunk in
    progress finishes, fit writes a final checkpoint (when it has one) and raises
    KeyboardInterrupt; after a Ctrl-C that came once the run's last step was done, fit
    returns instead (SIGTERM still raises). A second signal interrupts at once. Installed
    only in the main thread, and only over the default handlers (Python's for SIGINT, the
    system's for SIGTERM): a handler or an ignore the program set stays in charge."""
    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self):
        self.requested = False
        self.terminating = False        # the signal was SIGTERM: stop even after the last step
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum, default in self.DEFAULTS.items():
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.terminating = signum == signal.SIGTERM
