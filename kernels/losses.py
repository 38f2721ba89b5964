"""Losses: softmax cross-entropy (mean over the batch) and mean squared error.

Versions:
    numpy   the references below

``VARIANTS[variant]`` maps op names to functions:
    "softmax_cross_entropy"   f(logits, labels, grad_out=None) -> (loss, grad, correct)
        logits (B, C) float, labels (B,) int in [0, C).
        loss    = mean_i [ logsumexp(logits_i) - logits_i[labels_i] ]           (float)
        grad    = (softmax(logits) - onehot(labels)) / B                          (B, C)
        correct = number of rows whose argmax equals the label                    (int)
    "softmax_cross_entropy_forward"   f(logits, labels) -> loss   (no gradient)
    "mse"            f(pred, target) -> mean((pred - target)^2) over all elements
    "mse_backward"   f(pred, target, out=None) -> 2 (pred - target) / pred.size
logsumexp is computed as max + log(sum(exp(x - max))), so large logits never overflow.
"""
import numpy as np

from ._checks import check_float_array, check_labels, check_out, check_same_shape


def _check_logits(logits, labels):
    check_float_array(logits, "logits", 2)
    check_labels(labels, logits.shape[0], logits.shape[1])
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one row, got shape (0, ...)")


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy_forward_ref(logits, labels):
    _check_logits(logits, labels)
    log_p = _log_softmax(logits)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def softmax_cross_entropy_ref(logits, labels, grad_out=None):
    _check_logits(logits, labels)
    check_out(grad_out, logits.shape, logits.dtype, name="grad_out", inputs=(("logits", logits),))
    batch = logits.shape[0]
    rows = np.arange(batch)
    log_p = _log_softmax(logits)
    loss = float(-log_p[rows, labels].mean())
    grad = np.exp(log_p)
    grad[rows, labels] -= 1.0
    grad /= batch
    correct = int((logits.argmax(axis=1) == labels).sum())
    if grad_out is not None:
        grad_out[...] = grad
        grad = grad_out
    return loss, grad, correct


def mse_ref(pred, target):
    check_float_array(pred, "pred")
    check_same_shape(pred, "pred", target, "target")
    if pred.size == 0:
        raise ValueError("pred must not be empty")
    diff = pred.astype(np.float64) - target
    return float((diff * diff).mean())


def mse_backward_ref(pred, target, out=None):
    check_float_array(pred, "pred")
    check_same_shape(pred, "pred", target, "target")
    check_out(out, pred.shape, pred.dtype, inputs=(("pred", pred), ("target", target)))
    grad = (2.0 / pred.size) * (pred - target)
    if out is None:
        return grad.astype(pred.dtype)
    out[...] = grad
    return out


VARIANTS = {"numpy": {
    "softmax_cross_entropy": softmax_cross_entropy_ref,
    "softmax_cross_entropy_forward": softmax_cross_entropy_forward_ref,
    "mse": mse_ref,
    "mse_backward": mse_backward_ref,
}}
