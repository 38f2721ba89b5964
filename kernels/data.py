"""Batch gather: rows of a dataset picked by an index into a preallocated buffer.

Versions:
    numpy   gather_ref (NumPy fancy indexing with out=)
    numba   gather_numba (rows copied in parallel, cast on the fly)

``VARIANTS[variant]["gather"]``: f(src, index, out) -> out, out[i] = src[index[i]]
    src (N, ...) any dtype; index (B,) integer in [0, N); out (B, ...) with src's row
    shape. out may have another dtype than src (e.g. uint8 pixels -> float32): values
    are cast.
"""
import math

import numpy as np
from numba import njit, prange

from . import _numba_config


def check_gather_args(src, index, out):
    for name, a in (("src", src), ("out", out)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if a.ndim < 1:
            raise ValueError(f"{name} must have a first axis of rows, got a 0-d array")
    if not isinstance(index, np.ndarray) or index.dtype.kind not in "iu" or index.ndim != 1:
        raise TypeError(f"index must be a 1-D integer array, got "
                        f"{getattr(index, 'dtype', type(index).__name__)} "
                        f"{getattr(index, 'shape', '')}")
    if out.shape != (index.shape[0],) + src.shape[1:]:
        raise ValueError(f"out must have shape {(index.shape[0],) + src.shape[1:]}, "
                         f"got {out.shape}")
    if index.size and (index.min() < 0 or index.max() >= src.shape[0]):
        raise ValueError(f"index must lie in [0, {src.shape[0]}), got values in "
                         f"[{index.min()}, {index.max()}]")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if np.shares_memory(out, src):
        raise ValueError("out must not overlap src")


def gather_ref(src, index, out):
    check_gather_args(src, index, out)
    if out.dtype == src.dtype:
        np.take(src, index, axis=0, out=out)
    else:
        out[...] = src[index]
    return out


VARIANTS = {"numpy": {"gather": gather_ref}}


# --- Numba ------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _gather_rows_numba(src, index, out):
    """out[i, :] = src[index[i], :] (cast to out's dtype); src (N, D), out (B, D)."""
    for i in prange(index.shape[0]):
        row, dst = src[index[i]], out[i]
        for j in range(dst.shape[0]):
            dst[j] = row[j]


def gather_numba(src, index, out):
    """out[i] = src[index[i]], rows copied in parallel into the preallocated out (through a
    C-ordered copy when out is another view); dtypes Numba lacks (float16, complex, ...)
    go to the reference."""
    check_gather_args(src, index, out)
    if any(a.dtype.kind not in "biuf" or a.dtype == np.float16 for a in (src, out)):
        return gather_ref(src, index, out)
    rows = np.ascontiguousarray(src).reshape(src.shape[0], math.prod(src.shape[1:]))
    dst = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    _numba_config.parallel_call(_gather_rows_numba, rows, index,
                                dst.reshape(dst.shape[0], math.prod(dst.shape[1:])),
                                work=2 * out.size)     # reads and writes B rows, not all of src
    if dst is not out:
        out[...] = dst
    return out


VARIANTS["numba"] = {"gather": gather_numba}

_numba_config.stamp_kernel_caches(globals())
