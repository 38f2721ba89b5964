"""Training and evaluation loops: fit, evaluate, predict, predict_proba.

Data: ``x`` and ``y`` arrays, or a dataset object in place of ``x`` (``y`` omitted) with
    __len__()                        number of samples
    num_features                     columns of one sample
    num_classes                      number of classes (labels lie in [0, num_classes))
    gather_batch(index, x_out, y_out)  fill x_out (B, num_features) float32/float64 and
                                     y_out (B,) int64 with the samples ``index`` (B,) int64
Batches are gathered into buffers allocated once per run, then handed to the model's
backend. One step: logits = model.forward(x); loss = loss_fn(logits, y);
model.backward(loss_fn.backward()); optimizer.step().
"""
import sys
import time

import numpy as np

from .backend import get_backend
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
        self.x, self.y = x, y
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
        seed=None, progress=True, verbose=False):
    """Train ``model`` on (x, y) or a dataset; returns a ``History``.

    Each epoch visits every sample once in an order drawn from ``seed`` (when shuffle),
    in batches of ``batch_size`` (the last one may be smaller). ``val`` = (x, y) or a
    dataset, evaluated after each epoch. ``verbose`` prints a line per epoch.
    """
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    if not isinstance(loss_fn, (CrossEntropyLoss, MSELoss)):
        raise TypeError(f"loss_fn must be CrossEntropyLoss() or MSELoss(), "
                        f"got {type(loss_fn).__name__}")
    if optimizer.params[0].backend is not model.backend:
        raise ValueError("optimizer was built for another model's parameters")
    train_set = as_dataset(model, x, y)
    val_set = None
    if val is not None:
        val_set = val if hasattr(val, "gather_batch") else None
        if val_set is None:
            if not isinstance(val, (tuple, list)) or len(val) != 2:
                raise ValueError("val must be (x_val, y_val) or a dataset")
            val_set = as_dataset(model, val[0], val[1], name="val x")
        else:
            val_set = as_dataset(model, val, None, name="val")

    backend = model.backend
    loss_fn.backend = backend
    classify = isinstance(loss_fn, CrossEntropyLoss) or _has_labels(train_set)
    n = len(train_set)
    batch_size = min(batch_size, n)
    rng = np.random.default_rng(seed)
    x_buf = np.empty((batch_size, train_set.num_features), dtype=model.dtype)
    y_buf = _label_buffer(train_set, batch_size)
    val_loss_fn = type(loss_fn)(backend=backend)
    history = History()
    model.train()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(n) if shuffle else np.arange(n)
        bar = _Progress(progress, -(-n // batch_size), f"epoch {epoch}/{epochs}")
        loss_sum, correct = 0.0, 0
        for lo in range(0, n, batch_size):
            index = order[lo:lo + batch_size]
            rows = index.shape[0]
            xb, yb = x_buf[:rows], y_buf[:rows]
            train_set.gather_batch(index, xb, yb)
            logits = model.forward(backend.to_device(xb))
            loss = loss_fn(logits, yb)
            model.backward(loss_fn.backward())
            optimizer.step()
            loss_sum += loss * rows
            if classify:
                correct += _correct(loss_fn, logits, yb, backend)
            bar.update(loss)
        bar.close()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "loss": loss_sum / n,
                  "train_accuracy": correct / n if classify else None,
                  "seconds": seconds, "samples_per_s": n / seconds}
        if val_set is not None:
            result = evaluate(model, val_set, loss_fn=val_loss_fn, confusion=False)
            record["val_loss"], record["val_accuracy"] = result["loss"], result["accuracy"]
            model.train()
        history.append(record)
        if verbose:
            print(format_record(record, epochs), flush=True)
    model.eval()
    return history


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
    return int((backend.to_numpy(logits).argmax(axis=1) == labels).sum())


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
