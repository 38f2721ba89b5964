"""Training steps of an MLP as one compiled function: k batches per call (the cpu backend).

The MLP is a chain of L Linear layers: layer l has weight W_l (out_l, in_l), a bias b_l
or none, and an activation f_l (its MLPF_ACT_* code; identity for the last layer, whose
outputs are the predictions). Per batch, with the batch's rows of the dataset as h_0:

    forward    z_l = h_l @ W_l.T + b_l,  h_{l+1} = f_l(z_l)     C GEMM, relu in its epilogue;
                                                                 other f a pass (z_l kept when
                                                                 f' needs it: "input" below)
    loss       cross-entropy: sum_i -log softmax(h_L)_i[y_i],  dz_{L-1} = (softmax - onehot) / B
               MSE: mean over B x D of (h_L - t)^2,  dz_{L-1} = 2 (h_L - t) / (B D)
               (t: float targets, or integer labels read as one-hot)
    backward   dW_l = dz_l.T @ h_l,  db_l = sum_i dz_l[i]          C GEMM, column sums
               dz_{l-1} = (dz_l @ W_l) * f'_{l-1}                  C GEMM; f' in its epilogue
                                                                   when written with h_l
                                                                   ("output"), else a pass on z
    check      the loss and sum(g^2) over every gradient are finite   (C, GEMM threads)
    update     SGD or Adam/AdamW over the flat parameter buffer      (C, GEMM threads)

(activations.DERIVATIVE says which f' is written with the output.) Batch b of the call
takes the rows order[b B : (b + 1) B] of the dataset (the last batch of an epoch may be
shorter). A batch whose loss or gradients are not finite stops the call before its
update: the parameters and optimizer state hold the last good step.

``MLPSteps`` checks every array once, when it is built, and owns the activation and
gradient buffers of one batch size; ``run`` then costs one compiled call for k steps.
tests/test_mlp_step.py checks it against the NumPy reference of every formula above.
"""
import math

import numpy as np
from numba import njit
from numba.extending import overload

from . import _c_calls, _numba_config
from . import _numba_math as nm
from ._checks import check_float_array, check_mlp_step, check_optimizer_state
from .activations import DERIVATIVE, _gelu, _gelu_derivative, _gelu_tanh, \
    _gelu_tanh_derivative, c_code
from .losses import _cross_entropy_rows

ACTIVATIONS = tuple(name for name in DERIVATIVE if DERIVATIVE[name] != "row")
IDENTITY, RELU, SIGMOID, TANH, GELU, GELU_TANH, LEAKY_RELU = (
    c_code(name) for name in ("identity", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh",
                              "leaky_relu"))
CROSS_ENTROPY, MSE = 0, 1
SGD, ADAM = 0, 1
OK, NOT_FINITE, BAD_INDEX, BAD_LABEL, C_ERROR = range(5)    # status of a call
ADDRESSES = ("mlpf_sgemm", "mlpf_sgemm_dact", "mlpf_ssum_squares", "mlpf_sgather",
             "mlpf_sadam", "mlpf_ssgd")

# every fast-math flag but "no NaN / no inf": the finiteness check must see them
_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(fastmath=_FASTMATH, cache=True)
def _activate(code, slope, z, out):
    """out = f(z) elementwise (out may be z) for f of code SIGMOID, TANH, GELU, GELU_TANH
    or LEAKY_RELU (the others are applied by the GEMM)."""
    for i in range(z.shape[0]):
        zi, oi = z[i], out[i]
        for j in range(zi.shape[0]):
            v = zi[j]
            if code == SIGMOID:
                oi[j] = nm.sigmoid(v)
            elif code == TANH:
                oi[j] = nm.tanh(v)
            elif code == GELU:
                oi[j] = _gelu(v)
            elif code == GELU_TANH:
                oi[j] = _gelu_tanh(v)
            else:
                oi[j] = v if v > 0 else slope * v


@njit(fastmath=_FASTMATH, cache=True)
def _times_derivative(code, slope, z, dz):
    """dz *= f'(z) elementwise for f of code GELU, GELU_TANH or LEAKY_RELU (f' needs z)."""
    for i in range(z.shape[0]):
        zi, gi = z[i], dz[i]
        for j in range(zi.shape[0]):
            v = zi[j]
            if code == GELU:
                gi[j] *= _gelu_derivative(v)
            elif code == GELU_TANH:
                gi[j] *= _gelu_tanh_derivative(v)
            elif v <= 0:
                gi[j] *= slope


def _take_target(src_y, r, y, i, classes):
    """y[i] = src_y[r]; labels (1-D) must lie in [0, classes): the status OK or BAD_LABEL."""


@overload(_take_target, jit_options={"cache": True})
def _take_target_impl(src_y, r, y, i, classes):
    if src_y.ndim == 1:
        def take_label(src_y, r, y, i, classes):
            if src_y[r] < 0 or src_y[r] >= classes:
                return BAD_LABEL
            y[i] = src_y[r]
            return OK
        return take_label

    def take_row(src_y, r, y, i, classes):
        y[i, :] = src_y[r, :]
        return OK
    return take_row


def _batch_loss(loss_kind, pred, y, grad):
    """(the batch's summed loss, rows whose argmax is the label); writes dL/dpred into grad.
    Labels (1-D y) take cross-entropy or MSE against one-hot; targets (2-D y) MSE."""


@overload(_batch_loss, jit_options={"cache": True})
def _batch_loss_impl(loss_kind, pred, y, grad):
    if y.ndim == 1:
        def labels_loss(loss_kind, pred, y, grad):
            if loss_kind == CROSS_ENTROPY:
                return _cross_entropy_rows(pred, y, grad, True, 0, pred.shape[0])
            return _squared_error_rows(pred, y, grad)
        return labels_loss
    return lambda loss_kind, pred, y, grad: _squared_error_rows(pred, y, grad)


def _target_at(target, i, j):
    """t[i, j]: target[i, j] for float targets, [j == target[i]] for labels (one-hot)."""


@overload(_target_at, jit_options={"cache": True})
def _target_at_impl(target, i, j):
    if target.ndim == 1:
        return lambda target, i, j: 1.0 if j == target[i] else 0.0
    return lambda target, i, j: target[i, j]


def _hit(pred_row, target, i):
    """1 when labels (1-D target) hold argmax(pred_row) at i, else 0 (also for targets)."""


@overload(_hit, jit_options={"cache": True})
def _hit_impl(pred_row, target, i):
    if target.ndim == 1:
        return lambda pred_row, target, i: 1 if np.argmax(pred_row) == target[i] else 0
    return lambda pred_row, target, i: 0


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _squared_error_rows(pred, target, grad):
    """(sum over the batch of sum_j (pred - t)^2 / D, rows whose argmax is the label, 0 for
    float targets); grad = 2 (pred - t) / (B D)."""
    rows, cols = pred.shape
    scale = pred.dtype.type(2.0 / (rows * cols))
    total = 0.0
    correct = 0
    for i in range(rows):
        p, g = pred[i], grad[i]
        for j in range(cols):
            d = p[j] - pred.dtype.type(_target_at(target, i, j))
            g[j] = scale * d
            total += np.float64(d) * np.float64(d)
        correct += _hit(p, target, i)
    return total / cols, correct


@njit(fastmath=_FASTMATH, cache=True)
def _gather_batch(addresses, src_x, src_y, rows_index, x, y, classes):
    """x, y = the rows of the batch (cast to float32); the status (BAD_INDEX, BAD_LABEL)."""
    for i in range(rows_index.shape[0]):
        r = rows_index[i]
        if r < 0 or r >= src_x.shape[0]:
            return BAD_INDEX
        if _take_target(src_y, r, y, i, classes) != OK:
            return BAD_LABEL
    if addresses[3]:                                         # float32 rows: on C's threads
        _c_calls.gather(addresses[3], src_x, rows_index, x)
    else:
        for i in range(rows_index.shape[0]):
            source, row = src_x[rows_index[i]], x[i]
            for j in range(row.shape[0]):
                row[j] = source[j]
    return OK


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _forward(addresses, net, hs, zs, rows):
    """hs[l + 1] = f_l(hs[l] @ W_l.T + b_l) for every layer; zs[l] keeps z_l where needed."""
    weights, biases, codes, slopes = net[0], net[1], net[4], net[5]
    for l in range(len(weights)):
        f = codes[l]
        keep_z = zs[l].shape[1] > 0
        z = zs[l][:rows] if keep_z else hs[l + 1][:rows]
        if _c_calls.sgemm(addresses[0], hs[l][:rows], weights[l], z, True, biases[l],
                          RELU if f == RELU else IDENTITY) != 0:
            return C_ERROR
        if f != IDENTITY and f != RELU:
            _activate(f, slopes[l], z, hs[l + 1][:rows])
    return OK


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _backward(addresses, net, hs, zs, dzs, rows):
    """dW_l, db_l for every layer from dzs[L - 1]; dz_{l-1} through the layers."""
    weights, biases, weight_grads, bias_grads, codes, slopes = net
    for l in range(len(weights) - 1, -1, -1):
        dz = dzs[l][:rows]
        if _c_calls.sgemm_at(addresses[0], dz, hs[l][:rows], weight_grads[l]) != 0:
            return C_ERROR
        db = bias_grads[l]
        if db.shape[0]:
            db[:] = 0
            for i in range(rows):
                for j in range(db.shape[0]):
                    db[j] += dz[i, j]
        if l == 0:
            break
        f = codes[l - 1]
        below = dzs[l - 1][:rows]
        if f == RELU or f == SIGMOID or f == TANH:           # f' from h_l, in the epilogue
            status = _c_calls.sgemm_dact(addresses[1], dz, weights[l], below, hs[l][:rows], f)
        else:
            status = _c_calls.sgemm(addresses[0], dz, weights[l], below, False,
                                    biases[l][:0], IDENTITY)
            if status == 0 and f != IDENTITY:
                _times_derivative(f, slopes[l - 1], zs[l - 1][:rows], below)
        if status != 0:
            return C_ERROR
    return OK


@njit(fastmath=_FASTMATH, cache=True)
def _update(addresses, optimizer, hyper, flat_data, flat_grad, state, lr, t):
    """One optimizer step number t (from 1) with learning rate lr. hyper: SGD (momentum,
    nesterov, weight_decay); Adam (beta1, beta2, eps, weight_decay, decoupled)."""
    if optimizer == SGD:
        return _c_calls.sgd(addresses[5], flat_data, flat_grad, state[0], lr, hyper[0],
                            hyper[1] != 0, hyper[2], t == 1)
    beta1, beta2, eps, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    decoupled = hyper[4] != 0
    return _c_calls.adam(addresses[4], flat_data, flat_grad, state[0], state[1],
                         lr / (1.0 - beta1 ** t), beta1, beta2,
                         1.0 / math.sqrt(1.0 - beta2 ** t), eps,
                         0.0 if decoupled else weight_decay,
                         1.0 - lr * weight_decay if decoupled else 1.0)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _gradients(addresses, src_x, src_y, net, buffers, loss_kind, rows_index):
    """Gather the rows, forward, loss, backward: (the batch's summed loss, correct rows,
    status); the gradients are left in net's gradient arrays."""
    hs, zs, dzs, y = buffers
    layers = len(net[0])
    rows = rows_index.shape[0]
    status = _gather_batch(addresses, src_x, src_y, rows_index, hs[0][:rows], y[:rows],
                           hs[layers].shape[1])
    if status == OK:
        status = _forward(addresses, net, hs, zs, rows)
    if status != OK:
        return 0.0, 0, status
    loss, correct = _batch_loss(loss_kind, hs[layers][:rows], y[:rows], dzs[layers - 1][:rows])
    return loss, correct, _backward(addresses, net, hs, zs, dzs, rows)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _train_steps(addresses, src_x, src_y, net, buffers, loss_kind, optimizer, hyper, flat,
                 state, order, first_batch, num_batches, lrs, first_step, sums):
    """Steps first_batch .. first_batch + num_batches - 1 of an epoch whose row order is
    ``order``; returns (steps applied, status, mean loss of the failing batch).
    net = (weights, biases, weight_grads, bias_grads, codes, slopes); buffers = (hs, zs,
    dzs, y): per layer h_l (B, in_l) and hs[L] the predictions, z_l (B, out_l) or (B, 0),
    dz_l (B, out_l), y the batch's labels or targets; flat = (data, grad); sums[0] += each
    batch's summed loss, sums[1] += its correct rows."""
    batch_size = buffers[0][0].shape[0]
    for s in range(num_batches):
        start = (first_batch + s) * batch_size
        rows_index = order[start:min(start + batch_size, order.shape[0])]
        loss, correct, status = _gradients(addresses, src_x, src_y, net, buffers, loss_kind,
                                           rows_index)
        if status != OK:
            return s, status, 0.0
        squares = _c_calls.sum_squares(addresses[2], flat[1])   # NaN or inf if any g is
        if not (math.isfinite(loss) and math.isfinite(squares)):
            return s, NOT_FINITE, loss / rows_index.shape[0]
        if _update(addresses, optimizer, hyper, flat[0], flat[1], state, lrs[s],
                   first_step + s + 1) != 0:
            return s, C_ERROR, 0.0
        sums[0] += loss
        sums[1] += correct
    return num_batches, OK, 0.0


class MLPSteps:
    """Compiled training steps of one MLP on the dataset (src_x, src_y), batch_size rows.

    weights, biases (None for a layer without bias), weight_grads, bias_grads: per layer,
    float32 C-contiguous, in PyTorch's layout, views of flat_data / flat_grad (the
    buffers the optimizer updates); activations: per layer a name from ACTIVATIONS (the
    last must be identity); slopes: per layer leaky_relu's negative slope (or 0).
    src_x (N, in_0) numeric, C-contiguous; src_y (N,) int64 labels, or (N, out_L) float32
    targets for loss "mse". loss: "cross_entropy" or "mse". optimizer: "sgd" with hyper
    (momentum, nesterov, weight_decay) and state (momentum_buffer,), or "adam" with hyper
    (beta1, beta2, eps, weight_decay, decoupled) and state (exp_avg, exp_avg_sq), flat
    float32 arrays like flat_data.
    """

    def __init__(self, layers, flat_data, flat_grad, src_x, src_y, batch_size, loss,
                 optimizer, hyper, state):
        weights, biases, weight_grads, bias_grads, activations, slopes = layers
        self.batch_size, sizes = check_mlp_step(layers, flat_data, flat_grad, batch_size,
                                                ACTIVATIONS, _check_float32_c)
        _check_source(src_x, src_y, sizes, loss)
        state = check_optimizer_state(optimizer, hyper, state, flat_data, _check_float32_c)
        self._optimizer = SGD if optimizer == "sgd" else ADAM
        self._state = (state[0], state[-1])                  # always a pair
        self._hyper = np.array(hyper, np.float64)
        self._loss = {"cross_entropy": CROSS_ENTROPY, "mse": MSE}[loss]
        empty = np.empty(0, np.float32)
        codes = np.array([c_code(f) for f in activations], np.int64)
        self._net = (tuple(weights), tuple(empty if b is None else b for b in biases),
                     tuple(weight_grads), tuple(empty if g is None else g for g in bias_grads),
                     codes, np.array(slopes, np.float32))
        rows = self.batch_size
        keep_z = [DERIVATIVE[f] == "input" for f in activations]
        self._buffers = (tuple(np.empty((rows, n), np.float32) for n in sizes),
                         tuple(np.empty((rows, n if keep else 0), np.float32)
                               for n, keep in zip(sizes[1:], keep_z)),
                         tuple(np.empty((rows, n), np.float32) for n in sizes[1:]),
                         np.empty((rows,) + src_y.shape[1:], src_y.dtype))
        self._flat, self._src = (flat_data, flat_grad), (src_x, src_y)
        found = _c_calls.c_addresses()
        self._addresses = np.array([found[name] for name in ADDRESSES], np.int64)
        if src_x.dtype != np.float32:
            self._addresses[3] = 0                           # gather: Numba casts the rows

    @property
    def predictions(self):
        """(batch_size, out_L): the predictions (logits) of the last batch (its rows first)."""
        return self._buffers[0][-1]

    def run(self, order, first_batch, num_batches, lrs, first_step, sums):
        """Steps first_batch .. first_batch + num_batches - 1 of the epoch ordered by
        ``order`` (int64, the dataset's row numbers), step t = first_step + 1, ... with
        learning rates ``lrs`` (float64, one per step). Adds each applied batch's summed
        loss and correct rows to ``sums`` (float64 [2]). Returns (steps applied, finite,
        mean loss of the failing batch): finite is False when a batch's loss or gradients
        were NaN or inf (nothing of that batch was applied)."""
        if not isinstance(order, np.ndarray) or order.dtype != np.int64 or order.ndim != 1:
            raise ValueError("order must be a 1-D int64 array of row numbers")
        lrs = np.ascontiguousarray(lrs, np.float64)
        if lrs.shape != (num_batches,) or first_batch < 0 or num_batches < 1 or \
                (first_batch + num_batches - 1) * self.batch_size >= order.shape[0]:
            raise ValueError(f"lrs must hold one rate per step ({num_batches}) and the "
                             f"batches must lie in order ({order.shape[0]} rows)")
        if not isinstance(sums, np.ndarray) or sums.dtype != np.float64 or sums.shape != (2,):
            raise ValueError("sums must be a float64 array of shape (2,)")
        steps, status, loss = _train_steps(
            self._addresses, *self._src, self._net, self._buffers, self._loss,
            self._optimizer, self._hyper, self._flat, self._state, order, first_batch,
            num_batches, lrs, first_step, sums)
        self._raise_for(status)
        return steps, status == OK, loss

    def gradients(self, rows_index):
        """Forward, loss and backward on the dataset rows ``rows_index`` (int64, at most
        batch_size): (summed loss, correct rows); the gradients are left in flat_grad and
        nothing is updated (the first half of a step, for data parallelism)."""
        if not isinstance(rows_index, np.ndarray) or rows_index.dtype != np.int64 or \
                rows_index.ndim != 1 or not 0 < rows_index.shape[0] <= self.batch_size:
            raise ValueError(f"rows_index must be 1-D int64 with 1 to {self.batch_size} rows")
        loss, correct, status = _gradients(self._addresses, *self._src, self._net,
                                           self._buffers, self._loss, rows_index)
        self._raise_for(status)
        return loss, int(correct)

    def update(self, lr, step):
        """The optimizer's update number ``step`` (from 1) with the gradients in flat_grad."""
        if _update(self._addresses, self._optimizer, self._hyper, *self._flat, self._state,
                   float(lr), int(step)) != 0:
            self._raise_for(C_ERROR)

    def _raise_for(self, status):
        if status == BAD_INDEX:
            raise ValueError(f"order must hold row numbers in [0, {self._src[0].shape[0]})")
        if status == BAD_LABEL:
            classes = self._net[0][-1].shape[0]
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} outputs")
        if status == C_ERROR:
            raise RuntimeError("the C library rejected a call of the compiled MLP step")


def _check_source(src_x, src_y, sizes, loss):
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    if not isinstance(src_x, np.ndarray) or src_x.ndim != 2 or src_x.shape[1] != sizes[0] \
            or src_x.dtype.kind not in "fiu" or not src_x.flags.c_contiguous:
        raise ValueError(f"src_x must be a C-contiguous numeric array (N, {sizes[0]}), got "
                         f"{getattr(src_x, 'dtype', type(src_x).__name__)} "
                         f"{getattr(src_x, 'shape', '')}")
    labels = isinstance(src_y, np.ndarray) and src_y.dtype == np.int64 \
        and src_y.shape == src_x.shape[:1]
    targets = loss == "mse" and isinstance(src_y, np.ndarray) and src_y.dtype == np.float32 \
        and src_y.shape == (src_x.shape[0], sizes[-1]) and src_y.flags.c_contiguous
    if not (labels or targets):
        raise ValueError(f"src_y must be int64 labels of shape ({src_x.shape[0]},)"
                         + (f" or C-contiguous float32 targets of shape "
                            f"({src_x.shape[0]}, {sizes[-1]})" if loss == "mse" else ""))


def _check_float32_c(a, name, shape):
    check_float_array(a, name)
    if a.dtype != np.float32 or tuple(a.shape) != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape {tuple(shape)}, "
                         f"got {a.dtype} {a.shape}")


_numba_config.stamp_kernel_caches(globals())
