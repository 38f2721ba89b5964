"""Rosenblatt's perceptron: a weighted sum, a step, and the perceptron learning rule.

One perceptron with weights w (n_features,) and bias b sees a sample x (n_features,) and
computes

    z = w . x + b                 the weighted sum (``decision_function``)
    y_hat = step(z)               step(z) = 1 if z > 0 else 0: the linear binary decision

Learning rule (Rosenblatt, 1958), one sample at a time, with target t = +1 for the
positive class and t = -1 for the other:

    if t * z <= 0:                the sample is on the wrong side (or on the boundary)
        w <- w + eta * t * x      turn the boundary towards x
        b <- b + eta * t

No gradient and no surrogate loss: weights change only on mistakes. On linearly separable
data the rule makes finitely many mistakes (Novikoff, 1962), so an epoch with no mistake
comes and training stops there (``converged_ = True``). On data no line separates, such as
XOR, every epoch makes a mistake and training stops at ``max_epochs`` (``converged_ = False``).

More than two classes: one-vs-rest. K perceptrons, one per class k, each trained with
t_k = +1 for class k and -1 for every other class; they all see each sample together
(W is (K, n_features), b is (K,)), and the prediction is the class with the largest z_k.
"""
import numbers

import numpy as np


class Perceptron:
    """Rosenblatt's perceptron, binary or one-vs-rest multi-class, in scikit-learn's style.

        p = Perceptron(max_epochs=100, seed=0).fit(x, y)
        p.converged_, p.n_epochs_, p.score(x, y)

    Parameters: ``learning_rate`` eta (> 0; with zero initial weights it only scales w and
    b, never the predictions), ``max_epochs`` (passes over the data at most), ``shuffle``
    (visit samples in a fresh order each epoch, drawn from ``seed``).

    After ``fit``: ``classes_`` (K,) sorted labels; ``weights_`` (P, n_features) and
    ``bias_`` (P,) with P = 1 perceptron for two classes (positive class ``classes_[1]``)
    or P = K for more; ``converged_`` (an epoch made no mistake); ``n_epochs_`` (epochs
    run); ``mistakes_`` (n_epochs_,) mistakes per epoch, counted over all P perceptrons.
    """

    def __init__(self, learning_rate=1.0, max_epochs=1000, *, shuffle=True, seed=0):
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) \
                or not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, numbers.Integral) \
                or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        self.learning_rate = float(learning_rate)
        self.max_epochs = int(max_epochs)
        self.shuffle = bool(shuffle)
        self.seed = seed

    # -- training --------------------------------------------------------------------
    def fit(self, x, y):
        """Learn from x (N, n_features) and labels y (N,); returns the perceptron itself.

        Everything is checked before any attribute changes, so a failed call leaves a
        fitted perceptron as it was.
        """
        x = _check_features(x, "x")
        y = _check_labels(y, x.shape[0])
        classes, y_index = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(f"y must hold at least 2 classes to separate, got only "
                             f"{classes.tolist()}")
        # targets t (N, P) in {-1, +1}: column k is +1 where the sample is of class k
        if classes.shape[0] == 2:
            targets = np.where(y_index == 1, 1.0, -1.0)[:, None]
        else:
            targets = np.where(y_index[:, None] == np.arange(classes.shape[0]), 1.0, -1.0)
        n_samples, n_features = x.shape
        n_perceptrons = targets.shape[1]

        weights = np.zeros((n_perceptrons, n_features))      # W (P, n_features)
        bias = np.zeros(n_perceptrons)                        # b (P,)
        eta = self.learning_rate
        rng = np.random.default_rng(self.seed)
        mistakes_per_epoch = []
        converged = False
        for _ in range(self.max_epochs):
            order = rng.permutation(n_samples) if self.shuffle else np.arange(n_samples)
            mistakes = 0
            for i in order:
                z = weights @ x[i] + bias                     # z (P,) = W x_i + b
                wrong = targets[i] * z <= 0                   # (P,) which perceptrons erred
                if wrong.any():
                    t = targets[i, wrong]                     # (m,) targets of those
                    weights[wrong] += eta * t[:, None] * x[i]  # w <- w + eta t x_i
                    bias[wrong] += eta * t                    # b <- b + eta t
                    mistakes += int(wrong.sum())
            mistakes_per_epoch.append(mistakes)
            if mistakes == 0:
                converged = True
                break

        self.classes_ = classes
        self.n_features_in_ = n_features
        self.weights_ = weights
        self.bias_ = bias
        self.converged_ = converged
        self.n_epochs_ = len(mistakes_per_epoch)
        self.mistakes_ = np.array(mistakes_per_epoch, dtype=np.int64)
        return self

    # -- using it ----------------------------------------------------------------------
    def decision_function(self, x):
        """z = x W^T + b: (N,) for two classes (> 0 means classes_[1]), else (N, K)."""
        self._check_fitted()
        x = _check_features(x, "x", self.n_features_in_)
        z = x @ self.weights_.T + self.bias_                  # (N, P)
        return z[:, 0] if self.weights_.shape[0] == 1 else z

    def predict(self, x):
        """Labels (N,): step(z) picks between two classes; argmax_k z_k among more."""
        z = self.decision_function(x)
        if z.ndim == 1:
            return self.classes_[(z > 0).astype(np.int64)]    # step(z) in {0, 1}
        return self.classes_[z.argmax(axis=1)]

    def score(self, x, y):
        """Accuracy: the fraction of samples in (x, y) predicted correctly."""
        predicted = self.predict(x)
        y = _check_labels(y, predicted.shape[0])
        return float(np.mean(predicted == y))

    def _check_fitted(self):
        if not hasattr(self, "weights_"):
            raise RuntimeError("this Perceptron is not fitted yet: call fit(x, y) first")

    def __repr__(self):
        return (f"Perceptron(learning_rate={self.learning_rate}, max_epochs={self.max_epochs}, "
                f"shuffle={self.shuffle}, seed={self.seed!r})")


def _check_features(x, name, n_features=None):
    """x as a float64 (N, n_features) array with N >= 1 and finite values, or a clear error."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); need at least one sample "
                         f"and one feature")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{name} has {x.shape[1]} features but the perceptron was fitted "
                         f"on {n_features}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{name} contains NaN or inf (first at row {row})")
    return x


def _check_labels(y, n_samples):
    """y as a 1-D array of n_samples labels (integers, strings, booleans or finite floats)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} labels but x has {n_samples} samples: "
                         f"every sample needs one label")
    if y.dtype.kind not in "iubfUS":
        raise TypeError(f"y must hold integer, string, boolean or float labels, "
                        f"got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"y contains NaN or inf (first at index "
                         f"{int(np.argwhere(~np.isfinite(y))[0][0])})")
    return y
