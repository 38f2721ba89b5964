"""Pictures of training and of what a model learned (needs the ``plot`` extra: matplotlib).

    training_curves(history)             loss and accuracy per epoch, train and validation
    confusion_matrix(matrix)             true class x predicted class counts
    per_class_scores(scores)             precision, recall and f1 of each class, as bars
    first_layer_weights(model)           each first-layer unit's weights as an image (28x28)
    misclassified(x, y_true, y_pred)     a grid of wrongly classified images, true and predicted
    decision_regions({name: model}, x, y)  the class each model gives every point of a 2-D plane
    mnist_report(model, history, x, y, out_dir)  the first five for an MNIST run, as PNGs

Every function returns a matplotlib ``Figure`` and, given ``path``, saves it as a PNG there.
Figures are drawn on matplotlib's Agg canvas without pyplot, so they work headless (no
display, no GUI backend) and leave pyplot's global state alone.
"""
import math
import os

import numpy as np

try:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
except ImportError as e:                                    # pragma: no cover - extra missing
    raise ImportError("mlpfast.plot needs matplotlib: pip install 'mlpfast[plot]'") from e

from .nn import Linear, Module, Sequential

CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _finish(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=fig.dpi)
    return fig


def training_curves(history, path=None):
    """Loss (left) and accuracy (right) per epoch, train and validation when recorded.

    ``history``: the ``History`` that ``fit`` returns, or a list of its per-epoch dicts.
    """
    records = getattr(history, "epochs", history)
    if not isinstance(records, (list, tuple)) or not records \
            or not all(isinstance(r, dict) and "loss" in r for r in records):
        raise ValueError("history must be a non-empty History from fit() or a list of its "
                         "per-epoch records (dicts with at least 'loss')")
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    fig = Figure(figsize=(10, 4), dpi=100)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, series, ylabel in (
            (loss_ax, (("loss", "train"), ("val_loss", "validation")), "loss"),
            (acc_ax, (("train_accuracy", "train"), ("val_accuracy", "validation")),
             "accuracy (%)")):
        for key, label in series:
            values = [r.get(key) for r in records]
            if all(v is not None for v in values):
                scale = 100.0 if "accuracy" in key else 1.0
                ax.plot(epochs, [scale * v for v in values], label=label,
                        marker="o" if len(records) <= 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.set_title("loss per epoch")
    acc_ax.set_title("accuracy per epoch")
    fig.tight_layout()
    return _finish(fig, path)


def confusion_matrix(matrix, path=None, class_names=None):
    """Counts of (true class, predicted class), rows = true, columns = predicted.

    The diagonal holds the correct predictions; each cell is written as its count.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"matrix must be square (classes, classes), got shape {matrix.shape}")
    if matrix.dtype.kind not in "iu" or (matrix < 0).any():
        raise ValueError("matrix must hold non-negative integer counts")
    k = matrix.shape[0]
    names = _class_names(class_names, k)
    fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"confusion matrix ({matrix.sum():,} samples, accuracy {100 * accuracy:.2f}%)",
                 fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def per_class_scores(scores, path=None, class_names=None):
    """Precision, recall and f1 of each class as grouped bars, with the macro averages.

    ``scores``: ``mf.metrics.precision_recall_f1(...)``, or ``evaluate(...)["scores"]``.
    """
    try:
        labels = np.asarray(scores["labels"])
        bars = {k: np.asarray(scores[k], dtype=float) for k in ("precision", "recall", "f1")}
    except (TypeError, KeyError) as e:
        raise ValueError(f"scores must come from mf.metrics.precision_recall_f1 ({e})") \
            from None
    if labels.ndim != 1 or labels.size == 0 or any(b.shape != labels.shape
                                                   for b in bars.values()):
        raise ValueError("scores must hold one precision, recall and f1 per class")
    names = _class_names(class_names, labels.size) if class_names is not None \
        else [str(int(label)) for label in labels]
    fig = Figure(figsize=(2.0 + 0.55 * labels.size, 4), dpi=100)
    ax = fig.subplots()
    width, positions = 0.27, np.arange(labels.size)
    for i, (key, values) in enumerate(bars.items()):
        ax.bar(positions + (i - 1) * width, 100 * values, width,
               label=f"{key} (macro {100 * scores['macro'][key]:.2f}%)")
    low = min(float(min(b.min() for b in bars.values())) * 100, 100.0)
    ax.set_ylim(max(0.0, low - 2.0), 100.5)
    ax.set_xticks(positions, names)
    ax.set_xlabel("class")
    ax.set_ylabel("%")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("per-class precision, recall and f1", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def first_layer_weights(model, path=None, image_shape=(28, 28), max_units=64):
    """The first Linear layer's weight rows W[j] (in_features,) drawn as ``image_shape`` images.

    Each unit j computes w_j . x + b_j, so its row shows which pixels push it up (red) or
    down (blue); each image has its own symmetric color scale around 0.
    """
    weights = _first_linear(model).weight.numpy()               # W (out, in)
    rows, cols = _check_image_shape(image_shape)
    if weights.shape[1] != rows * cols:
        raise ValueError(f"image_shape {image_shape} has {rows * cols} pixels but the first "
                         f"layer has {weights.shape[1]} inputs")
    count = min(_positive_int("max_units", max_units), weights.shape[0])
    grid = math.ceil(math.sqrt(count))
    fig = Figure(figsize=(1.1 * grid, 1.1 * grid + 0.4), dpi=100)
    axes = np.atleast_1d(fig.subplots(grid, grid)).ravel()
    for unit, ax in enumerate(axes):
        ax.set_axis_off()
        if unit < count:
            w = weights[unit].reshape(rows, cols)
            scale = float(np.abs(w).max()) or 1.0
            ax.imshow(w, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_title(str(unit), fontsize=7)
    fig.suptitle(f"first-layer weights: {count} of {weights.shape[0]} units "
                 f"(red +, blue -)", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def misclassified(x, y_true, y_pred, path=None, image_shape=(28, 28), max_images=36):
    """A grid of the first ``max_images`` samples with y_pred != y_true, titled true / predicted."""
    x = np.asarray(x)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rows, cols = _check_image_shape(image_shape)
    if x.ndim != 2 or x.shape[1] != rows * cols:
        raise ValueError(f"x must be (N, {rows * cols}) for image_shape {image_shape}, "
                         f"got shape {x.shape}")
    if y_true.shape != (x.shape[0],) or y_pred.shape != (x.shape[0],):
        raise ValueError(f"y_true and y_pred must both have shape ({x.shape[0]},), got "
                         f"{y_true.shape} and {y_pred.shape}")
    wrong = np.flatnonzero(y_true != y_pred)
    shown = wrong[:_positive_int("max_images", max_images)]
    grid = max(1, math.ceil(math.sqrt(shown.shape[0])))
    fig = Figure(figsize=(1.3 * grid, 1.45 * grid + 0.4), dpi=100)
    axes = np.atleast_1d(fig.subplots(grid, grid)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, shown):
        ax.imshow(x[i].reshape(rows, cols), cmap="gray_r")
        ax.set_title(f"true {y_true[i]}\npred {y_pred[i]}", fontsize=7, color="#b00000")
    fig.suptitle(f"misclassified: {shown.shape[0]} shown of {wrong.shape[0]} wrong "
                 f"out of {x.shape[0]:,}", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def decision_regions(classifiers, x, y, path=None, resolution=200, padding=0.5):
    """Side-by-side panels: the class each classifier predicts over the plane, and the data.

    ``classifiers``: {title: model}, where a model is a fitted ``Perceptron`` (anything with
    ``predict(points)``) or an mlpfast network (its argmax output is the class).
    ``x`` (N, 2), ``y`` (N,) integer labels; each panel's title adds the accuracy on (x, y).
    """
    from .train import predict as predict_network

    if not isinstance(classifiers, dict) or not classifiers:
        raise ValueError("classifiers must be a non-empty dict {title: fitted model}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be (N, 2) points in the plane, got shape {x.shape}")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"y must be ({x.shape[0]},) integer labels, got {y.dtype} of shape "
                         f"{y.shape}")
    resolution = _positive_int("resolution", resolution)
    low, high = x.min(axis=0) - padding, x.max(axis=0) + padding
    grid_x, grid_y = np.meshgrid(np.linspace(low[0], high[0], resolution),
                                 np.linspace(low[1], high[1], resolution))
    plane = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)   # (resolution^2, 2)

    def classify(model, points):
        if isinstance(model, Module):
            return predict_network(model, points)
        return np.asarray(model.predict(points))

    regions = {title: classify(model, plane).reshape(grid_x.shape)
               for title, model in classifiers.items()}
    k = int(max(y.max(), 1, *(r.max() for r in regions.values()))) + 1
    if y.min() < 0 or k > len(CLASS_COLORS):
        raise ValueError(f"decision_regions draws classes 0..{len(CLASS_COLORS) - 1}; got "
                         f"labels or predictions in {min(0, int(y.min()))}..{k - 1}")
    colors = ListedColormap(CLASS_COLORS[:k])
    fig = Figure(figsize=(4.2 * len(classifiers), 4.2), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, len(classifiers)))
    for ax, (title, model) in zip(axes, classifiers.items()):
        accuracy = float(np.mean(classify(model, x) == y))
        ax.contourf(grid_x, grid_y, regions[title], levels=np.arange(k + 1) - 0.5, cmap=colors,
                    alpha=0.3)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap=colors, vmin=-0.5, vmax=k - 0.5,
                   edgecolors="black", linewidths=0.5, s=30)
        ax.set_title(f"{title}: accuracy {100 * accuracy:.1f}%", fontsize=10)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_aspect("equal")
    fig.tight_layout()
    return _finish(fig, path)


def mnist_report(model, history, x_test, y_test, out_dir):
    """Write training_curves.png, confusion_matrix.png, per_class_scores.png,
    first_layer_weights.png and misclassified.png for an MNIST model into ``out_dir``;
    returns their paths."""
    from .train import evaluate, predict as predict_network

    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.png") for name in
             ("training_curves", "confusion_matrix", "per_class_scores", "first_layer_weights",
              "misclassified")}
    training_curves(history, paths["training_curves"])
    result = evaluate(model, x_test, y_test)
    confusion_matrix(result["confusion_matrix"], paths["confusion_matrix"])
    per_class_scores(result["scores"], paths["per_class_scores"])
    first_layer_weights(model, paths["first_layer_weights"])
    misclassified(x_test, y_test, predict_network(model, x_test), paths["misclassified"])
    return list(paths.values())


def _first_linear(model):
    layers = model.layers if isinstance(model, Sequential) else [model]
    for layer in layers:
        if isinstance(layer, Linear):
            return layer
    raise ValueError(f"model has no Linear layer to draw (got {type(model).__name__})")


def _check_image_shape(image_shape):
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2 \
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                   for s in image_shape):
        raise ValueError(f"image_shape must be (rows, columns) of positive integers, "
                         f"got {image_shape!r}")
    return int(image_shape[0]), int(image_shape[1])


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _class_names(class_names, k):
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    return names
