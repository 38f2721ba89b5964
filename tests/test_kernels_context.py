"""Context-window gather: every variant against a naive frame-by-frame construction."""
import numpy as np
import pytest
from conftest import DTYPES

from mlpfast.kernels import context as C

VARIANTS = list(C.VARIANTS)


def naive_windows(features, lengths, index, context):
    """Row b: for j = -K..K, frame g+j of g's utterance, or zeros past its edges."""
    utterance_of, position = [], []
    for u, length in enumerate(lengths):
        utterance_of += [u] * length
        position += list(range(length))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    rows = []
    for g in index:
        u, p = utterance_of[g], position[g]
        parts = []
        for j in range(-context, context + 1):
            inside = 0 <= p + j < lengths[u]
            parts.append(features[starts[u] + p + j] if inside
                         else np.zeros(features.shape[1], features.dtype))
        rows.append(np.concatenate(parts))
    return np.array(rows, dtype=features.dtype).reshape(len(index), -1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [[1], [5, 0, 1, 23, 2], [40], [3, 3, 3]])
@pytest.mark.parametrize("context", [0, 1, 2, 10])
@pytest.mark.parametrize("dims", [1, 7, 28])
def test_context_gather_matches_naive(variant, dtype, lengths, context, dims, rng):
    frames = sum(lengths)
    features = rng.standard_normal((frames, dims)).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = np.concatenate([np.arange(frames), rng.integers(0, frames, 13)]).astype(np.int64)
    expected = naive_windows(features, lengths, index, context)
    out = np.full(expected.shape, np.nan, dtype=dtype)
    assert C.VARIANTS[variant]["context_gather"](features, offsets, index, context, out) is out
    np.testing.assert_array_equal(out, expected)       # a pure copy: exact


@pytest.mark.parametrize("variant", VARIANTS)
def test_context_gather_empty_batch_and_int32_index(variant, rng):
    features = rng.standard_normal((6, 3))
    offsets = np.array([0, 4, 6])
    out = C.VARIANTS[variant]["context_gather"](features, offsets, np.zeros(0, np.int64), 1)
    assert out.shape == (0, 9)
    index = np.array([3, 4], dtype=np.int32)
    got = C.VARIANTS[variant]["context_gather"](features, offsets, index, 1)
    np.testing.assert_array_equal(got, naive_windows(features, [4, 2], index, 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_context_gather_bad_inputs(variant):
    gather = C.VARIANTS[variant]["context_gather"]
    features = np.zeros((6, 2))
    offsets = np.array([0, 4, 6])
    with pytest.raises(ValueError, match=r"offsets must rise from 0 to the number of frames 6"):
        gather(features, np.array([0, 4, 5]), np.array([0]), 1)
    with pytest.raises(ValueError, match=r"offsets must rise"):
        gather(features, np.array([0, 5, 4, 6]), np.array([0]), 1)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 6\), got values in \[0, 6\]"):
        gather(features, offsets, np.array([0, 6]), 1)
    with pytest.raises(TypeError, match="index must be a 1-D integer array"):
        gather(features, offsets, np.array([0.0]), 1)
    with pytest.raises(ValueError, match="context must be a non-negative integer"):
        gather(features, offsets, np.array([0]), -1)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 6\)"):
        gather(features, offsets, np.array([0]), 1, np.zeros((1, 5)))
    with pytest.raises(TypeError, match="out must be float64"):
        gather(features, offsets, np.array([0]), 1, np.zeros((1, 6), np.float32))
