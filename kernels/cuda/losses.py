"""Losses on the GPU: softmax cross-entropy (+ gradient, + correct count) and mean squared error.

Same contract as ``mlpfast.kernels.losses`` (formulas there), on device arrays; ``labels``
are a host NumPy integer array (checked, then copied into a reused device buffer). Only
the scalars cross back to the host: the loss and the number of correct rows.

Versions:
    cuda   softmax_cross_entropy: one thread per row computes max, logsumexp, its loss
           term, whether its argmax is the label, and its gradient row; per-row
           (loss, correct) pairs go to the host in one copy and are summed there in float64.
           mse: grid-stride partial sums in float64, reduced per block in shared memory,
           one value per block summed on the host. mse_backward: elementwise.
"""
import math

import numpy as np
from numba import cuda, float64

from ._device import (ScratchBuffers, blocks_for, check_device_float, check_device_out,
                      check_host_indices, check_same_device_shape, THREADS_PER_BLOCK)

_scratch = ScratchBuffers()
MSE_BLOCKS = 128


def _cross_entropy_kernel(with_grad):
    @cuda.jit
    def kernel(logits, labels, grad, row_stats):
        # logits, grad: (B, C); labels: (B,); row_stats[i] = (loss_i, 1 if argmax_i == label_i)
        rows, cols = logits.shape
        for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
            top = logits[i, 0]
            best = 0
            for j in range(1, cols):
                if logits[i, j] > top:
                    top = logits[i, j]
                    best = j
            total = 0.0
            for j in range(cols):
                total += math.exp(logits[i, j] - top)
            label = labels[i]
            log_total = math.log(total)
            row_stats[i, 0] = log_total + top - logits[i, label]   # logsumexp - logit of label
            row_stats[i, 1] = 1.0 if best == label else 0.0
            if with_grad:
                # grad_ij = (softmax_ij - [j == label]) / B
                for j in range(cols):
                    p = math.exp(logits[i, j] - top - log_total)
                    grad[i, j] = (p - (1.0 if j == label else 0.0)) / rows
    return kernel


_CROSS_ENTROPY = {True: _cross_entropy_kernel(True), False: _cross_entropy_kernel(False)}


def _check_logits(logits, labels):
    check_device_float(logits, "logits", 2)
    batch, classes = logits.shape
    check_host_indices(labels, batch, classes, "labels", f"{classes} classes")
    if batch == 0:
        raise ValueError("logits must hold at least one row, got shape (0, ...)")


def _cross_entropy(logits, labels, grad):
    """(loss, correct) after running the kernel; grad is written when given."""
    batch = logits.shape[0]
    device_labels = _scratch.upload("labels", labels.astype(np.int64, copy=False))
    row_stats = _scratch.get("row_stats", batch, np.float64, 2)
    kernel = _CROSS_ENTROPY[grad is not None]
    kernel[blocks_for(batch), THREADS_PER_BLOCK](
        logits, device_labels, grad if grad is not None else logits, row_stats)
    stats = row_stats.copy_to_host()
    return float(stats[:, 0].sum() / batch), int(stats[:, 1].sum())


def softmax_cross_entropy_cuda(logits, labels, grad_out=None):
    """(mean cross-entropy, gradient (B, C) on the device, number of correct rows)."""
    _check_logits(logits, labels)
    check_device_out(grad_out, logits.shape, logits.dtype, name="grad_out",
                     inputs=(("logits", logits),))
    if grad_out is None:
        grad_out = cuda.device_array(logits.shape, dtype=logits.dtype)
    loss, correct = _cross_entropy(logits, labels, grad_out)
    return loss, grad_out, correct


def softmax_cross_entropy_forward_cuda(logits, labels):
    _check_logits(logits, labels)
    return _cross_entropy(logits, labels, None)[0]


@cuda.jit
def _squared_error_partials(pred, target, partials):
    # partials[block] = sum over the block's elements of (pred - target)^2, in float64
    cache = cuda.shared.array(THREADS_PER_BLOCK, float64)
    tid = cuda.threadIdx.x
    total = 0.0
    for e in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        diff = float64(pred[e]) - float64(target[e])
        total += diff * diff
    cache[tid] = total
    cuda.syncthreads()
    half = THREADS_PER_BLOCK // 2
    while half > 0:                                # tree reduction in shared memory
        if tid < half:
            cache[tid] += cache[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        partials[cuda.blockIdx.x] = cache[0]


@cuda.jit
def _mse_backward_kernel(pred, target, out, scale):
    # out = scale * (pred - target), scale = 2 / size
    for e in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        out[e] = scale * (pred[e] - target[e])


def _check_mse(pred, target):
    check_device_float(pred, "pred")
    check_device_float(target, "target")
    check_same_device_shape(pred, "pred", target, "target")
    if pred.size == 0:
        raise ValueError("pred must not be empty")


def _flat(a, name):
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device")
    return a.reshape(a.size)


def mse_cuda(pred, target):
    """mean((pred - target)^2) over all elements, as a host float."""
    _check_mse(pred, target)
    blocks = min(MSE_BLOCKS, blocks_for(pred.size))
    partials = _scratch.get("mse_partials", blocks, np.float64)
    _squared_error_partials[blocks, THREADS_PER_BLOCK](_flat(pred, "pred"),
                                                       _flat(target, "target"), partials)
    return float(partials.copy_to_host().sum() / pred.size)


def mse_backward_cuda(pred, target, out=None):
    """2 (pred - target) / pred.size."""
    _check_mse(pred, target)
    check_device_out(out, pred.shape, pred.dtype, inputs=(("pred", pred), ("target", target)))
    if out is None:
        out = cuda.device_array(pred.shape, dtype=pred.dtype)
    _mse_backward_kernel[blocks_for(pred.size), THREADS_PER_BLOCK](
        _flat(pred, "pred"), _flat(target, "target"), _flat(out, "out"), 2.0 / pred.size)
    return out


VARIANTS = {"cuda": {
    "softmax_cross_entropy": softmax_cross_entropy_cuda,
    "softmax_cross_entropy_forward": softmax_cross_entropy_forward_cuda,
    "mse": mse_cuda,
    "mse_backward": mse_backward_cuda,
}}
