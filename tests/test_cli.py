"""The mlpfast command: info, train mnist (smoke), and argument errors."""
import subprocess
import sys

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


def test_train_mnist_smoke(tmp_path):
    model_path = tmp_path / "m.npz"
    result = run("train", "mnist", "--epochs", "1", "--hidden", "32", "--batch-size", "256",
                 "--save", str(model_path), "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    accuracy = float(result.stdout.split("test accuracy: ")[1].split("%")[0])
    assert accuracy > 85.0
    import mlpfast as mf
    assert mf.load(model_path).state_dict()["0.weight"].shape == (32, 784)


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "mnist", "--hidden", "5,x"])
    assert exit_info.value.code == 2
    assert "--hidden must be comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "mnist", "--epochs", "0"])
    assert cli.main(["train", "mnist", "--backend", "tpu", "--epochs", "1"]) == 1
    assert "backend must be one of" in capsys.readouterr().err
