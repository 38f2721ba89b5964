"""Small 2-D classification sets for the perceptron and MLP lessons (and their pictures).

Each returns ``x`` float32 (N, 2) and ``y`` int64 (N,) with labels 0 and 1.

    linearly_separable   two classes on either side of a line, with a gap: a perceptron solves it
    xor                  the XOR truth table (optionally as noisy clusters): no line separates it
    moons                two interleaved half-circles: curved boundary, an MLP's job
"""
import numbers

import numpy as np


def _check_count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def linearly_separable(n_samples=100, *, margin=0.2, seed=0):
    """Points uniform in [-1, 1]^2, labelled by the side of a random line through the box.

    Label 1 where n . x + c > 0, with n a random unit normal; half the points on each side.
    Points closer than ``margin`` / 2 to the line are left out, so a gap of width ``margin``
    separates the classes.
    """
    n_samples = _check_count("n_samples", n_samples, 2)
    margin = _check_nonnegative("margin", margin)
    if margin >= 1:
        raise ValueError(f"margin must be < 1 to leave room in the [-1, 1]^2 box, got {margin}")
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])          # n (2,), |n| = 1
    offset = rng.uniform(-0.3, 0.3)                            # c: the line n . x + c = 0
    wanted = {1: n_samples // 2, 0: n_samples - n_samples // 2}
    sides = {0: np.empty((0, 2)), 1: np.empty((0, 2))}
    while any(sides[k].shape[0] < wanted[k] for k in (0, 1)):
        candidates = rng.uniform(-1, 1, size=(4 * n_samples, 2))
        distance = candidates @ normal + offset                # signed distance to the line
        sides[1] = np.concatenate([sides[1], candidates[distance >= margin / 2]])
        sides[0] = np.concatenate([sides[0], candidates[distance <= -margin / 2]])
    x = np.concatenate([sides[0][:wanted[0]], sides[1][:wanted[1]]])
    y = np.repeat(np.array([0, 1], dtype=np.int64), [wanted[0], wanted[1]])
    order = rng.permutation(n_samples)
    return x[order].astype(np.float32), y[order]


def xor(n_per_corner=1, *, noise=0.0, seed=0):
    """XOR: corners (0,0), (1,1) are class 0, (0,1), (1,0) class 1.

    ``n_per_corner=1, noise=0`` is the truth table itself (4 points); more points per corner
    with Gaussian ``noise`` (standard deviation) make four clusters.
    """
    n_per_corner = _check_count("n_per_corner", n_per_corner)
    noise = _check_nonnegative("noise", noise)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    labels = np.array([0, 1, 1, 0], dtype=np.int64)             # y = x1 XOR x2
    rng = np.random.default_rng(seed)
    x = np.repeat(corners, n_per_corner, axis=0)
    x += noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), np.repeat(labels, n_per_corner)


def moons(n_samples=200, *, noise=0.1, seed=0):
    """Two interleaved half-circles (as scikit-learn's make_moons), shuffled.

    Class 0: (cos a, sin a) for a in [0, pi]; class 1: (1 - cos a, 0.5 - sin a);
    then Gaussian ``noise`` (standard deviation) is added to every coordinate.
    """
    n_samples = _check_count("n_samples", n_samples, 2)
    noise = _check_nonnegative("noise", noise)
    rng = np.random.default_rng(seed)
    n_upper = n_samples // 2
    n_lower = n_samples - n_upper
    a_upper = np.linspace(0, np.pi, n_upper)
    a_lower = np.linspace(0, np.pi, n_lower)
    upper = np.stack([np.cos(a_upper), np.sin(a_upper)], axis=1)
    lower = np.stack([1 - np.cos(a_lower), 0.5 - np.sin(a_lower)], axis=1)
    x = np.concatenate([upper, lower]) + noise * rng.standard_normal((n_samples, 2))
    y = np.concatenate([np.zeros(n_upper, np.int64), np.ones(n_lower, np.int64)])
    order = rng.permutation(n_samples)
    return x[order].astype(np.float32), y[order]
