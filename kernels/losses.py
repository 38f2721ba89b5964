"""Losses: softmax cross-entropy (mean over the batch) and mean squared error.

Versions:
    numpy   the references below
    numba   cross-entropy, its gradient, loss sum and accuracy in one parallel pass over
            the logits; MSE and its gradient as parallel loops

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
import math
import threading

import numpy as np
from numba import njit, prange

from . import _numba_config
from . import _numba_math as nm
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
    if pred.size == 0:
        raise ValueError("pred must not be empty")
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


# --- Numba ------------------------------------------------------------------------------
#
# Cross-entropy in one pass per row: max, sum of exp(x - max), then (with
# grad) grad_ij = (exp(x_ij - max) / sum - [j == label_i]) / B, and the row's loss
# log(sum) + max - x_i[label_i]; the row counts as correct when x_i[label_i] is its
# first maximum (as argmax). Rows are split into one band per thread; each band
# adds its loss (in float64) and correct count into its own slot, summed at the end.
# NumPy's error model: logits of inf or NaN give a NaN loss (and the training loop a clear
# TrainingDiverged), where Python's would raise ZeroDivisionError from inside the kernel.

@njit(fastmath=True, error_model="numpy", cache=True)
def _cross_entropy_rows(logits, labels, grad, with_grad, row_start, row_end, mean_rows):
    """(sum of the rows' losses, number of rows whose argmax is the label), plain stores;
    grad of the mean over ``mean_rows`` rows (kernels/mlp_step.py calls this for its
    batches)."""
    return _cross_entropy_band(logits, labels, grad, with_grad, row_start, row_end,
                               logits[0, :0], False, mean_rows)


@njit(fastmath=True, error_model="numpy", cache=True)
def _cross_entropy_band(logits, labels, grad, with_grad, row_start, row_end, e_row, stream,
                        mean_rows):
    """(sum of the rows' losses, number of rows whose argmax is the label); grad = the
    gradient of the sum over ``mean_rows`` (B below: the batch's rows, or more when these
    are one rank's share of a larger batch). With stream, exp(x - max) goes to the
    scratch row e_row (_numba_math.same_page_offset), grad rows are written by streaming
    stores and the rows ahead are prefetched."""
    batch = float(mean_rows)
    loss = 0.0
    correct = 0
    for i in range(row_start, row_end):
        row = logits[i]
        label = labels[i]
        top = nm.row_max(row)
        if with_grad:                       # keep exp(x - max) in grad (or e_row), scale it
            g = grad[i]
            e_buf = nm.same_page_offset(e_row, row) if stream else g
            ahead = nm.row_ahead(logits, i, row_end) if stream else row[:0]
            total = nm.exp_shifted_sum(row, top, e_buf, ahead)
            e_buf[label] -= total           # (e - sum) / (B sum) = p / B - 1 / B at the label
            # 1 / (B sum) rounded from float64: written as (1 / B) / total in float32,
            # LLVM multiplies each element by 1 / B and by 1 / total, which is slower
            nm.scale_row(g, e_buf, logits.dtype.type(1.0 / (batch * total)), stream)
        else:
            total = logits.dtype.type(0)
            for j in range(row.shape[0]):
                total += nm.exp_nonpositive(row[j] - top)
        loss += math.log(total) + top - row[label]
        if row[label] == top:               # argmax is the first maximum: no tie before label
            ties_before = 0
            for j in range(label):
                ties_before += row[j] == top
            correct += ties_before == 0
    if stream:
        nm.stream_fence()
    return loss, correct


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _cross_entropy_numba(logits, labels, grad, with_grad, scratch, stream, band_loss,
                         band_correct):
    bands = band_loss.shape[0]
    rows = logits.shape[0]
    for t in prange(bands):
        band_loss[t], band_correct[t] = _cross_entropy_band(
            logits, labels, grad, with_grad, t * rows // bands, (t + 1) * rows // bands,
            scratch[t], stream, rows)


@njit(parallel=True, fastmath=True, cache=True)
def _squared_error_numba(pred, target, band_sums):
    """band_sums[t] = sum over band t of (pred - target)^2, in float64 (pred is 1-D)."""
    bands = band_sums.shape[0]
    n = pred.shape[0]
    for t in prange(bands):
        band = slice(t * n // bands, (t + 1) * n // bands)
        p, y = pred[band], target[band]
        total = 0.0
        for i in range(p.shape[0]):         # from 0: a loop from a signed start does not
            d = np.float64(p[i]) - np.float64(y[i])   # vectorize (_numba_math.burst)
            total += d * d
        band_sums[t] = total


@njit(parallel=True, fastmath=True, cache=True)
def _mse_backward_numba(pred, target, scale, out):
    for i in prange(pred.shape[0]):
        out[i] = scale * (pred[i] - target[i])


class _Bands(threading.local):
    """Per Python thread: reused per-band accumulators (float64 sums, int64 counts)."""

    def get(self, bands):
        if getattr(self, "sums", None) is None or self.sums.shape[0] < bands:
            self.sums = np.empty(bands, np.float64)
            self.counts = np.empty(bands, np.int64)
        return self.sums[:bands], self.counts[:bands]


_BANDS = _Bands()
_NO_GRAD = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}  # never written
ROWS_PER_BAND = 16           # fewer rows per thread than this: fewer threads
ELEMENTS_PER_BAND = 1 << 14


def _bands(items, per_band):
    return max(1, min(_numba_config.get_threads(), items // per_band))


def softmax_cross_entropy_numba(logits, labels, grad_out=None):
    _check_logits(logits, labels)
    check_out(grad_out, logits.shape, logits.dtype, name="grad_out", inputs=(("logits", logits),))
    grad = np.empty_like(logits) if grad_out is None else grad_out
    sums, counts = _BANDS.get(_bands(logits.shape[0], ROWS_PER_BAND))
    stream = grad.nbytes >= nm.STREAM_MIN_BYTES and grad.flags.c_contiguous
    scratch = nm.scratch_rows(sums.shape[0], grad.shape[1] if stream else 0, grad.dtype)
    _numba_config.parallel_call(_cross_entropy_numba, logits, labels, grad, True, scratch,
                                stream, sums, counts)
    return float(sums.sum()) / logits.shape[0], grad, int(counts.sum())


def softmax_cross_entropy_forward_numba(logits, labels):
    _check_logits(logits, labels)
    sums, counts = _BANDS.get(_bands(logits.shape[0], ROWS_PER_BAND))
    no_scratch = np.empty((sums.shape[0], 0), logits.dtype)
    _numba_config.parallel_call(_cross_entropy_numba, logits, labels, _NO_GRAD[logits.dtype], False,
                                no_scratch, False, sums, counts)
    return float(sums.sum()) / logits.shape[0]


def _flat(a):
    """A 1-D view of a C-contiguous array (a copy otherwise)."""
    return np.ascontiguousarray(a).reshape(-1)


def mse_numba(pred, target):
    check_float_array(pred, "pred")
    check_same_shape(pred, "pred", target, "target")
    if pred.size == 0:
        raise ValueError("pred must not be empty")
    target = np.asarray(target, dtype=pred.dtype)
    sums, _ = _BANDS.get(_bands(pred.size, ELEMENTS_PER_BAND))
    _numba_config.parallel_call(_squared_error_numba, _flat(pred), _flat(target), sums)
    return float(sums.sum()) / pred.size


def mse_backward_numba(pred, target, out=None):
    check_float_array(pred, "pred")
    check_same_shape(pred, "pred", target, "target")
    if pred.size == 0:
        raise ValueError("pred must not be empty")
    check_out(out, pred.shape, pred.dtype, inputs=(("pred", pred), ("target", target)))
    if out is None:
        out = np.empty(pred.shape, dtype=pred.dtype)        # C order, whatever pred's order
    dst = out if out.flags.c_contiguous else np.empty(pred.shape, dtype=pred.dtype)
    target = np.asarray(target, dtype=pred.dtype)
    _numba_config.parallel_call(_mse_backward_numba, _flat(pred), _flat(target),
                                pred.dtype.type(2.0 / pred.size), dst.reshape(-1))
    if dst is not out:                                      # out is another view
        out[...] = dst
    return out


VARIANTS["numba"] = {
    "softmax_cross_entropy": softmax_cross_entropy_numba,
    "softmax_cross_entropy_forward": softmax_cross_entropy_forward_numba,
    "mse": mse_numba,
    "mse_backward": mse_backward_numba,
}

_numba_config.stamp_kernel_caches(globals())
