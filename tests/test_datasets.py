"""Data set plumbing and the toy sets: contents digests (checkpoints and MPI compare them)
and the 2-D lesson sets against scikit-learn and their documented geometry."""
import numpy as np
import pytest

import mlpfast as mf
from mlpfast.data.speech import SpeechFrames
from mlpfast.data.toy2d import linearly_separable, moons
from mlpfast.datasets import ArrayDataset, contents_digest


def test_contents_digest_sees_the_labels_as_well_as_the_samples(rng):
    x = rng.standard_normal((20, 3)).astype(np.float32)
    y = rng.integers(0, 4, 20)
    base = contents_digest(ArrayDataset(x, y, num_classes=4))
    assert contents_digest(ArrayDataset(x.copy(), y.copy(), num_classes=4)) == base
    other_y = y.copy()
    other_y[5] = (other_y[5] + 1) % 4
    assert contents_digest(ArrayDataset(x, other_y, num_classes=4)) != base
    other_x = x.copy()
    other_x[5, 1] += 1.0
    assert contents_digest(ArrayDataset(other_x, y, num_classes=4)) != base


def fit_one_epoch(data, outputs):
    model = mf.MLP([data.num_features, outputs], backend="numpy", seed=0)
    return mf.fit(model, mf.optim.SGD(model.parameters(), lr=0.1), mf.CrossEntropyLoss(), data,
                  epochs=1, batch_size=6, progress=False)


def test_a_dataset_with_more_classes_than_model_outputs_is_refused(rng):
    feats = [rng.standard_normal((6, 2)).astype(np.float32)]
    data = SpeechFrames.from_arrays(feats, [np.array(list("abcabc"))], context=0)
    with pytest.raises(ValueError, match="dataset x has 3 classes but the model has 2 outputs"):
        fit_one_epoch(data, 2)
    assert len(fit_one_epoch(data, 3)["loss"]) == 1


@pytest.mark.parametrize("n_samples", [2, 101, 200])
def test_moons_without_noise_are_scikit_learns(n_samples):
    sklearn = pytest.importorskip("sklearn.datasets")
    expected_x, expected_y = sklearn.make_moons(n_samples, shuffle=False, noise=0.0)
    x, y = moons(n_samples, noise=0.0, seed=0)
    for label in (0, 1):
        ours = x[y == label].astype(np.float64)
        theirs = expected_x[expected_y == label]
        ours, theirs = (a[np.lexsort(a.T[::-1])] for a in (ours, theirs))
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_moons_noise_is_gaussian_with_the_given_deviation():
    clean, y_clean = moons(4000, noise=0.0, seed=1)
    noisy, y = moons(4000, noise=0.2, seed=1)
    assert np.array_equal(y, y_clean)                  # the same shuffle
    residual = (noisy - clean).astype(np.float64)
    assert abs(residual.mean()) < 0.01 and abs(residual.std() - 0.2) < 0.01


@pytest.mark.parametrize("margin,seed", [(0.3, 2), (0.1, 0), (0.5, 7)])
def test_linearly_separable_leaves_a_gap_of_margin_between_the_classes(margin, seed):
    """Any two points on either side of a strip of width ``margin`` are >= margin apart."""
    x, y = linearly_separable(400, margin=margin, seed=seed)
    a, b = x[y == 0].astype(np.float64), x[y == 1].astype(np.float64)
    closest = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)).min()
    assert margin - 1e-6 <= closest < margin + 0.1
