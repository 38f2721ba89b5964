"""Batch gather: rows of a dataset picked by an index into a preallocated buffer.

Versions:
    numpy   gather_ref (NumPy fancy indexing with out=)

``VARIANTS[variant]["gather"]``: f(src, index, out) -> out, out[i] = src[index[i]]
    src (N, ...) any dtype; index (B,) integer in [0, N); out (B, ...) with src's row
    shape. out may have another dtype than src (e.g. uint8 pixels -> float32): values
    are cast.
"""
import numpy as np


def check_gather_args(src, index, out):
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
