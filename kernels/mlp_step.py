"""One training step of an MLP as one compiled function (the "cpu" backend's fit loop).

The MLP is a chain of L Linear layers: layer l has weight W_l (out_l, in_l), a bias b_l
or none, and an activation f_l applied in its epilogue (identity, relu, sigmoid, tanh;
identity for the last layer, whose outputs are the logits). With h_0 = x[index]:

    forward    z_l = h_l @ W_l.T + b_l,  h_{l+1} = f_l(z_l)        C GEMM, bias + relu fused
    loss       loss = sum_i -log softmax(h_L)_i[y_i]               one pass per row, which
               dz_{L-1} = (softmax(h_L) - onehot(y)) / B           also gives the gradient
    backward   dW_l = dz_l.T @ h_l,  db_l = sum_i dz_l[i]           C GEMM, column sums
               dz_{l-1} = (dz_l @ W_l) * f'_{l-1}(h_l)   (l > 0)    C GEMM, f' in its epilogue
    check      the loss and sum(g^2) over every gradient are finite    (C, GEMM threads)

The optimizer step stays with the optimizer (one kernel over the flat parameter buffer).
Per step Python makes one call here instead of about twenty backend calls, each with its
argument checks: ``MLPTrainStep`` checks everything once, when it is built for a batch
size, and owns the activation and gradient buffers. The step is the same sequence of
kernels as the layer-by-layer engine (Sequential.forward / backward with the "cpu"
backend); tests/test_mlp_step.py checks that both give the same parameters.
"""
import math

import numpy as np
from numba import njit

from . import _c_calls
from . import _numba_math as nm
from ._checks import check_float_array
from .losses import _cross_entropy_rows

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")   # codes 0..3, as MLPF_DACT_* in C
IDENTITY, RELU, SIGMOID, TANH = range(4)
OK, NOT_FINITE, BAD_INDEX, BAD_LABEL, C_ERROR = range(5)    # status of _train_step

# every fast-math flag but "no NaN / no inf": the finiteness check must see them
_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _train_step(sgemm, sgemm_dact, sum_squares, gather, src_x, src_y, index, weights,
                biases, weight_grads, bias_grads, activations, hs, dzs, labels, flat_grad):
    """One forward + backward pass; returns (sum of the rows' losses, correct rows, status).

    sgemm, sgemm_dact, sum_squares, gather: addresses of the C functions (gather 0 when
    src_x is not float32); src_x (N, in_0), src_y (N,) int: the dataset; index (B,): its
    rows in this batch.
    weights[l] (out_l, in_l), biases[l] (out_l,) or empty, with their gradients;
    activations[l]: code of f_l; hs[l] (B, in_l) for l <= L (hs[L]: logits); dzs[l]
    (B, out_l); labels (B,) int64; flat_grad: every gradient (the views above share it).
    """
    rows = index.shape[0]
    classes = weights[len(weights) - 1].shape[0]
    for i in range(rows):                                   # gather the batch: labels,
        r = index[i]
        if r < 0 or r >= src_x.shape[0]:
            return 0.0, 0, BAD_INDEX
        if src_y[r] < 0 or src_y[r] >= classes:
            return 0.0, 0, BAD_LABEL
        labels[i] = src_y[r]
    x = hs[0]
    if gather:                                              # rows: float32 on the GEMM's
        _c_calls.gather(gather, src_x, index, x)            # threads (address, else 0),
    else:                                                   # or cast to float32 here
        for i in range(rows):
            source, row = src_x[index[i]], x[i]
            for j in range(row.shape[0]):
                row[j] = source[j]

    layers = len(weights)
    for l in range(layers):                                 # forward
        f = activations[l]
        if _c_calls.sgemm(sgemm, hs[l], weights[l], hs[l + 1], True, biases[l],
                          1 if f == RELU else 0) != 0:
            return 0.0, 0, C_ERROR
        h = hs[l + 1]
        if f == SIGMOID:
            for i in range(rows):
                for j in range(h.shape[1]):
                    h[i, j] = nm.sigmoid(h[i, j])
        elif f == TANH:
            for i in range(rows):
                for j in range(h.shape[1]):
                    h[i, j] = nm.tanh(h[i, j])

    loss, correct = _cross_entropy_rows(hs[layers], labels, dzs[layers - 1], True, 0, rows)

    for l in range(layers - 1, -1, -1):                     # backward
        dz = dzs[l]
        if _c_calls.sgemm_at(sgemm, dz, hs[l], weight_grads[l]) != 0:
            return 0.0, 0, C_ERROR
        db = bias_grads[l]
        if db.shape[0]:
            db[:] = 0
            for i in range(rows):
                for j in range(db.shape[0]):
                    db[j] += dz[i, j]
        if l == 0:
            break
        f_prev = activations[l - 1]
        if f_prev == IDENTITY:
            status = _c_calls.sgemm(sgemm, dz, weights[l], dzs[l - 1], False, biases[l][:0], 0)
        else:
            status = _c_calls.sgemm_dact(sgemm_dact, dz, weights[l], dzs[l - 1], hs[l], f_prev)
        if status != 0:
            return 0.0, 0, C_ERROR

    squares = _c_calls.sum_squares(sum_squares, flat_grad)  # NaN or inf if any gradient is
    if not (math.isfinite(loss) and math.isfinite(squares)):
        return loss, correct, NOT_FINITE
    return loss, correct, OK


class MLPTrainStep:
    """The compiled step of one MLP for batches of ``rows`` samples of (src_x, src_y).

    weights, biases (None for a layer without bias), weight_grads, bias_grads: per layer,
    float32 C-contiguous, in PyTorch's layout; activations: names from ACTIVATIONS (the
    last must be identity); flat_grad: the buffer every gradient is a view of. Calling
    it with the batch's row numbers runs the step and returns (mean loss, correct rows,
    finite): when not finite the gradients hold NaN or inf and nothing else changed.
    """

    def __init__(self, weights, biases, weight_grads, bias_grads, activations, flat_grad,
                 src_x, src_y, rows):
        self.rows = int(rows)
        if not weights:
            raise ValueError("an MLP needs at least one Linear layer")
        if activations[-1] != "identity":
            raise ValueError(f"the last layer must output logits (identity), got "
                             f"{activations[-1]!r}")
        empty = np.empty(0, np.float32)                    # the bias of a layer without
        biases_c, bias_grads_c = [], []
        sizes = [weights[0].shape[1]]
        for l, (w, b, gw, gb, f) in enumerate(zip(weights, biases, weight_grads, bias_grads,
                                                  activations)):
            if f not in ACTIVATIONS:
                raise ValueError(f"layer {l}: activation must be one of {ACTIVATIONS}, got {f!r}")
            for name, a, shape in ((f"weights[{l}]", w, (w.shape[0], sizes[-1])),
                                   (f"weight_grads[{l}]", gw, w.shape)):
                _check_float32_c(a, name, shape)
            if (b is None) != (gb is None):
                raise ValueError(f"layer {l}: a bias needs a bias gradient and vice versa")
            if b is not None:
                _check_float32_c(b, f"biases[{l}]", (w.shape[0],))
                _check_float32_c(gb, f"bias_grads[{l}]", (w.shape[0],))
            biases_c.append(empty if b is None else b)
            bias_grads_c.append(empty if gb is None else gb)
            sizes.append(w.shape[0])
        _check_float32_c(flat_grad, "flat_grad", (flat_grad.shape[0],))
        if not isinstance(src_x, np.ndarray) or src_x.ndim != 2 or src_x.shape[1] != sizes[0] \
                or src_x.dtype.kind not in "fiu" or not src_x.flags.c_contiguous:
            raise ValueError(f"src_x must be a C-contiguous numeric array (N, {sizes[0]}), got "
                             f"{getattr(src_x, 'dtype', type(src_x).__name__)} "
                             f"{getattr(src_x, 'shape', '')}")
        if not isinstance(src_y, np.ndarray) or src_y.dtype != np.int64 \
                or src_y.shape != src_x.shape[:1]:
            raise ValueError(f"src_y must be int64 labels of shape ({src_x.shape[0]},)")
        if self.rows < 1:
            raise ValueError(f"rows must be positive, got {rows}")
        self._weights, self._weight_grads = tuple(weights), tuple(weight_grads)
        self._biases, self._bias_grads = tuple(biases_c), tuple(bias_grads_c)
        self._codes = np.array([ACTIVATIONS.index(f) for f in activations], np.int64)
        self._hs = tuple(np.empty((self.rows, n), np.float32) for n in sizes)
        self._dzs = tuple(np.empty((self.rows, n), np.float32) for n in sizes[1:])
        self._labels = np.empty(self.rows, np.int64)
        self._flat_grad, self._src_x, self._src_y = flat_grad, src_x, src_y
        sgemm, sgemm_dact, sum_squares, gather = _c_calls.c_addresses()
        self._addresses = (sgemm, sgemm_dact, sum_squares,
                           gather if src_x.dtype == np.float32 else 0)

    @property
    def logits(self):
        """(rows, classes) logits of the last step."""
        return self._hs[-1]

    def __call__(self, index):
        if not isinstance(index, np.ndarray) or index.dtype != np.int64 \
                or index.shape != (self.rows,):
            raise ValueError(f"index must be int64 of shape ({self.rows},), got "
                             f"{getattr(index, 'dtype', type(index).__name__)} "
                             f"{getattr(index, 'shape', '')}")
        loss, correct, status = _train_step(
            *self._addresses, self._src_x, self._src_y, index, self._weights, self._biases,
            self._weight_grads, self._bias_grads, self._codes,
            self._hs, self._dzs, self._labels, self._flat_grad)
        if status == BAD_INDEX:
            raise ValueError(f"index must lie in [0, {self._src_x.shape[0]})")
        if status == BAD_LABEL:
            classes = self._weights[-1].shape[0]
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} outputs")
        if status == C_ERROR:
            raise RuntimeError("the C GEMM rejected a call of the compiled MLP step")
        return loss / self.rows, int(correct), status == OK


def _check_float32_c(a, name, shape):
    check_float_array(a, name)
    if a.dtype != np.float32 or tuple(a.shape) != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape {tuple(shape)}, "
                         f"got {a.dtype} {a.shape}")
