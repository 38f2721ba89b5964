"""mlpfast.plot: each picture holds the data it claims to show, saves a PNG of the right
size, and refuses bad input; the CLI's --plots writes the MNIST pictures."""
import os

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import AxesImage, imread  # noqa: E402

import mlpfast as mf  # noqa: E402
from mlpfast import cli, plot  # noqa: E402
from mlpfast.data.toy2d import xor  # noqa: E402

RECORDS = [{"epoch": 1, "loss": 0.9, "train_accuracy": 0.70, "val_loss": 0.8,
            "val_accuracy": 0.72, "seconds": 1.0, "samples_per_s": 10.0},
           {"epoch": 2, "loss": 0.5, "train_accuracy": 0.85, "val_loss": 0.6,
            "val_accuracy": 0.80, "seconds": 1.0, "samples_per_s": 10.0},
           {"epoch": 3, "loss": 0.3, "train_accuracy": 0.90, "val_loss": 0.55,
            "val_accuracy": 0.83, "seconds": 1.0, "samples_per_s": 10.0}]


def read_png(path):
    """The saved picture as (height, width, channels) floats; checks it is not blank."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels[..., :3].std() > 0.01
    return pixels


def images(fig):
    return [a for ax in fig.axes for a in ax.get_images() if isinstance(a, AxesImage)]


def test_training_curves(tmp_path):
    history = mf.History()
    for record in RECORDS:
        history.append(record)
    path = tmp_path / "curves.png"
    fig = plot.training_curves(history, path)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [0.9, 0.5, 0.3])
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [0.8, 0.6, 0.55])
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [70, 85, 90])
    np.testing.assert_allclose(acc_ax.lines[1].get_xdata(), [1, 2, 3])
    assert read_png(path).shape[:2] == (400, 1000)


def test_training_curves_without_validation():
    records = [{k: v for k, v in r.items() if not k.startswith("val")} for r in RECORDS]
    loss_ax, acc_ax = plot.training_curves(records).axes
    assert len(loss_ax.lines) == 1 and len(acc_ax.lines) == 1


def test_confusion_matrix(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    path = tmp_path / "cm.png"
    fig = plot.confusion_matrix(matrix, path, class_names=["a", "b", "c"])
    ax = fig.axes[0]
    np.testing.assert_array_equal(images(fig)[0].get_array(), matrix)
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(matrix.ravel().tolist())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert "25 samples, accuracy 84.00%" in ax.get_title()
    read_png(path)


def test_first_layer_weights(tmp_path):
    model = mf.MLP([784, 5, 10], seed=0)
    path = tmp_path / "w.png"
    fig = plot.first_layer_weights(model, path, max_units=3)
    drawn = images(fig)
    assert len(drawn) == 3
    weights = model.state_dict()["0.weight"]
    for unit, image in enumerate(drawn):
        np.testing.assert_array_equal(image.get_array(), weights[unit].reshape(28, 28))
        low, high = image.get_clim()
        assert low == -high == -np.abs(weights[unit]).max()
    assert len(images(plot.first_layer_weights(model, image_shape=(16, 49)))) == 5
    read_png(path)


def test_misclassified(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((10, 784))
    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    y_pred = np.array([0, 7, 2, 5, 4, 5, 6, 1, 8, 9])   # wrong at 1, 3, 7
    path = tmp_path / "wrong.png"
    fig = plot.misclassified(x, y_true, y_pred, path)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["true 1\npred 7", "true 3\npred 5", "true 7\npred 1"]
    np.testing.assert_array_equal(images(fig)[1].get_array(), x[3].reshape(28, 28))
    assert "3 shown of 3 wrong out of 10" in fig.texts[0].get_text()
    assert len(images(plot.misclassified(x, y_true, y_pred, max_images=2))) == 2
    read_png(path)


class ThresholdOnFirstCoordinate:
    def predict(self, points):
        return (np.asarray(points)[:, 0] > 0.5).astype(np.int64)


def test_decision_regions_perceptron_and_mlp(tmp_path):
    x, y = xor()
    perceptron = mf.Perceptron(max_epochs=50, seed=0).fit(x, y)
    mlp = mf.MLP([2, 8, 2], activation="tanh", seed=0)
    mf.fit(mlp, mf.optim.Adam(mlp.parameters(), lr=0.05), mf.CrossEntropyLoss(), x, y,
           epochs=300, batch_size=4, seed=0, progress=False)
    path = tmp_path / "regions.png"
    fig = plot.decision_regions({"perceptron": perceptron, "MLP": mlp,
                                 "x1 > 0.5": ThresholdOnFirstCoordinate()}, x, y, path,
                                resolution=50)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == f"perceptron: accuracy {100 * perceptron.score(x, y):.1f}%"
    assert titles[1] == "MLP: accuracy 100.0%"
    assert titles[2] == "x1 > 0.5: accuracy 50.0%"
    assert read_png(path).shape[:2] == (420, 3 * 420)


def test_mnist_report(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.random((40, 784), dtype=np.float32), rng.integers(0, 10, 40)
    model = mf.MLP([784, 8, 10], seed=0)
    history = mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), x, y,
                     epochs=2, batch_size=16, val=(x, y), seed=0, progress=False)
    paths = plot.mnist_report(model, history, x, y, tmp_path / "out")
    assert [os.path.basename(p) for p in paths] == [
        "training_curves.png", "confusion_matrix.png", "per_class_scores.png",
        "first_layer_weights.png", "misclassified.png"]
    for p in paths:
        read_png(p)


def test_per_class_scores_draw_each_class_and_the_macro_averages():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    scores = mf.metrics.precision_recall_f1(y_true, y_pred)
    fig = plot.per_class_scores(scores)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    expected = sorted(round(100 * v, 4) for k in ("precision", "recall", "f1")
                      for v in scores[k])
    assert heights == expected
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == f"precision (macro {100 * scores['macro']['precision']:.2f}%)"
    with pytest.raises(ValueError, match="precision_recall_f1"):
        plot.per_class_scores({"labels": [0]})


@pytest.mark.parametrize("call, match", [
    (lambda: plot.training_curves([]), "history"),
    (lambda: plot.training_curves([{"accuracy": 1}]), "history"),
    (lambda: plot.confusion_matrix(np.ones((2, 3), int)), "square"),
    (lambda: plot.confusion_matrix(np.array([[1.5, 0], [0, 1]])), "integer"),
    (lambda: plot.confusion_matrix(np.eye(2, dtype=int), class_names=["a"]), "class_names"),
    (lambda: plot.first_layer_weights(mf.MLP([10, 2], seed=0)), "784 pixels"),
    (lambda: plot.first_layer_weights(mf.ReLU()), "no Linear"),
    (lambda: plot.first_layer_weights(mf.MLP([784, 2], seed=0), max_units=0), "max_units"),
    (lambda: plot.misclassified(np.zeros((3, 10)), [0, 1, 2], [0, 1, 2]), r"\(N, 784\)"),
    (lambda: plot.misclassified(np.zeros((3, 784)), [0, 1], [0, 1, 2]), "y_true and y_pred"),
    (lambda: plot.decision_regions({}, np.zeros((2, 2)), [0, 1]), "classifiers"),
    (lambda: plot.decision_regions({"a": ThresholdOnFirstCoordinate()}, np.zeros((2, 3)),
                                   [0, 1]), r"\(N, 2\)"),
    (lambda: plot.decision_regions({"a": ThresholdOnFirstCoordinate()}, np.zeros((2, 2)),
                                   [0.0, 1.0]), "integer labels"),
    (lambda: plot.decision_regions({"a": ThresholdOnFirstCoordinate()}, np.zeros((2, 2)),
                                   [0, 11]), "classes 0..9"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cli_plots_writes_the_mnist_pictures(monkeypatch, tmp_path, capsys):
    def tiny_mnist(root=None, download=True):
        rng = np.random.default_rng(0)
        return ((rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64)),
                (rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32)))

    monkeypatch.setattr(mf.datasets, "mnist", tiny_mnist)
    out_dir = tmp_path / "plots"
    assert cli.main(["train", "mnist", "--hidden", "16", "--epochs", "2", "--batch-size", "32",
                     "--backend", "numpy", "--no-progress", "--plots", str(out_dir)]) == 0
    out = capsys.readouterr().out
    names = sorted(os.listdir(out_dir))
    assert names == ["confusion_matrix.png", "first_layer_weights.png", "misclassified.png",
                     "per_class_scores.png",
                     "training_curves.png"]
    for name in names:
        assert f"wrote {out_dir / name}" in out
        read_png(out_dir / name)


def test_cli_train_xor_plots_the_decision_regions(tmp_path, capsys):
    assert cli.main(["train", "xor", "--plots", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MLP 2-8-2: training accuracy 100.0%" in out
    for name in ("decision_regions_xor.png", "training_curves_xor.png"):
        assert f"wrote {tmp_path / name}" in out
        read_png(tmp_path / name)
