"""Context windows: each frame with its K neighbours on either side, gathered into a batch.

Frames of all utterances lie end to end in one array; utterance u owns rows
[offsets[u], offsets[u+1]). Row b of the batch is frame g = index[b] with its
neighbours g-K .. g+K laid side by side; neighbours outside g's utterance are zeros:

    out[b, (j+K)*F : (j+K+1)*F] = features[g+j]  if offsets[u] <= g+j < offsets[u+1]
                                = 0              otherwise,           j = -K .. K, u = utt of g

    features (N, F), offsets (U+1,) integer, non-decreasing, offsets[0] = 0, offsets[U] = N,
    index (B,) integer in [0, N), out (B, (2K+1)*F) with features' dtype.
    The utterance u of frame g is found by binary search: offsets[u] <= g < offsets[u+1].

Versions:
    numpy   context_gather_ref: builds the zero-padded (N, 2K+1, F) window array of every
            frame, then picks rows (the naive construction, for checking only)
    numba   context_gather_numba: prange over the batch, copies each neighbour row (or
            writes zeros) straight into out; nothing of size N x (2K+1) x F is ever made

``VARIANTS[variant]["context_gather"]``: f(features, offsets, index, context, out=None) -> out
"""
import numpy as np
from numba import njit, prange

from . import _numba_config
from ._checks import check_float_array, check_out


def _check_context_args(features, offsets, index, context, out):
    check_float_array(features, "features", 2)
    frames = features.shape[0]
    for name, a in (("offsets", offsets), ("index", index)):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.ndim != 1:
            raise TypeError(f"{name} must be a 1-D integer array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != frames \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must rise from 0 to the number of frames {frames}, "
                         f"got {offsets[:3]}...{offsets[-3:]} ({offsets.shape[0]} entries)")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
        raise ValueError(f"context must be a non-negative integer, got {context!r}")
    if index.size and (index.min() < 0 or index.max() >= frames):
        raise ValueError(f"index must lie in [0, {frames}), got values in "
                         f"[{index.min()}, {index.max()}]")
    check_out(out, (index.shape[0], (2 * context + 1) * features.shape[1]), features.dtype,
              inputs=(("features", features),))


def context_gather_ref(features, offsets, index, context, out=None):
    _check_context_args(features, offsets, index, context, out)
    frames, dims = features.shape
    windows = np.zeros((frames, 2 * context + 1, dims), dtype=features.dtype)
    for u in range(offsets.shape[0] - 1):
        first, stop = int(offsets[u]), int(offsets[u + 1])
        padded = np.zeros((stop - first + 2 * context, dims), dtype=features.dtype)
        padded[context:context + stop - first] = features[first:stop]
        for j in range(2 * context + 1):      # window slot j holds neighbour j - K
            windows[first:stop, j] = padded[j:j + stop - first]
    picked = windows[index].reshape(index.shape[0], (2 * context + 1) * dims)
    if out is None:
        return picked
    out[...] = picked
    return out


@njit(parallel=True, cache=True)
def _context_gather_numba(features, offsets, index, context, out):
    dims = features.shape[1]
    for b in prange(index.shape[0]):
        frame = index[b]
        utterance = np.searchsorted(offsets, frame, side="right") - 1
        first = offsets[utterance]
        stop = offsets[utterance + 1]
        for j in range(2 * context + 1):
            source = frame - context + j
            column = j * dims
            if first <= source < stop:
                for f in range(dims):
                    out[b, column + f] = features[source, f]
            else:
                for f in range(dims):
                    out[b, column + f] = 0.0


def context_gather_numba(features, offsets, index, context, out=None):
    _check_context_args(features, offsets, index, context, out)
    if out is None:
        out = np.empty((index.shape[0], (2 * context + 1) * features.shape[1]), features.dtype)
    _numba_config.parallel_call(_context_gather_numba, features, offsets, index, context, out,
                                work=_numba_config.ALL_THREADS)
    return out


VARIANTS = {
    "numpy": {"context_gather": context_gather_ref},
    "numba": {"context_gather": context_gather_numba},
}

_numba_config.stamp_kernel_caches(globals())
