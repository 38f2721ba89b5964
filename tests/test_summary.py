"""summary(): parameter counts, FLOPs, shapes and memory per layer; the printed table; the CLI."""
import io

import numpy as np
import pytest

import mlpfast as mf
from mlpfast import cli


def test_mnist_mlp_has_535818_parameters(capsys):
    model = mf.MLP([784, 512, 256, 10], seed=0)
    result = mf.summary(model, 784)
    printed = capsys.readouterr().out
    assert "Total params: 535,818" in printed
    assert result.total_params == 535_818
    assert result.total_params == sum(p.size for p in model.state_dict().values())
    assert [r["params"] for r in result.rows] == [784 * 512 + 512, 0, 512 * 256 + 256, 0,
                                                  256 * 10 + 10]
    assert [r["layer"] for r in result.rows] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [r["output_shape"] for r in result.rows] == [(None, 512), (None, 512), (None, 256),
                                                        (None, 256), (None, 10)]
    # FLOPs: 2*in*out + out per Linear, one per element per activation
    assert [r["flops"] for r in result.rows] == [2 * 784 * 512 + 512, 512, 2 * 512 * 256 + 256,
                                                 256, 2 * 256 * 10 + 10]
    assert result.total_flops == 1_071_626
    assert result.activation_bytes == 4 * (512 + 512 + 256 + 256 + 10)
    assert result.param_bytes == 4 * 535_818
    for row in result.rows:                            # every layer gets a line
        assert f"{row['index']}: {row['layer']}" in printed
        assert f"{row['flops']:,}" in printed
    assert str(result) in printed


def test_float64_bias_free_and_batch_totals():
    model = mf.MLP([5, 3, 2], activation="tanh", bias=False, dtype=np.float64, seed=0)
    out = io.StringIO()
    result = mf.summary(model, (5,), batch_size=7, file=out)
    assert result.total_params == 5 * 3 + 3 * 2
    assert [r["flops"] for r in result.rows] == [2 * 5 * 3, 3, 2 * 3 * 2]
    assert result.activation_bytes == 8 * (3 + 3 + 2)
    text = out.getvalue()
    assert "1: Tanh" in text and "float64" in text
    assert f"For a batch of 7: {7 * result.total_flops:,} FLOPs" in text


def test_single_linear_layer_and_show_false(capsys):
    result = mf.summary(mf.Linear(3, 4, seed=0), 3, show=False)
    assert capsys.readouterr().out == ""
    assert result.total_params == 16 and result.total_flops == 2 * 3 * 4 + 4
    assert "Total params: 16" in str(result)


@pytest.mark.parametrize("args, kwargs, error, match", [
    (("not a model", 3), {}, TypeError, "mlpfast Module"),
    ((None, 4), {}, ValueError, "input_size is 4 but the model expects 3"),
    ((None, 0), {}, ValueError, "input_size"),
    ((None, (1, 28, 28)), {}, ValueError, "input_size"),
    ((None, 3.0), {}, ValueError, "input_size"),
    ((None, 3), {"batch_size": 0}, ValueError, "batch_size"),
    ((None, 3), {"batch_size": True}, ValueError, "batch_size"),
    ((None, 3), {"batch_size": 2.0}, ValueError, "batch_size"),
])
def test_bad_arguments(args, kwargs, error, match):
    model = mf.MLP([3, 2], seed=0)
    args = (model if args[0] is None else args[0],) + args[1:]
    with pytest.raises(error, match=match):
        mf.summary(*args, **kwargs)


def tiny_mnist(root=None, download=True):
    rng = np.random.default_rng(0)
    return ((rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64)),
            (rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32)))


def test_cli_train_prints_the_summary_before_training(monkeypatch, capsys):
    monkeypatch.setattr(mf.datasets, "mnist", tiny_mnist)
    assert cli.main(["train", "mnist", "--hidden", "16", "--epochs", "1", "--batch-size", "32",
                     "--backend", "numpy", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Total params: {784 * 16 + 16 + 16 * 10 + 10:,}" in out
    assert out.index("Total params") < out.index("epoch 1/1")


def test_batchnorm_and_dropout_layers_are_counted():
    model = mf.MLP([784, 256, 10], batchnorm=True, dropout=0.2, seed=0)
    result = mf.summary(model, 784, show=False)
    assert [r["layer"] for r in result.rows] == ["Linear", "BatchNorm1d", "ReLU", "Dropout",
                                                 "Linear"]
    assert [r["params"] for r in result.rows] == [784 * 256 + 256, 2 * 256, 0, 0, 256 * 10 + 10]
    assert [r["flops"] for r in result.rows][1:4] == [2 * 256, 256, 256]
    assert result.total_params == sum(p.data.size for p in model.parameters())


def test_memory_lines_in_binary_units_and_the_table_aligned():
    """Parameter memory = params * itemsize, in B, KiB (2**10), MiB (2**20); every line
    between the rules is as long as the rule, and each count ends under its header."""
    result = mf.summary(mf.MLP([784, 512, 256, 10], seed=0), 784, show=False)
    assert "Parameter memory: 2.04 MiB" in str(result)            # 535,818 * 4 / 2**20
    wide = mf.summary(mf.MLP([784, 512, 256, 10], dtype=np.float64, seed=0), 784, show=False)
    assert wide.param_bytes == 8 * 535_818
    assert "Parameter memory: 4.09 MiB" in str(wide)              # 535,818 * 8 / 2**20
    # 1024 B is 1.00 KiB; 1023 B stays in bytes (a Linear(255, 1): 256 float32 params)
    assert "Parameter memory: 1.00 KiB" in str(mf.summary(mf.Linear(255, 1, seed=0), 255,
                                                          show=False))
    assert "Parameter memory: 1020 B" in str(mf.summary(mf.Linear(254, 1, seed=0), 254,
                                                       show=False))
    lines = str(result).splitlines()
    rule = lines[0]
    assert set(rule) == {"-"} and lines[2] == "=" * len(rule)
    header, body = lines[1], lines[3:3 + len(result.rows)]
    assert all(len(line) == len(rule) for line in [header] + body), [header] + body
    for name in ("Params", "FLOPs/sample", "Activations"):      # right-aligned columns
        end = header.index(name) + len(name)
        assert all(line[end - 1] != " " and (end == len(line) or line[end] == " ")
                   for line in body), name
