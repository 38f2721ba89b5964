"""Inverted dropout on the GPU, with the mask of ``mlpfast.kernels.dropout``.

Same contract, the same Philox-4x32-10 stream keyed by (seed, step, layer, element index),
so a mask drawn here equals the CPU's bit for bit (the tests compare them).

Versions:
    cuda   forward: one thread per block of 4 elements (one Philox call), grid-stride,
           writing y and the uint8 mask; backward: one thread per element.
"""
import numpy as np
from numba import cuda

from .. import dropout as cpu
from ._device import blocks_for, check_device_float, check_device_out, THREADS_PER_BLOCK

philox4x32_10 = cuda.jit(device=True)(cpu.philox4x32_10)


@cuda.jit
def _dropout_forward_kernel(x, threshold, scale, k0, k1, layer, step_lo, step_hi, out, keep):
    # element i = r cols + c takes word i % 4 of the Philox block i // 4
    rows, cols = x.shape
    n = rows * cols
    for block in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        words = philox4x32_10(np.uint64(block), layer, step_lo, step_hi, k0, k1)
        for w in range(4):
            i = 4 * block + w
            if i < n:
                r = i // cols
                c = i - r * cols
                kept = words[w] >= threshold
                keep[r, c] = 1 if kept else 0
                out[r, c] = x[r, c] * scale if kept else 0.0


@cuda.jit
def _dropout_backward_kernel(grad_y, keep, scale, out):
    rows, cols = grad_y.shape
    for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = e // cols
        c = e - r * cols
        out[r, c] = grad_y[r, c] * scale if keep[r, c] else 0.0


def forward_cuda(x, p, seed, step, layer, out=None, mask=None):
    """(y, keep) as device arrays; y = keep x / (1 - p)."""
    cpu.check_forward(x, out, mask, check_device_float, check_device_out)
    threshold, k0, k1, c1, c2, c3 = cpu.stream(p, seed, step, layer)
    out = cuda.device_array(x.shape, x.dtype) if out is None else out
    mask = cuda.device_array(x.shape, np.uint8) if mask is None else mask
    if x.size:
        _dropout_forward_kernel[blocks_for(-(-x.size // 4)), THREADS_PER_BLOCK](
            x, threshold, cpu.scale_for(p, x.dtype), k0, k1, c1, c2, c3, out, mask)
    return out, mask


def backward_cuda(grad_y, keep, p, out=None):
    """grad_x = keep grad_y / (1 - p)."""
    cpu.check_backward(grad_y, keep, p, out, check_device_float, check_device_out)
    out = cuda.device_array(grad_y.shape, grad_y.dtype) if out is None else out
    if grad_y.size:
        _dropout_backward_kernel[blocks_for(grad_y.size), THREADS_PER_BLOCK](
            grad_y, keep, cpu.scale_for(p, grad_y.dtype), out)
    return out


def mask_cuda(shape, p, seed, step, layer, out=None):
    """The keep mask alone, as a device array."""
    shape = tuple(int(s) for s in shape)
    cpu.check_shape(shape)
    check_device_out(out, shape, np.dtype(np.uint8))
    return forward_cuda(cuda.device_array(shape, np.float32), p, seed, step, layer,
                        mask=out)[1]


VARIANTS = {"cuda": {"dropout_mask": mask_cuda, "dropout_forward": forward_cuda,
                     "dropout_backward": backward_cuda}}
