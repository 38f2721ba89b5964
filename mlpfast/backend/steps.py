"""Training steps: what ``Backend.make_step`` returns and ``fit`` runs.

    step = backend.make_step(plan, loss_fn, optimizer, dataset, batch_size)
    steps, finite, failed_loss = step.run(order, first_batch, num_batches, lrs, sums)

``run`` trains on batches first_batch .. first_batch + num_batches - 1 of an epoch: batch b
holds the dataset rows ``order[b B : (b + 1) B]`` (B = batch_size; the epoch's last batch
may be shorter). Each batch: gather, forward, loss, backward (no dL/dx of the first layer),
a check that the loss and every gradient are finite, then the optimizer's update with
learning rate ``lrs[i]`` (the optimizer's step count grows by one). ``sums`` (float64 [2])
accumulates each applied batch's summed loss (mean loss x rows) and correct rows (argmax ==
label). A batch whose loss or gradients are NaN or inf stops the call before its update, so
the model and optimizer keep the last good step; ``run`` then returns finite False and that
batch's mean loss. Returns (steps applied, finite, failed_loss).

The same step in two halves, for data parallelism (the gradients are averaged over ranks
between them):

    loss, correct = step.compute_gradients(index)   # the rows index: forward, loss, backward
    step.apply_update(lr)                           # the optimizer's step with flat_grad

``compute_gradients(index, mean_rows)`` on the CPU backends: the gradient of the rows' summed
loss / mean_rows (a rank's share of a batch of mean_rows rows; the loss it returns stays
the mean over its own rows).

``dataset`` follows the protocol of ``mlpfast.datasets``: ``len``, ``num_features``,
``num_classes`` and ``gather_batch(index, x_out, y_out)``; an array-backed dataset also
has ``arrays`` = (x, y), which a step may gather from directly.

Here: the generic step every backend can run, layer by layer through the model's own
forward and backward (numpy, numba, and any model the compiled steps do not cover).
"""
import math

import numpy as np


def layer_by_layer_step(plan, loss_fn, optimizer, dataset, batch_size):
    fp32_only(plan, loss_fn, optimizer, dataset)
    return LayerByLayerStep(plan, loss_fn, optimizer, dataset, batch_size)


def fp32_only(plan, loss_fn, optimizer, dataset):
    """A backend's ``check_step`` when its steps train in fp32 only."""
    if plan.precision != "fp32":
        raise ValueError(f"precision {plan.precision!r} is not available on the "
                         f"{plan.model.backend.name} backend, which trains in fp32 only; "
                         f"bf16 trains on the cpu backend")


def label_buffer(dataset, rows):
    """A (rows,) int64 buffer for labels, or (rows, D) for the float targets of arrays."""
    y = getattr(dataset, "arrays", (None, None))[1]
    if y is not None and y.dtype.kind == "f":
        return np.empty((rows,) + y.shape[1:], dtype=y.dtype)
    return np.empty(rows, dtype=np.int64)


class LayerByLayerStep:
    """model.forward, the loss, model.backward and optimizer.step, one batch at a time,
    into batch buffers allocated once."""

    def __init__(self, plan, loss_fn, optimizer, dataset, batch_size):
        self.model, self.optimizer, self.dataset = plan.model, optimizer, dataset
        self.backend = self.model.backend
        self.loss_fn = loss_fn.on_backend(self.backend)
        self.batch_size = batch_size
        self.x_buf = np.empty((batch_size, dataset.num_features), dtype=plan.dtype)
        self.y_buf = label_buffer(dataset, batch_size)
        self.grads = [plan.flat_grad]

    def compute_gradients(self, index, mean_rows=None):
        """Forward, loss and backward on the rows ``index``: (mean loss, correct); the
        gradients of the summed loss / mean_rows (default: the rows), host arrays only."""
        rows = index.shape[0]
        xb, yb = self.x_buf[:rows], self.y_buf[:rows]
        self.dataset.gather_batch(index, xb, yb)
        logits = self.model.forward(self.backend.to_device(xb))
        loss = self.loss_fn(logits, yb)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        if mean_rows is not None and mean_rows != rows:     # fp32 only: scaled after
            for g in self.grads:
                np.multiply(g, g.dtype.type(rows / mean_rows), out=g)
        return loss, self.loss_fn.correct(logits, yb)

    def apply_update(self, lr):
        self.optimizer.step(lr=float(lr))

    def run(self, order, first_batch, num_batches, lrs, sums):
        for i in range(num_batches):
            start = (first_batch + i) * self.batch_size
            index = order[start:start + self.batch_size]
            loss, correct = self.compute_gradients(index)
            if not gradients_finite(loss, self.grads):
                return i, False, loss
            self.apply_update(lrs[i])
            sums[0] += loss * index.shape[0]
            sums[1] += correct
        return num_batches, True, 0.0


def gradients_finite(loss, grads):
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
