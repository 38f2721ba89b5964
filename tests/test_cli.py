"""The mlpfast command: info, train mnist (smoke), and argument errors."""
import subprocess
import sys

import numpy as np
import pytest

from mlpfast import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "mlpfast.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_info_lists_backends_and_features():
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert "mlpfast 0.1.0" in result.stdout
    assert "backends available:" in result.stdout and "numpy" in result.stdout
    assert "threads:" in result.stdout and "numba" in result.stdout


# README (Python API): `mlpfast train mnist`'s defaults (784-512-256-10, Adam 1e-3 with the
# cosine schedule, 10 epochs, batch 128) reach 98.32-98.41% for seeds 0-2. The default run
# (seed 0) must land there, give or take 0.15 points (15 of the 10,000 test images): another
# CPU's kernels or another thread count change the last bits of the sums, and so a few
# predictions (1 and 2 threads give 98.34% here).
PROMISED_ACCURACY = (98.32, 98.41)
MARGIN = 0.15


def test_train_mnist_defaults_reach_the_accuracy_the_readme_promises(tmp_path):
    model_path = tmp_path / "m.npz"
    result = run("train", "mnist", "--save", str(model_path))
    assert result.returncode == 0, result.stderr
    assert "MLP 784-512-256-10 (relu)" in result.stdout and "epoch 10/10" in result.stdout
    assert "adam lr 0.001 (cosine), batch 128" in result.stdout
    assert "macro avg" in result.stdout and "weighted avg" in result.stdout   # the report
    accuracy = float(result.stdout.split("test accuracy: ")[1].split("%")[0])
    low, high = PROMISED_ACCURACY
    assert low - MARGIN <= accuracy <= high + MARGIN, result.stdout
    import mlpfast as mf
    assert mf.load(model_path).state_dict()["0.weight"].shape == (512, 784)


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "mnist", "--hidden", "5,x"])
    assert exit_info.value.code == 2
    assert "--hidden must be comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "mnist", "--epochs", "0"])
    assert cli.main(["train", "mnist", "--backend", "tpu", "--epochs", "1"]) == 1
    assert "backend must be one of" in capsys.readouterr().err


def test_a_recipe_sets_the_options_left_at_their_defaults():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "mnist", "--recipe", "best", "--epochs", "3"])
    args = cli._apply_recipe(args, args.parser)
    recipe = cli.RECIPES["best"]
    assert args.epochs == 3                                  # given: kept
    for key, value in recipe.items():
        if key != "epochs":
            assert getattr(args, key) == value, key


def test_early_stopping_needs_a_holdout_and_a_holdout_is_drawn_from_training(capsys):
    assert cli.main(["train", "mnist", "--early-stopping", "2", "--epochs", "1"]) == 1
    assert "--early-stopping needs --holdout N" in capsys.readouterr().err
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    (x_train, y_train), (x_val, y_val) = cli._holdout(x, y, 3, seed=0)
    assert len(x_val) == 3 and len(x_train) == 7
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == list(range(10))
    assert cli._holdout(x, y, 0, seed=0)[1] is None
    with pytest.raises(ValueError, match="--holdout must be below the 10 training images"):
        cli._holdout(x, y, 10, seed=0)
