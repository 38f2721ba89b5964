"""Batch gather on the GPU: rows of a device-resident dataset picked by a host index.

Same contract as ``mlpfast.kernels.data`` (``f(src, index, out) -> out``, out[i] = src[index[i]],
values cast to out's dtype), with src and out device arrays and index a host NumPy integer
array (checked, then copied into a reused device buffer). Keeping a dataset on the device
and gathering there moves only B indices per batch instead of B rows.

Versions:
    cuda   one thread per output element over (B, row size) views, consecutive threads
           reading consecutive elements of a source row.
"""
import numpy as np
from numba import cuda

from ._device import (ScratchBuffers, blocks_for, check_host_indices, is_device_array, overlaps,
                      THREADS_PER_BLOCK)

_scratch = ScratchBuffers()


@cuda.jit
def _gather_kernel(src, index, out):
    # src: (N, D), index: (B,), out: (B, D); out[i, j] = src[index[i], j]
    rows, cols = out.shape
    for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = e // cols
        j = e - i * cols
        out[i, j] = src[index[i], j]


def _rows(a, name):
    """a as a (len(a), row size) view; a must be C-contiguous."""
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device")
    row_size = int(np.prod(a.shape[1:], dtype=np.int64))
    return a.reshape(a.shape[0], row_size)


def gather_cuda(src, index, out):
    for a, name in ((src, "src"), (out, "out")):
        if not is_device_array(a):
            raise TypeError(f"{name} must be a CUDA device array (numba.cuda.to_device), "
                            f"got {type(a).__name__}")
    if src.ndim < 1:
        raise ValueError(f"src must have at least one axis, got shape {tuple(src.shape)}")
    check_host_indices(index, None, src.shape[0], "index", f"src has {src.shape[0]} rows")
    if tuple(out.shape) != (index.shape[0],) + tuple(src.shape[1:]):
        raise ValueError(f"out must have shape {(index.shape[0],) + tuple(src.shape[1:])}, "
                         f"got {tuple(out.shape)}")
    if overlaps(out, src):
        raise ValueError("out must not overlap src")
    if out.size == 0:
        return out
    device_index = _scratch.upload("index", index.astype(np.int64, copy=False))
    _gather_kernel[blocks_for(out.size), THREADS_PER_BLOCK](
        _rows(src, "src"), device_index, _rows(out, "out"))
    return out


VARIANTS = {"cuda": {"gather": gather_cuda}}
