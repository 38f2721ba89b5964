"""Losses with explicit forward and backward.

CrossEntropyLoss: forward(logits (B, C), labels (B,) int) -> mean_i -log softmax(logits_i)[y_i],
    computed together with its gradient in one fused kernel; backward() -> dL/dlogits (B, C).
MSELoss: forward(pred (B, D), target (B, D) float, or (B,) int labels read as one-hot)
    -> mean over all elements of (pred - target)^2; backward() -> 2 (pred - target) / (B*D).

The kernels come from ``backend`` (default: the backend of the model that ``fit`` trains,
or for NumPy arrays the fastest CPU backend). ``backward`` returns a buffer that the next
``forward`` overwrites.
"""
import copy

import numpy as np

from .backend import get_backend


def check_labels(labels, batch, num_classes, name="labels"):
    """labels as int64 of shape (batch,) in [0, num_classes), or a clear error."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {labels.shape}")
    if batch and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{name} must lie in [0, {num_classes}) for {num_classes} classes, "
                         f"found {bad}")
    return labels.astype(np.int64, copy=False)


def check_prediction(array, name, columns):
    """A 2-D (batch, ``columns``) float32/float64 array of any backend, or an array-like (a
    list) as a NumPy array; else a TypeError/ValueError naming ``name``."""
    if not hasattr(array, "ndim"):
        array = np.asarray(array)
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must hold float32 or float64 values, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, {columns}), got shape {array.shape}")
    return array


class Loss:
    def __init__(self, backend=None):
        self.backend = None if backend is None else get_backend(backend)
        self._grad = None
        self._grad_buffer = None

    def _backend_for(self, array):
        if self.backend is not None:
            return self.backend
        if not isinstance(array, np.ndarray):
            return get_backend("cuda")
        auto = get_backend("auto")
        return auto if auto.device == "cpu" else get_backend("numpy")

    def _grad_out(self, backend, shape, dtype):
        buf = self._grad_buffer
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._grad_buffer = backend.empty(shape, dtype=dtype)
        return buf

    def __call__(self, *args):
        return self.forward(*args)

    def on_backend(self, backend):
        """A copy of this loss that runs on ``backend`` (the caller's stays as it is)."""
        twin = copy.copy(self)
        twin.backend, twin._grad, twin._grad_buffer = get_backend(backend), None, None
        return twin

    def compiled_kind(self):
        """"cross_entropy" or "mse" when this is the library's loss itself, which a backend
        may run inside a compiled step; None for a subclass (it may change the formulas)."""
        return {CrossEntropyLoss: "cross_entropy", MSELoss: "mse"}.get(type(self))

    def backward(self):
        """dL/d(prediction) of the last forward."""
        if self._grad is None:
            raise RuntimeError("call forward() before backward()")
        return self._grad

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax + negative log-likelihood, mean over the batch (torch.nn.CrossEntropyLoss)."""

    def __init__(self, backend=None):
        super().__init__(backend)
        self.last_correct = 0      # rows of the last batch whose argmax equals the label

    def forward(self, logits, labels):
        logits = check_prediction(logits, "logits", "classes")
        labels = check_labels(labels, logits.shape[0], logits.shape[1])
        be = self._backend_for(logits)
        grad = self._grad_out(be, logits.shape, logits.dtype)
        loss, self._grad, self.last_correct = be.softmax_cross_entropy(logits, labels, grad)
        return loss

    def correct(self, logits, labels):
        """Rows of the last forward(logits, labels) whose argmax is the label."""
        return self.last_correct

    def value(self, logits, labels):
        """The loss alone, without computing or storing the gradient."""
        logits = check_prediction(logits, "logits", "classes")
        labels = check_labels(labels, logits.shape[0], logits.shape[1])
        return self._backend_for(logits).softmax_cross_entropy_forward(logits, labels)


class MSELoss(Loss):
    """Mean squared error over all elements (torch.nn.MSELoss(reduction='mean'))."""

    def _target(self, pred, target):
        target = np.asarray(target)
        if target.dtype.kind in "iu" and target.ndim == 1:
            labels = check_labels(target, pred.shape[0], pred.shape[1], "target")
            target = np.zeros(pred.shape, dtype=pred.dtype)
            target[np.arange(len(labels)), labels] = 1
        if target.shape != pred.shape:
            raise ValueError(f"target must have the shape of pred {pred.shape}, "
                             f"got {target.shape}")
        return self._backend_for(pred).to_device(np.ascontiguousarray(target, dtype=pred.dtype))

    def forward(self, pred, target):
        pred = check_prediction(pred, "pred", "outputs")
        target = self._target(pred, target)
        be = self._backend_for(pred)
        self._grad = be.mse_backward(pred, target, self._grad_out(be, pred.shape, pred.dtype))
        return be.mse(pred, target)

    def value(self, pred, target):
        """The loss alone, without computing or storing the gradient."""
        pred = check_prediction(pred, "pred", "outputs")
        return self._backend_for(pred).mse(pred, self._target(pred, target))

    def correct(self, pred, target):
        """Rows whose argmax is the label for integer labels (0 for float targets)."""
        target = np.asarray(target)
        if target.ndim != 1:
            return 0
        return int((self._backend_for(pred).to_numpy(pred).argmax(axis=1) == target).sum())
