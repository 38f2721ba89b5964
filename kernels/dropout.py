"""Inverted dropout whose mask is a pure function of (seed, step, layer, element index).

Shapes: x (B, F); element (r, c) has index i = r F + c (C order of the logical array,
whatever its strides), so a mask never depends on memory layout, threads or device.

Random bits: Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11; Random123's
known-answer vectors are in the tests), one 4-word block per 4 elements:
    key     = (seed mod 2^32, seed div 2^32)                        0 <= seed < 2^64
    counter = (i div 4, layer, step mod 2^32, step div 2^32)        0 <= step < 2^64,
                                                                    0 <= layer < 2^32
    u_i     = word (i mod 4) of philox4x32_10(counter, key)         B F <= 2^34
Mask and output, with t = round(p 2^32) (P(drop) = t / 2^32, within 2^-33 of p):
    keep_i = u_i >= t        y_i = keep_i x_i s,   s = 1 / (1 - p)   (s = 0 for p = 1)
Backward: grad_x_i = keep_i grad_y_i s, with the mask of the forward pass.

``philox4x32_10`` is written once with uint64 operations: on NumPy arrays (the
reference), in Numba kernels, and as a CUDA device function (kernels/cuda/dropout.py).

Versions:
    numpy   the references below, vectorized over the whole array
    numba   forward: one parallel pass over rows; per row, the Philox words of its
            blocks first (``row_bits``: a loop over blocks the compiler vectorizes, 16
            counters per AVX-512 instruction), then y and the mask; backward: one
            parallel pass

``VARIANTS[variant]`` maps op names to functions:
    "dropout_mask"      f(shape, p, seed, step, layer, out=None) -> keep (B, F) uint8
    "dropout_forward"   f(x, p, seed, step, layer, out=None, mask=None) -> (y, keep)
    "dropout_backward"  f(grad_y, keep, p, out=None) -> grad_x
"""
import numbers

import numpy as np
from numba import njit, prange

from . import _numba_config
from ._checks import check_float_array, check_out

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_W0, PHILOX_W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
LOW32, SHIFT32 = np.uint64(0xFFFFFFFF), np.uint64(32)
MAX_ELEMENTS = 1 << 34                    # block index i div 4 fits the 32-bit counter word


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1); each value a uint64
    (scalar or array) below 2^32, and so is each of the 4 words returned."""
    for _ in range(10):
        p0, p1 = PHILOX_M0 * (c0 & LOW32), PHILOX_M1 * (c2 & LOW32)    # 32 x 32 -> 64 bits
        c0, c1, c2, c3 = ((p1 >> SHIFT32) ^ c1 ^ k0, p1 & LOW32,
                          (p0 >> SHIFT32) ^ c3 ^ k1, p0 & LOW32)
        k0, k1 = (k0 + PHILOX_W0) & LOW32, (k1 + PHILOX_W1) & LOW32
    return c0, c1, c2, c3


_philox_numba = njit(cache=True, inline="always")(philox4x32_10)


def _integer(name, value, bound):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 0 <= value < bound:
        raise ValueError(f"{name} must be an integer in [0, 2^{bound.bit_length() - 1}), "
                         f"got {value!r}")
    return int(value)


def stream(p, seed, step, layer):
    """(threshold, key words, counter words) as uint64, after checking the arguments."""
    check_probability(p)
    seed = _integer("seed", seed, 1 << 64)
    step = _integer("step", step, 1 << 64)
    layer = _integer("layer", layer, 1 << 32)
    u = np.uint64
    return (u(round(float(p) * 2.0 ** 32)), u(seed & 0xFFFFFFFF), u(seed >> 32), u(layer),
            u(step & 0xFFFFFFFF), u(step >> 32))


def scale_for(p, dtype):
    return np.dtype(dtype).type(0.0 if p == 1 else 1.0 / (1.0 - p))


def check_shape(shape):
    if len(shape) != 2:
        raise ValueError(f"dropout works on 2-D (batch, features) arrays, got shape {shape}")
    if shape[0] * shape[1] > MAX_ELEMENTS:
        raise ValueError(f"dropout handles at most 2^34 elements per call, got {shape}")


def check_probability(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")


def mask_ref(shape, p, seed, step, layer, out=None):
    """keep (B, F) uint8: 1 where element i is kept, 0 where it is dropped."""
    shape = tuple(int(s) for s in shape)
    check_shape(shape)
    threshold, k0, k1, c1, c2, c3 = stream(p, seed, step, layer)
    check_out(out, shape, np.dtype(np.uint8))
    index = np.arange(shape[0] * shape[1], dtype=np.uint64)
    n = index.shape[0]
    blocks = np.arange(-(-n // 4), dtype=np.uint64)
    words = philox4x32_10(blocks, c1, c2, c3, k0, k1)
    bits = np.stack(np.broadcast_arrays(*words), axis=1).reshape(-1)[:n]
    keep = (bits >= threshold).astype(np.uint8).reshape(shape)
    if out is None:
        return keep
    out[...] = keep
    return out


def check_forward(x, out, mask, check_array=None, check_output=None):
    """x (B, F) float, out like x, mask (B, F) uint8; check_array / check_output default
    to the NumPy checks, the CUDA twin passes its own."""
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(x, "x", 2)
    check_shape(tuple(x.shape))
    check_output(out, x.shape, x.dtype, inputs=(("x", x),))
    check_output(mask, x.shape, np.dtype(np.uint8), name="mask",
                 inputs=(("x", x), ("out", out)))


def forward_ref(x, p, seed, step, layer, out=None, mask=None):
    """(y, keep): y = keep * x / (1 - p) with keep = mask_ref(x.shape, ...)."""
    check_forward(x, out, mask)
    keep = mask_ref(x.shape, p, seed, step, layer, out=mask)
    y = np.where(keep == 1, x * scale_for(p, x.dtype), x.dtype.type(0))
    if out is None:
        return y, keep
    out[...] = y
    return out, keep


def check_backward(grad_y, keep, p, out, check_array=None, check_output=None):
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(grad_y, "grad_y", 2)
    if getattr(keep, "dtype", None) != np.uint8 or tuple(keep.shape) != tuple(grad_y.shape):
        raise ValueError(f"keep must be the uint8 mask of shape {tuple(grad_y.shape)} from the "
                         f"forward pass, got {getattr(keep, 'dtype', type(keep).__name__)} "
                         f"{tuple(getattr(keep, 'shape', ()))}")
    check_probability(p)
    check_output(out, grad_y.shape, grad_y.dtype, inputs=(("grad_y", grad_y), ("keep", keep)))


def backward_ref(grad_y, keep, p, out=None):
    """grad_x = keep * grad_y / (1 - p)."""
    check_backward(grad_y, keep, p, out)
    grad_x = np.where(keep == 1, grad_y * scale_for(p, grad_y.dtype), grad_y.dtype.type(0))
    if out is None:
        return grad_x
    out[...] = grad_x
    return out


VARIANTS = {"numpy": {"dropout_mask": mask_ref, "dropout_forward": forward_ref,
                      "dropout_backward": backward_ref}}


# --- Numba ------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def row_bits(first, cols, layer, step_lo, step_hi, k0, k1, bits):
    """u_i for i = first .. first + cols - 1 into bits[o + c] (c < cols), o = first mod 4,
    the offset returned: the 4 words of every Philox block that holds one of them (a
    block may straddle two rows: each row computes the words it needs). bits: uint32,
    at least cols + 6 long."""
    b0 = first >> 2
    for b in range(((first + cols - 1) >> 2) - b0 + 1):      # branch-free: vectorized
        w0, w1, w2, w3 = _philox_numba(np.uint64(b0 + b), layer, step_lo, step_hi, k0, k1)
        bits[4 * b], bits[4 * b + 1] = np.uint32(w0), np.uint32(w1)
        bits[4 * b + 2], bits[4 * b + 3] = np.uint32(w2), np.uint32(w3)
    return first & 3


@njit(parallel=True, fastmath=True, cache=True)
def _dropout_forward_numba(x, threshold, scale, k0, k1, layer, step_lo, step_hi, out, keep):
    rows, cols = x.shape
    zero = x.dtype.type(0)
    for r in prange(rows):
        bits = np.empty(cols + 6, np.uint32)
        offset = row_bits(r * cols, cols, layer, step_lo, step_hi, k0, k1, bits)
        for c in range(cols):
            kept = bits[offset + c] >= threshold
            keep[r, c] = kept
            out[r, c] = x[r, c] * scale if kept else zero


@njit(parallel=True, fastmath=True, cache=True)
def _dropout_backward_numba(grad_y, keep, scale, out):
    zero = grad_y.dtype.type(0)
    for r in prange(grad_y.shape[0]):
        for c in range(grad_y.shape[1]):
            out[r, c] = grad_y[r, c] * scale if keep[r, c] else zero


def forward_numba(x, p, seed, step, layer, out=None, mask=None):
    check_forward(x, out, mask)
    threshold, k0, k1, c1, c2, c3 = stream(p, seed, step, layer)
    out = np.empty_like(x) if out is None else out
    mask = np.empty(x.shape, np.uint8) if mask is None else mask
    _numba_config.parallel_call(_dropout_forward_numba, x, threshold, scale_for(p, x.dtype),
                                k0, k1, c1, c2, c3, out, mask, work=4 * x.size)
    return out, mask


def backward_numba(grad_y, keep, p, out=None):
    check_backward(grad_y, keep, p, out)
    out = np.empty_like(grad_y) if out is None else out
    _numba_config.parallel_call(_dropout_backward_numba, grad_y, keep,
                                scale_for(p, grad_y.dtype), out)
    return out


def mask_numba(shape, p, seed, step, layer, out=None):
    """The keep mask alone (the forward pass of an array of zeros)."""
    shape = tuple(int(s) for s in shape)
    check_shape(shape)
    check_out(out, shape, np.dtype(np.uint8))
    return forward_numba(np.zeros(shape, np.float32), p, seed, step, layer, mask=out)[1]


VARIANTS["numba"] = {"dropout_mask": mask_numba, "dropout_forward": forward_numba,
                     "dropout_backward": backward_numba}

_numba_config.stamp_kernel_caches(globals())
