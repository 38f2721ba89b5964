"""Training steps of an MLP as one compiled function: k batches per call (the cpu backend).

The MLP is a chain of L Linear layers: layer l has weight W_l (out_l, in_l), a bias b_l
or none, and an activation f_l (its MLPF_ACT_* code; identity for the last layer, whose
outputs are the predictions). Per batch, with the batch's rows of the dataset as h_0:

    forward    z_l = h_l @ W_l.T + b_l,  h_{l+1} = f_l(z_l)     C GEMM, relu in its epilogue;
                                                                 other f a pass (z_l kept when
                                                                 f' needs it: "input" below)
    dropout    h = keep h / (1 - p), keep the Philox mask of kernels/dropout.py
               (C, GEMM threads; kept for the backward pass, not for the inputs)
    loss       cross-entropy: mean over B of -log softmax(h_L)_i[y_i],
                                             dz_{L-1} = (softmax - onehot) / B
               MSE: mean over B x D of (h_L - t)^2,  dz_{L-1} = 2 (h_L - t) / (B D)
               (t: float targets, or integer labels read as one-hot)
    backward   dW_l = dz_l.T @ h_l,  db_l = sum_i dz_l[i]          C GEMM, column sums
               dz_{l-1} = (dz_l @ W_l) * f'_{l-1}                  C GEMM; f' in its epilogue
                                                                   when written with h_l
                                                                   ("output"), else a pass on z
               (fp32, at most 16 outputs and f' from h_l: all three in one C pass over h_l)
    check      the loss and sum(g^2) over every gradient are finite   (C, GEMM threads)
    update     SGD or Adam/AdamW over the flat parameter buffer      (C, GEMM threads)

In bf16 precision every GEMM above takes bf16 operands (rounded to nearest, ties to even)
and sums their products in float32 (mlpf_sbgemm): the weights are rounded while packed
(the same bits as a bf16 copy made once per step), the batch's inputs and each hidden h_l
are stored as bf16 (written by the GEMM's relu/identity epilogue, or by a rounding pass
after batchnorm, other activations and dropout, which run in float32 on z), dz_l is
rounded while packed. Loss, f', gradients, their check and the update stay float32.

(activations.DERIVATIVE says which f' is written with the output.) Batch b of the call
takes the rows order[b B : (b + 1) B] of the dataset (the last batch of an epoch may be
shorter). A batch whose loss or gradients are not finite stops the call before its
update: the parameters and optimizer state hold the last good step.

``MLPSteps`` checks every array once, when it is built, and owns the activation and
gradient buffers of one batch size; ``run`` then costs one compiled call for k steps.
tests/test_mlp_step.py checks it against the NumPy reference of every formula above.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.extending import overload

from . import _c_calls, _numba_config
from ._c_library import c_library
from . import _numba_math as nm
from ._checks import check_float_array, check_mlp_step, check_optimizer_state
from .cpu_config import CONFIGS
from .activations import DERIVATIVE, _gelu, _gelu_derivative, _gelu_tanh, \
    _gelu_tanh_derivative, c_code
from .dropout import scale_for as dropout_scale, stream as dropout_stream
from .losses import _cross_entropy_rows
from .optim import renorm_row

ACTIVATIONS = tuple(name for name in DERIVATIVE if DERIVATIVE[name] != "row")
IDENTITY, RELU, SIGMOID, TANH, GELU, GELU_TANH, LEAKY_RELU = (
    c_code(name) for name in ("identity", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh",
                              "leaky_relu"))
CROSS_ENTROPY, MSE = 0, 1
SGD, ADAM = 0, 1
OK, NOT_FINITE, BAD_INDEX, BAD_LABEL, C_ERROR, BAD_BATCH = range(6)    # status of a call
PRECISIONS = ("fp32", "bf16")

ONE, ZERO = np.float32(1), np.float32(0)       # the compiled steps compute in float32
NARROW_N = 16           # csrc/gemm.h's MLPF_NARROW_N: the most outputs of a narrow layer

# every fast-math flag but "no NaN / no inf": the finiteness check must see them
_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _activation(code, slope, v):
    """f(v) for the activation of ``code`` (leaky_relu's negative slope ``slope``)."""
    if code == RELU:
        return max(v, ZERO)
    if code == SIGMOID:
        return nm.sigmoid(v)
    if code == TANH:
        return nm.tanh(v)
    if code == GELU:
        return _gelu(v)
    if code == GELU_TANH:
        return _gelu_tanh(v)
    if code == LEAKY_RELU:
        return v if v > 0 else slope * v
    return v


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _derivative(code, slope, v):
    """f'(v), written with the input v, for the activation of ``code``."""
    if code == RELU:
        return ONE if v > 0 else ZERO
    if code == SIGMOID:
        y = nm.sigmoid(v)
        return y * (ONE - y)
    if code == TANH:
        t = nm.tanh(v)
        return ONE - t * t
    if code == GELU:
        return _gelu_derivative(v)
    if code == GELU_TANH:
        return _gelu_tanh_derivative(v)
    if code == LEAKY_RELU:
        return ONE if v > 0 else slope
    return ONE


@njit(fastmath=_FASTMATH, cache=True)
def _activate(code, slope, z, out):
    """out = f(z) elementwise (out may be z)."""
    for i in range(z.shape[0]):
        zi, oi = z[i], out[i]
        for j in range(zi.shape[0]):
            oi[j] = _activation(code, slope, zi[j])


@njit(fastmath=_FASTMATH, cache=True)
def _times_derivative(code, slope, z, dz):
    """dz *= f'(z) elementwise (relu in a loop of its own, which the compiler vectorizes)."""
    for i in range(z.shape[0]):
        zi, gi = z[i], dz[i]
        if code == RELU:
            for j in range(zi.shape[0]):
                gi[j] *= ONE if zi[j] > 0 else ZERO
        else:
            for j in range(zi.shape[0]):
                gi[j] *= _derivative(code, slope, zi[j])


@njit(fastmath=_FASTMATH, cache=True)
def _round_to_bf16(x, out):
    """out (uint16) = x (float32) rounded to bf16: to nearest, ties to even; NaN stays NaN."""
    for i in range(x.shape[0]):
        xi, oi = x[i], out[i]
        for j in range(xi.shape[0]):
            bits = np.float32(xi[j]).view(np.uint32)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
                >> np.uint32(16)
            oi[j] = np.uint16(rounded if xi[j] == xi[j] else (bits >> np.uint32(16)) | 0x40)


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


def _batch_loss(loss_kind, pred, y, grad, mean_rows):
    """(the batch's summed loss, rows whose argmax is the label); writes dL/dpred into grad,
    L the loss summed over the rows / mean_rows (the batch's rows, or the whole batch's
    when these are one rank's share). Labels (1-D y) take cross-entropy or MSE against
    one-hot; targets (2-D y) MSE."""


@overload(_batch_loss, jit_options={"cache": True})
def _batch_loss_impl(loss_kind, pred, y, grad, mean_rows):
    if y.ndim == 1:
        def labels_loss(loss_kind, pred, y, grad, mean_rows):
            if loss_kind == CROSS_ENTROPY:
                return _cross_entropy_rows(pred, y, grad, True, 0, pred.shape[0], mean_rows)
            return _squared_error_rows(pred, y, grad, mean_rows)
        return labels_loss
    return lambda loss_kind, pred, y, grad, mean_rows: _squared_error_rows(pred, y, grad,
                                                                           mean_rows)


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
def _squared_error_rows(pred, target, grad, mean_rows):
    """(sum over the batch of sum_j (pred - t)^2 / D, rows whose argmax is the label, 0 for
    float targets); grad = 2 (pred - t) / (B D), B = mean_rows."""
    rows, cols = pred.shape
    scale = pred.dtype.type(2.0 / (mean_rows * cols))
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
def _gather_batch(addresses, src_x, src_y, rows_index, x, y, classes, packed_x):
    """x, y = the rows of the batch (cast to float32); the status (BAD_INDEX, BAD_LABEL).
    With packed_x (not empty) the rows go there, packed for the first layer's GEMMs, and
    x is not written."""
    for i in range(rows_index.shape[0]):
        r = rows_index[i]
        if r < 0 or r >= src_x.shape[0]:
            return BAD_INDEX
        if _take_target(src_y, r, y, i, classes) != OK:
            return BAD_LABEL
    if packed_x.shape[0]:
        if _c_calls.gather_packed(addresses[10], src_x, rows_index, packed_x) != 0:
            return C_ERROR
    elif addresses[3]:                                       # float32 rows: on C's threads
        _c_calls.gather(addresses[3], src_x, rows_index, x)
    else:
        for i in range(rows_index.shape[0]):
            source, row = src_x[rows_index[i]], x[i]
            for j in range(row.shape[0]):
                row[j] = source[j]
    return OK


@njit(cache=True)
def _dropout(addresses, x, drop, scale, step, keep, out):
    """out = keep x scale (out may be x), scale = 1 / (1 - p), on the C GEMM's threads;
    keep stored when it has x's shape. drop = (threshold, key lo, key hi, layer, step base,
    present): the mask of kernels/dropout.py (Philox, element i = r F + c, at step base +
    step). Returns the C status."""
    return _c_calls.dropout(addresses[8], x, out, keep, drop, drop[4] + np.uint64(step), scale)


@njit(fastmath=_FASTMATH, cache=True)
def _column_sums(x, y, sums):
    """sums[0] = sum_i x[i], sums[1] = sum_i x[i] y[i] over the rows (float64), row by row
    so that the inner loop runs along contiguous memory."""
    sums[:2] = 0.0
    first, second = sums[0], sums[1]
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        for j in range(xi.shape[0]):
            first[j] += xi[j]
            second[j] += np.float64(xi[j]) * yi[j]


@njit(fastmath=_FASTMATH, cache=True)
def _batchnorm(z, gamma, beta, stats, sums, zhat, u, running_mean, running_var, eps,
               momentum):
    """Training-mode BatchNorm1d of z (B, F): batch mean and biased variance (float64
    sums of z and of (z - mean)^2), zhat = (z - mean) invstd, u = gamma zhat + beta
    (affine when gamma is not empty); stats = [mean, invstd]; running statistics move by
    momentum (the unbiased variance), as torch.nn.BatchNorm1d. sums: float64 (3, F)."""
    rows, cols = z.shape
    mean = sums[0]
    mean[:] = 0.0
    for i in range(rows):
        zi = z[i]
        for j in range(cols):
            mean[j] += zi[j]
    mean /= rows
    var = sums[1]
    var[:] = 0.0
    for i in range(rows):
        zi = z[i]
        for j in range(cols):
            d = zi[j] - mean[j]
            var[j] += d * d
    var /= rows
    for j in range(cols):
        stats[0, j], stats[1, j] = mean[j], 1.0 / math.sqrt(var[j] + eps)
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean[j]
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * var[j] * rows / (rows - 1)
    affine = gamma.shape[0] > 0
    m, s = stats[0], stats[1]
    for i in range(rows):
        zi, hi, ui = z[i], zhat[i], u[i]
        for j in range(cols):
            v = (zi[j] - m[j]) * s[j]
            hi[j] = v
            ui[j] = gamma[j] * v + beta[j] if affine else v


@njit(fastmath=_FASTMATH, cache=True)
def _batchnorm_backward(du, zhat, stats, sums, gamma, gamma_grad, beta_grad, dz):
    """From du = dL/du (B, F): gamma_grad = sum du zhat, beta_grad = sum du (affine), and
    dz = gamma invstd (du - mean(du) - zhat mean(du zhat)) (dz may be du)."""
    rows, cols = du.shape
    _column_sums(du, zhat, sums)
    affine = gamma.shape[0] > 0
    scale, shift, slope = sums[2], sums[0], sums[1]    # dz = scale du - shift - zhat slope
    for j in range(cols):
        s1, s2 = sums[0, j], sums[1, j]
        if affine:
            gamma_grad[j], beta_grad[j] = s2, s1
        scale[j] = (gamma[j] if affine else 1.0) * stats[1, j]
        shift[j], slope[j] = scale[j] * s1 / rows, scale[j] * s2 / rows
    for i in range(rows):
        di, hi, oi = du[i], zhat[i], dz[i]
        for j in range(cols):
            oi[j] = scale[j] * di[j] - shift[j] - hi[j] * slope[j]


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _forward(addresses, net, post, hs, zs, hb, extra, packed_x, rows, step):
    """hs[l + 1] = drop(f_l(bn(hs[l] @ W_l.T + b_l))) for every layer; zs[l] keeps z_l
    where needed, extra = (us, zhats, masks, stats, sums) what batchnorm and dropout keep.
    packed_x (when not empty): h_0 as the gather packed it.
    bf16 (hb[l] the bf16 h_l, or empty in fp32): a layer whose f is relu or identity with
    no z kept writes bf16 h_{l+1} from the GEMM ("direct"), the others float32, then
    rounded."""
    weights, biases, codes, slopes = net[0], net[1], net[4], net[5]
    bn_kind, gammas, betas, _, _, means, variances, bn_numbers, tracked, drops, scales = post
    us, zhats, masks, stats, sums = extra
    layers, bf16 = len(weights), hb[0].shape[1] > 0
    if bf16:
        _round_to_bf16(hs[0][:rows], hb[0][:rows])
    for l in range(layers):
        f = codes[l]
        keep_z = zs[l].shape[1] > 0
        z = zs[l][:rows] if keep_z else hs[l + 1][:rows]
        epilogue = RELU if f == RELU and not keep_z else IDENTITY
        if l == 0 and packed_x.shape[0]:
            status = _c_calls.sgemm_packed_a(addresses[11], packed_x, rows, weights[l], z,
                                             biases[l], epilogue)
        elif not bf16:
            status = _c_calls.sgemm(addresses[0], hs[l][:rows], weights[l], z, True,
                                    biases[l], epilogue)
        elif _direct_bf16(l, layers, codes, zs):
            status = _c_calls.sbgemm(addresses[6], hb[l][:rows], weights[l], hb[l + 1][:rows],
                                     True, biases[l], epilogue)
            if status != 0:
                return C_ERROR
            continue
        else:
            status = _c_calls.sbgemm(addresses[6], hb[l][:rows], weights[l], z, True,
                                     biases[l], epilogue)
        if status != 0:
            return C_ERROR
        u = z
        if bn_kind[l]:
            tracked[l] += 1
            momentum = bn_numbers[l, 1] if bn_numbers[l, 1] >= 0 else 1.0 / tracked[l]
            u = us[l][:rows]
            _batchnorm(z, gammas[l], betas[l], stats[l], sums[l], zhats[l][:rows], u, means[l],
                       variances[l], bn_numbers[l, 0], momentum)
        if keep_z or (f != RELU and f != IDENTITY):
            _activate(f, slopes[l], u, hs[l + 1][:rows])
        if drops[l + 1, 5] and _dropout(addresses, hs[l + 1][:rows], drops[l + 1],
                                        scales[l + 1], step, masks[l][:rows], hs[l + 1][:rows]):
            return C_ERROR
        if bf16 and l + 1 < layers:
            _round_to_bf16(hs[l + 1][:rows], hb[l + 1][:rows])
    return OK


@njit(cache=True, inline="always")
def _direct_bf16(l, layers, codes, zs):
    """In bf16: layer l's GEMM writes the bf16 h_{l+1} itself (a hidden layer, f relu or
    identity, no z kept: no batchnorm, dropout or pass on z follows)."""
    return l + 1 < layers and zs[l].shape[1] == 0 and (codes[l] == RELU or
                                                        codes[l] == IDENTITY)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _backward(addresses, net, post, hs, zs, dzs, hb, extra, packed_x, rows, squares):
    """dW_l, db_l for every layer from dzs[L - 1]; dz_{l-1} through the layers (and the
    gradients of batchnorm's gamma and beta). bf16: the GEMMs read the bf16 h_l.
    packed_x (when not empty): h_0 as the gather packed it, for dW_0. fp32: squares[0] +=
    the sum of the squares of every dW_l and db_l, from their GEMMs' strips (the finiteness
    check of the step; bf16 adds nothing); squares[1] takes each GEMM's own sum."""
    weights, biases, weight_grads, bias_grads, codes, slopes = net
    bn_kind, gammas, _, gamma_grads, beta_grads = post[:5]
    drops, scales = post[9], post[10]
    us, zhats, masks, stats, sums = extra
    bf16 = hb[0].shape[1] > 0
    for l in range(len(weights) - 1, -1, -1):
        dz = dzs[l][:rows]
        f = codes[l - 1] if l > 0 else IDENTITY
        plain = l > 0 and not bn_kind[l - 1] and not drops[l, 5]
        from_output = plain and (f == RELU or f == SIGMOID or f == TANH)   # f' from h_l
        if from_output and not bf16 and weights[l].shape[0] <= NARROW_N:
            # a narrow layer (a classifier's last): dW_l, db_l and dz_{l-1} in one pass over h_l
            status = _c_calls.narrow_backward(addresses[13], dz, weights[l], hs[l][:rows],
                                              dzs[l - 1][:rows], weight_grads[l],
                                              bias_grads[l], f, squares[1:])
            squares[0] += squares[1]
            if status != 0:
                return C_ERROR
            continue
        if bf16:
            status = _c_calls.sbgemm_at(addresses[6], dz, hb[l][:rows], weight_grads[l])
            if bias_grads[l].shape[0]:
                _bias_gradient(dz, bias_grads[l])
        else:                          # db too, from the packed dz panels; h_0 maybe packed
            status = _c_calls.weight_grad(addresses[12], dz, hs[l][:rows],
                                          packed_x if l == 0 else packed_x[:0],
                                          weight_grads[l], bias_grads[l], squares[1:])
            squares[0] += squares[1]
        if status != 0:
            return C_ERROR
        if l == 0:
            break
        below = dzs[l - 1][:rows]
        if from_output:                                         # f' from h_l, in the GEMM
            if not bf16:
                status = _c_calls.sgemm_dact(addresses[1], dz, weights[l], below,
                                             hs[l][:rows], f)
            elif f == RELU:                          # direct: h_l only in bf16 (same sign)
                status = _c_calls.sbgemm_dact(addresses[7], dz, weights[l], below,
                                              hb[l][:rows], f)
            else:                                    # the float32 h_l of the pass
                status = _c_calls.sbgemm_dact(addresses[7], dz, weights[l], below,
                                              hs[l][:rows], f)
        elif bf16:
            status = _c_calls.sbgemm(addresses[6], dz, weights[l], below, False,
                                     biases[l][:0], IDENTITY)
        else:
            status = _c_calls.sgemm(addresses[0], dz, weights[l], below, False,
                                    biases[l][:0], IDENTITY)
        if status != 0:
            return C_ERROR
        if not plain:
            if drops[l, 5]:
                _dropout_backward(below, masks[l - 1][:rows], scales[l])
            u = us[l - 1][:rows] if bn_kind[l - 1] else zs[l - 1][:rows]
            _times_derivative(f, slopes[l - 1], u, below)
            if bn_kind[l - 1]:
                _batchnorm_backward(below, zhats[l - 1][:rows], stats[l - 1], sums[l - 1],
                                    gammas[l - 1], gamma_grads[l - 1], beta_grads[l - 1], below)
        elif f != IDENTITY and f != RELU and f != SIGMOID and f != TANH:
            _times_derivative(f, slopes[l - 1], zs[l - 1][:rows], below)
    return OK


@njit(fastmath=_FASTMATH, cache=True)
def _bias_gradient(dz, db):
    """db = sum_i dz[i] in float32, four rows per pass over db: db is loaded and stored a
    quarter as often as row by row (4.9 -> 2.7 us at 256 x 256 on a Zen 4 core). The bf16
    steps' (in fp32 the weight gradient's GEMM sums dz while it packs it)."""
    db[:] = 0
    rows = dz.shape[0]
    for i in range(0, rows - 3, 4):
        r0, r1, r2, r3 = dz[i], dz[i + 1], dz[i + 2], dz[i + 3]
        for j in range(db.shape[0]):
            db[j] = db[j] + r0[j] + r1[j] + r2[j] + r3[j]
    for k in range(rows - rows % 4, rows):
        for j in range(db.shape[0]):
            db[j] += dz[k, j]


@njit(fastmath=_FASTMATH, cache=True)
def _dropout_backward(g, keep, scale):
    """g *= keep scale, the mask of the forward pass, scale = 1 / (1 - p)."""
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            g[i, j] = g[i, j] * scale if keep[i, j] else ZERO


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


@njit(fastmath=_FASTMATH, cache=True)
def _renorm_rows(weights, max_norm):
    """Each row of each weight onto the L2 ball of radius max_norm (0: nothing), float64
    sums, as kernels/optim.py's max_norm."""
    if max_norm <= 0:
        return
    for w in weights:
        for r in range(w.shape[0]):
            renorm_row(w[r], max_norm)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _gradients(addresses, src_x, src_y, net, post, buffers, loss_kind, rows_index, step,
               squares, mean_rows):
    """Gather the rows, forward, loss, backward: (the batch's summed loss, correct rows,
    status); the gradients (of the loss summed over the rows / mean_rows) are left in net's
    and post's gradient arrays, and squares[0] += the sum of their squares that the
    weight-gradient GEMMs add (_backward). ``step``: the batch's number in this call
    (dropout masks are drawn for step base + step)."""
    hs, zs, dzs, y, extra, hb, packed_x = buffers
    layers = len(net[0])
    rows = rows_index.shape[0]
    if rows < 2 and post[0].any():
        return 0.0, 0, BAD_BATCH
    largest = 0.0                                # multiply-adds of the largest GEMM
    for w in net[0]:
        largest = max(largest, float(rows) * w.shape[0] * w.shape[1])
    _c_calls.wake_threads(addresses[9], largest)
    status = _gather_batch(addresses, src_x, src_y, rows_index, hs[0][:rows], y[:rows],
                           hs[layers].shape[1], packed_x)
    if status != OK:
        return 0.0, 0, status
    if post[9][0, 5] and _dropout(addresses, hs[0][:rows], post[9][0], post[10][0], step,
                                  extra[2][0][:, :0], hs[0][:rows]):     # input: no mask kept
        return 0.0, 0, C_ERROR
    status = _forward(addresses, net, post, hs, zs, hb, extra, packed_x, rows, step)
    if status != OK:
        return 0.0, 0, status
    loss, correct = _batch_loss(loss_kind, hs[layers][:rows], y[:rows], dzs[layers - 1][:rows],
                                mean_rows)
    return loss, correct, _backward(addresses, net, post, hs, zs, dzs, hb, extra, packed_x,
                                    rows, squares)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _train_steps(addresses, src_x, src_y, net, post, buffers, loss_kind, optimizer, hyper,
                 max_norm, flat, state, order, first_batch, num_batches, lrs, first_step, sums,
                 check):
    """Steps first_batch .. first_batch + num_batches - 1 of an epoch whose row order is
    ``order``; returns (steps applied, status, mean loss of the failing batch).
    net = (weights, biases, weight_grads, bias_grads, codes, slopes); post = what follows
    each Linear (MLPSteps._post); buffers = (hs, zs, dzs, y, extra, hb, packed_x): per
    layer h_l (B, in_l) and hs[L] the predictions, z_l (B, out_l) or (B, 0), dz_l (B,
    out_l), y the batch's labels or targets, extra what batchnorm and dropout keep, hb the
    bf16 h_l (B, in_l) in bf16 precision, else (B, 0) each, packed_x h_0 packed by the
    gather for the first layer's GEMMs (float32 rows, fp32, no input dropout, more than
    MLPF_NARROW_N outputs (csrc/gemm.h: up to that many make a narrow product, which reads
    h_0 in place); h_0 is then not written), else empty; flat = (data, grad);
    sums[0] += each batch's summed loss, sums[1] += its correct rows. check = (unchecked,
    squares): int64 (R, 2), the [start, stop) ranges of flat[1] whose squares the
    weight-gradient GEMMs do not add (_unchecked_ranges), and float64 (2,) for _backward's
    sums: the step's gradients are finite when their squares, added up, are."""
    unchecked, squares = check
    batch_size = buffers[0][0].shape[0]
    for s in range(num_batches):
        start = (first_batch + s) * batch_size
        rows_index = order[start:min(start + batch_size, order.shape[0])]
        squares[0] = 0.0
        loss, correct, status = _gradients(addresses, src_x, src_y, net, post, buffers,
                                           loss_kind, rows_index, s, squares,
                                           rows_index.shape[0])
        if status != OK:
            return s, status, 0.0
        total = squares[0]                                  # NaN or inf if any g is
        for r in range(unchecked.shape[0]):
            total += _c_calls.sum_squares(addresses[2], flat[1][unchecked[r, 0]:unchecked[r, 1]])
        if not (math.isfinite(loss) and math.isfinite(total)):
            return s, NOT_FINITE, loss / rows_index.shape[0]
        if _update(addresses, optimizer, hyper, flat[0], flat[1], state, lrs[s],
                   first_step + s + 1) != 0:
            return s, C_ERROR, 0.0
        _renorm_rows(net[0], max_norm)
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

    ``post``: what follows each Linear besides its activation, ``(batchnorms, dropouts,
    input_dropout)`` (None: nothing): per layer None or a ``BatchNormSpec`` (before the
    activation) and None or a ``DropoutSpec`` (after it); input_dropout: a DropoutSpec on
    the inputs, or None. ``self.tracked`` (batches per batchnorm) is read and advanced by
    ``run``: set it from the layers before a call, read it back after. ``self.dropout_steps``
    (the step base per dropout, index 0 the inputs') is only read: batch s of a call draws
    its masks at base + s, and the caller advances the base by the batches run.
    ``max_norm``: after each update, each row of each weight onto the L2 ball of that
    radius (kernels/optim.py's max_norm), or None. ``precision``: "fp32", or "bf16" for
    bf16 GEMM operands with float32 sums (the module docstring).
    """

    def __init__(self, layers, flat_data, flat_grad, src_x, src_y, batch_size, loss,
                 optimizer, hyper, state, post=None, max_norm=None, precision="fp32"):
        weights, biases, weight_grads, bias_grads, activations, slopes = layers
        self.batch_size, sizes = check_mlp_step(layers, flat_data, flat_grad, batch_size,
                                                ACTIVATIONS, _check_float32_c)
        batchnorms, dropouts, input_dropout = post or ([None] * len(weights),
                                                       [None] * len(weights), None)
        _check_source(src_x, src_y, sizes, loss)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        state = check_optimizer_state(optimizer, hyper, state, flat_data, _check_float32_c)
        self._optimizer = SGD if optimizer == "sgd" else ADAM
        self._state = (state[0], state[-1])                  # always a pair
        self._hyper = np.array(hyper, np.float64)
        self._max_norm = 0.0 if max_norm is None else float(max_norm)
        self._loss = {"cross_entropy": CROSS_ENTROPY, "mse": MSE}[loss]
        self.precision = precision
        empty = np.empty(0, np.float32)
        codes = np.array([c_code(f) for f in activations], np.int64)
        self._net = (tuple(weights), tuple(empty if b is None else b for b in biases),
                     tuple(weight_grads), tuple(empty if g is None else g for g in bias_grads),
                     codes, np.array(slopes, np.float32))
        rows = self.batch_size
        self._post = _post_arrays(sizes, batchnorms, dropouts, input_dropout)
        self.tracked, self.dropout_steps = self._post[8], self._post[9][:, 4]
        keep_z = [DERIVATIVE[f] == "input" or bn is not None or drop is not None
                  for f, bn, drop in zip(activations, batchnorms, dropouts)]

        def per_layer(present, dtype=np.float32, first=rows):
            return tuple(np.empty((first, n if on else 0), dtype)
                         for n, on in zip(sizes[1:], present))
        bn_on = [bn is not None for bn in batchnorms]
        extra = (per_layer(bn_on), per_layer(bn_on), per_layer([d is not None for d in dropouts],
                                                               np.uint8),
                 per_layer(bn_on, first=2), per_layer(bn_on, np.float64, first=3))
        # Page offsets (mod 4 KiB) of the buffers: h_l at 1024 l bytes, dz_l at 1024 (l + 1)
        # + 384, the bf16 h_l at 1024 l + 768. Layer l's input gradient reads h_l (f') and
        # writes dz_{l-1} in tiles of 12 rows x 32 floats; a load whose low 12 address bits
        # fall in an earlier store's waits for it ("4K aliasing"). At 384 bytes apart no
        # two rows of a float32 tile do, for rows of any multiple of 256 bytes (the bf16
        # h_l, half as wide as dz, meets dz at some columns whatever the offsets)
        # (bench/README.md, "4K aliasing")
        hs = tuple(_at_page_offset((rows, n), np.float32, 1024 * l)
                   for l, n in enumerate(sizes))
        dzs = tuple(_at_page_offset((rows, n), np.float32, 1024 * (l + 1) + 384)
                    for l, n in enumerate(sizes[1:]))
        hbs = tuple(_at_page_offset((rows, n if precision == "bf16" else 0), np.uint16,
                                    1024 * l + 768) for l, n in enumerate(sizes[:-1]))
        self._buffers = (hs,
                         per_layer(keep_z), dzs,
                         np.empty((rows,) + src_y.shape[1:], src_y.dtype), extra,
                         hbs,
                         _packed_x(rows, sizes[0], precision == "fp32" and
                                   src_x.dtype == np.float32 and input_dropout is None and
                                   sizes[1] > NARROW_N))
        self._flat, self._src = (flat_data, flat_grad), (src_x, src_y)
        # (ranges of flat_grad the step checks itself, _backward's sums of squares), one
        # argument: at 19, _train_steps' argument tuple comes from CPython's free list of
        # tuples (up to 19 items), not the heap (tests/test_backends.py counts allocations)
        summed = list(weight_grads) + [g for g in bias_grads if g is not None and g.size]
        self._check = (_unchecked_ranges(flat_grad, summed, precision == "fp32"), np.zeros(2))
        found = _c_calls.c_addresses()
        # addresses[i]: the C function _c_calls.NAMES[i], in the compiled code's order
        self._addresses = np.array([found[name] for name in _c_calls.NAMES], np.int64)
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
            self._addresses, *self._src, self._net, self._post, self._buffers, self._loss,
            self._optimizer, self._hyper, self._max_norm, self._flat, self._state, order,
            first_batch, num_batches, lrs, first_step, sums, self._check)
        self._raise_for(status)
        return steps, status == OK, loss

    def gradients(self, rows_index, mean_rows=None):
        """Forward, loss and backward on the dataset rows ``rows_index`` (int64, at most
        batch_size): (summed loss, correct rows); the gradients of the loss summed over
        the rows / ``mean_rows`` (default: their count; for data parallelism, the whole
        batch's, so that each rank's share is rounded as one process's would be) are left
        in flat_grad and nothing is updated (the first half of a step)."""
        if not isinstance(rows_index, np.ndarray) or rows_index.dtype != np.int64 or \
                rows_index.ndim != 1 or not 0 < rows_index.shape[0] <= self.batch_size:
            raise ValueError(f"rows_index must be 1-D int64 with 1 to {self.batch_size} rows")
        rows = rows_index.shape[0]
        mean_rows = rows if mean_rows is None else mean_rows
        if isinstance(mean_rows, bool) or not isinstance(mean_rows, (int, np.integer)) or \
                mean_rows < rows:
            raise ValueError(f"mean_rows must be an integer >= the {rows} rows, got "
                             f"{mean_rows!r}")
        squares = self._check[1]
        squares[0] = 0.0                        # (the caller checks the reduced gradient)
        loss, correct, status = _gradients(self._addresses, *self._src, self._net,
                                           self._post, self._buffers, self._loss, rows_index, 0,
                                           squares, int(mean_rows))
        self._raise_for(status)
        return loss, int(correct)

    def update(self, lr, step):
        """The optimizer's update number ``step`` (from 1) with the gradients in flat_grad."""
        if _update(self._addresses, self._optimizer, self._hyper, *self._flat, self._state,
                   float(lr), int(step)) != 0:
            self._raise_for(C_ERROR)
        _renorm_rows(self._net[0], self._max_norm)

    def _raise_for(self, status):
        if status == BAD_BATCH:
            raise ValueError("BatchNorm1d in training needs more than 1 sample per batch: "
                             "choose a batch size that leaves no batch of 1")
        if status == BAD_INDEX:
            raise ValueError(f"order must hold row numbers in [0, {self._src[0].shape[0]})")
        if status == BAD_LABEL:
            classes = self._net[0][-1].shape[0]
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} outputs")
        if status == C_ERROR:
            raise RuntimeError("the C library rejected a call of the compiled MLP step")


class BatchNormSpec(NamedTuple):
    """A BatchNorm1d after a Linear layer: gamma, beta and their gradients (None when not
    affine), running statistics (float32, updated in place), eps, momentum (None: the
    cumulative average), batches tracked so far."""
    gamma: object
    beta: object
    gamma_grad: object
    beta_grad: object
    running_mean: object
    running_var: object
    eps: float
    momentum: object
    tracked: int


class DropoutSpec(NamedTuple):
    """A Dropout (kernels/dropout.py's mask): probability p, seed, layer id, step base."""
    p: float
    seed: int
    layer: int
    step: int


def _unchecked_ranges(flat_grad, summed, fused):
    """The [start, stop) ranges of flat_grad (int64, (R, 2)) whose squares the step sums
    itself: with ``fused`` (fp32, where each weight-gradient GEMM adds the squares of dW
    and db) all but the gradients in ``summed`` (the weights' and biases') that lie in
    flat_grad, else all of it."""
    covered = []
    base, itemsize = flat_grad.ctypes.data, flat_grad.itemsize
    for g in summed if fused else ():
        start = (g.ctypes.data - base) // itemsize
        if (g.ctypes.data - base) % itemsize or start < 0 or start + g.size > flat_grad.size:
            return np.array([[0, flat_grad.size]], np.int64)      # not a view: sum it all
        covered.append((start, start + g.size))
    ranges, at = [], 0
    for start, stop in sorted(covered):
        if start > at:
            ranges.append((at, start))
        at = max(at, stop)
    if at < flat_grad.size:
        ranges.append((at, flat_grad.size))
    unchecked = np.zeros((len(ranges), 2), np.int64)     # owns its data: Numba wraps a
    for row, (start, stop) in enumerate(ranges):          # view anew on every call
        unchecked[row] = start, stop
    return unchecked


def _at_page_offset(shape, dtype, offset):
    """np.empty(shape, dtype) whose data starts ``offset`` bytes (mod 4 KiB, a multiple of
    16) into a page."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    spare = np.empty(count + nm.PAGE_BYTES // dtype.itemsize, dtype)
    start = (offset - spare.ctypes.data) % nm.PAGE_BYTES // dtype.itemsize
    return spare[start:start + count].reshape(shape)


def _packed_x(rows, features, wanted):
    """The buffer the gather packs a batch of ``rows`` x ``features`` into for the first
    layer's GEMMs (mlpf_sgather_packed), 64-byte aligned and large enough for the layout
    of every fp32 kernel (mlpf_set_kernel may change it), or an empty one when not
    ``wanted``."""
    if not wanted:
        return np.empty(0, np.float32)
    widest = max(config["nr"] for config in CONFIGS.values())
    floats = c_library().lib.MLPF_PACKED_B_HEADER + rows * -(-features // widest) * widest
    spare = np.empty(floats + 16, np.float32)
    start = (-spare.ctypes.data % 64) // 4
    return spare[start:start + floats]


def _post_arrays(sizes, batchnorms, dropouts, input_dropout):
    """The ``post`` tuple _train_steps reads: (bn kind (L,), gammas, betas, gamma grads,
    beta grads, running means, running variances, (eps, momentum or -1) (L, 2), tracked
    (L,), dropout words (L + 1, 6) (threshold, key lo, key hi, layer, step base, present),
    dropout scales (L + 1,))."""
    empty = np.empty(0, np.float32)
    layers = len(sizes) - 1
    kinds = np.zeros(layers, np.int64)
    numbers = np.zeros((layers, 2), np.float64)
    tracked = np.zeros(layers, np.int64)
    arrays = [[empty] * layers for _ in range(6)]
    for l, bn in enumerate(batchnorms):
        if bn is None:
            continue
        for i, name in enumerate(("gamma", "beta", "gamma_grad", "beta_grad")):
            value = getattr(bn, name)
            if value is not None:
                _check_float32_c(value, f"batchnorm {l} {name}", (sizes[l + 1],))
                arrays[i][l] = value
        for i, name in ((4, "running_mean"), (5, "running_var")):
            _check_float32_c(getattr(bn, name), f"batchnorm {l} {name}", (sizes[l + 1],))
            arrays[i][l] = getattr(bn, name)
        kinds[l] = 1
        numbers[l] = bn.eps, -1.0 if bn.momentum is None else bn.momentum
        tracked[l] = bn.tracked
    drops = np.zeros((layers + 1, 6), np.uint64)
    scales = np.zeros(layers + 1, np.float32)
    for row, spec in enumerate([input_dropout, *dropouts]):
        if spec is not None:
            threshold, k0, k1, layer, _, _ = dropout_stream(spec.p, spec.seed, 0, spec.layer)
            drops[row] = threshold, k0, k1, layer, spec.step, 1
            scales[row] = dropout_scale(spec.p, np.float32)
    return (kinds, *(tuple(a) for a in arrays), numbers, tracked, drops, scales)


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
