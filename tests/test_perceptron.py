"""Perceptron: the learning rule by hand, convergence on separable data, failure on XOR,
one-vs-rest against independent binary perceptrons, bad input."""
import numpy as np
import pytest

import mlpfast as mf
from mlpfast.data.toy2d import linearly_separable, moons, xor


def rosenblatt_reference(x, t, epochs, eta=1.0, orders=None, mistakes=None):
    """One binary perceptron, sample by sample in the given order (``orders``: one index
    order per epoch, else 0..N-1), targets t in {-1, +1}; appends each epoch's mistakes to
    the list ``mistakes`` when one is given."""
    w, b = np.zeros(x.shape[1]), 0.0
    for epoch in range(epochs):
        wrong = 0
        for i in (range(len(x)) if orders is None else orders[epoch]):
            if t[i] * (w @ x[i] + b) <= 0:
                w, b = w + eta * t[i] * x[i], b + eta * t[i]
                wrong += 1
        if mistakes is not None:
            mistakes.append(wrong)
    return w, b


def test_learning_rule_by_hand():
    # epoch 1: (1,0) t=+1, z=0 -> w=(1,0), b=1; (0,1) t=-1, z=1 -> w=(1,-1), b=0
    # epoch 2: z=(1, -1) agrees with t everywhere -> converged after 2 epochs
    p = mf.Perceptron(shuffle=False).fit([[1, 0], [0, 1]], [1, 0])
    np.testing.assert_array_equal(p.weights_, [[1.0, -1.0]])
    np.testing.assert_array_equal(p.bias_, [0.0])
    assert p.converged_ and p.n_epochs_ == 2
    assert p.mistakes_.tolist() == [2, 0]
    np.testing.assert_array_equal(p.decision_function([[1, 0], [0, 1], [2, 1]]), [1, -1, 1])
    np.testing.assert_array_equal(p.predict([[1, 0], [0, 1], [0, 0]]), [1, 0, 0])  # step(0) = 0


@pytest.mark.parametrize("seed", range(5))
def test_separable_data_reaches_100_percent_and_converges(seed):
    x, y = linearly_separable(200, margin=0.1, seed=seed)
    p = mf.Perceptron(max_epochs=1000, seed=seed)
    assert p.fit(x, y) is p
    assert p.converged_
    assert 1 <= p.n_epochs_ < 1000
    assert p.mistakes_.shape == (p.n_epochs_,) and p.mistakes_[-1] == 0
    assert (p.mistakes_[:-1] > 0).all()
    assert p.score(x, y) == 1.0
    z = p.decision_function(x)
    assert z.shape == (200,) and (np.where(y == 1, z, -z) > 0).all()


def test_xor_fails_and_reports_non_convergence():
    x, y = xor()
    p = mf.Perceptron(max_epochs=200, seed=0).fit(x, y)
    assert not p.converged_
    assert p.n_epochs_ == 200
    assert (p.mistakes_ > 0).all()
    assert p.score(x, y) <= 0.75


@pytest.mark.parametrize("seed", range(3))
def test_noisy_xor_and_moons_do_not_converge(seed):
    for x, y in (xor(25, noise=0.15, seed=seed), moons(100, noise=0.1, seed=seed)):
        p = mf.Perceptron(max_epochs=50, seed=seed).fit(x, y)
        assert not p.converged_ and p.n_epochs_ == 50
        assert p.score(x, y) < 1.0


def test_matches_the_plain_loop_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 5))
    y = (x @ rng.standard_normal(5) + 0.3 * rng.standard_normal(37) > 0).astype(int)
    p = mf.Perceptron(learning_rate=0.25, max_epochs=7, shuffle=False).fit(x, y)
    w, b = rosenblatt_reference(x, np.where(y == 1, 1.0, -1.0), p.n_epochs_, eta=0.25)
    np.testing.assert_allclose(p.weights_[0], w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.bias_[0], b, rtol=0, atol=1e-12)


def test_one_vs_rest_equals_independent_binary_perceptrons():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])
    y = rng.integers(0, 3, size=90)
    x = centers[y] + 0.7 * rng.standard_normal((90, 2))
    p = mf.Perceptron(max_epochs=4, shuffle=False).fit(x, y)
    assert p.weights_.shape == (3, 2) and p.bias_.shape == (3,)
    mistakes = np.zeros(p.n_epochs_, np.int64)
    for k in range(3):                       # each row: class k against the rest
        own = []
        w, b = rosenblatt_reference(x, np.where(y == k, 1.0, -1.0), p.n_epochs_, mistakes=own)
        np.testing.assert_allclose(p.weights_[k], w, atol=1e-12)
        np.testing.assert_allclose(p.bias_[k], b, atol=1e-12)
        mistakes += own
    # counted over all 3 perceptrons (a sample two of them get wrong counts twice)
    np.testing.assert_array_equal(p.mistakes_, mistakes)
    z = p.decision_function(x)
    assert z.shape == (90, 3)
    np.testing.assert_array_equal(p.predict(x), z.argmax(axis=1))


def test_multiclass_separable_blobs_converge_with_string_labels():
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 5.0], [5.0, -3.0], [-5.0, -3.0]])
    index = rng.integers(0, 3, size=150)
    x = centers[index] + 0.5 * rng.standard_normal((150, 2))
    names = np.array(["cat", "dog", "eel"])
    p = mf.Perceptron(max_epochs=1000, seed=0).fit(x, names[index])
    assert p.converged_
    assert p.classes_.tolist() == ["cat", "dog", "eel"]
    assert p.score(x, names[index]) == 1.0
    assert set(p.predict(x[:5]).tolist()) <= {"cat", "dog", "eel"}


def test_binary_positive_class_is_the_larger_label():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    p = mf.Perceptron(seed=0).fit(x, [7, 7, 9, 9])
    assert p.classes_.tolist() == [7, 9]
    assert (p.decision_function([[3.0]]) > 0).all()
    assert p.predict([[-3.0], [3.0]]).tolist() == [7, 9]


def test_learning_rate_only_scales_the_weights_from_zero():
    x, y = linearly_separable(60, seed=4)
    a = mf.Perceptron(learning_rate=1.0, seed=2).fit(x, y)
    b = mf.Perceptron(learning_rate=0.125, seed=2).fit(x, y)
    np.testing.assert_allclose(b.weights_, 0.125 * a.weights_, rtol=1e-12)
    np.testing.assert_allclose(b.bias_, 0.125 * a.bias_, rtol=1e-12)
    assert a.n_epochs_ == b.n_epochs_


def test_shuffle_visits_each_epoch_in_an_order_drawn_from_the_seed():
    """shuffle=True: epoch e visits default_rng(seed)'s e-th permutation (a reference
    loop over those orders gives the same weights, bias and mistakes)."""
    x, y = moons(60, seed=1)
    t = np.where(y == 1, 1.0, -1.0)
    for seed in (0, 9):
        p = mf.Perceptron(max_epochs=6, seed=seed).fit(x, y)
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(len(x)) for _ in range(p.n_epochs_)]
        mistakes = []
        w, b = rosenblatt_reference(x, t, p.n_epochs_, orders=orders, mistakes=mistakes)
        np.testing.assert_allclose(p.weights_[0], w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(p.bias_[0], b, rtol=0, atol=1e-12)
        assert p.mistakes_.tolist() == mistakes
    unshuffled = mf.Perceptron(max_epochs=6, shuffle=False).fit(x, y)
    assert not np.array_equal(unshuffled.weights_, p.weights_)


def test_seed_makes_fit_reproducible():
    x, y = moons(80, seed=0)
    a = mf.Perceptron(max_epochs=20, seed=5).fit(x, y)
    b = mf.Perceptron(max_epochs=20, seed=5).fit(x, y)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.mistakes_, b.mistakes_)


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": 0}, "learning_rate"), ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": "1"}, "learning_rate"), ({"max_epochs": 0}, "max_epochs"),
    ({"max_epochs": 2.5}, "max_epochs"), ({"max_epochs": True}, "max_epochs"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mf.Perceptron(**kwargs)


@pytest.mark.parametrize("x, y, error, match", [
    ([1.0, 2.0], [0, 1], ValueError, "2-D"),
    (np.zeros((0, 2)), [], ValueError, "empty"),
    ([[0.0, np.nan], [1.0, 1.0]], [0, 1], ValueError, "NaN"),
    ([["a", "b"], ["c", "d"]], [0, 1], TypeError, "numbers"),
    ([[0.0], [1.0]], [0, 1, 1], ValueError, "3 labels but x has 2"),
    ([[0.0], [1.0]], [[0], [1]], ValueError, "1-D"),
    ([[0.0], [1.0]], [0.0, np.nan], ValueError, "NaN"),
    ([[0.0], [1.0]], [1, 1], ValueError, "at least 2 classes"),
    ([[0.0], [1.0]], [object(), object()], TypeError, "labels"),
])
def test_bad_fit_input_leaves_a_fitted_perceptron_unchanged(x, y, error, match):
    p = mf.Perceptron(shuffle=False).fit([[1, 0], [0, 1]], [1, 0])
    before = (p.weights_.copy(), p.bias_.copy(), p.classes_.copy(), p.n_epochs_)
    with pytest.raises(error, match=match):
        p.fit(x, y)
    np.testing.assert_array_equal(p.weights_, before[0])
    np.testing.assert_array_equal(p.bias_, before[1])
    np.testing.assert_array_equal(p.classes_, before[2])
    assert p.n_epochs_ == before[3]


def test_bad_predict_input():
    p = mf.Perceptron()
    with pytest.raises(RuntimeError, match="not fitted"):
        p.predict([[0.0, 1.0]])
    p.fit([[1, 0], [0, 1]], [1, 0])
    with pytest.raises(ValueError, match="3 features but the perceptron was fitted on 2"):
        p.predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        p.decision_function([[np.inf, 0.0]])
    with pytest.raises(ValueError, match="2 labels but x has 1"):
        p.score([[1.0, 0.0]], [1, 0])


def test_toy_sets():
    x, y = xor()
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    x, y = xor(10, noise=0.1, seed=0)
    assert x.shape == (40, 2) and x.dtype == np.float32 and np.bincount(y).tolist() == [20, 20]
    x, y = moons(101, noise=0.0)
    assert x.shape == (101, 2) and np.bincount(y).tolist() == [50, 51]
    upper = x[y == 0]                                   # noise 0: on the unit half-circle
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0, atol=1e-6)
    x, y = linearly_separable(51, margin=0.3, seed=2)
    assert x.shape == (51, 2) and np.bincount(y).tolist() == [26, 25]
    assert np.abs(x).max() <= 1.0
    for bad in (lambda: xor(0), lambda: moons(1), lambda: moons(10, noise=-1),
                lambda: linearly_separable(10, margin=1.0)):
        with pytest.raises(ValueError):
            bad()


def test_cli_train_xor_and_moons(capsys):
    from mlpfast import cli
    assert cli.main(["train", "xor", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "perceptron: training accuracy 50.0%, converged: False after 100 epochs" in out
    assert "Total params: 42" in out                       # 2*8+8 + 8*2+2, printed first
    assert out.index("Total params") < out.index("MLP 2-8-2: training accuracy 100.0%")
    assert cli.main(["train", "moons", "--samples", "60", "--no-progress"]) == 0
    assert "MLP 2-16-2: training accuracy 100.0%" in capsys.readouterr().out
    assert cli.main(["train", "moons", "--noise", "-1", "--no-progress"]) == 1
    assert "noise must be a finite number >= 0" in capsys.readouterr().err
