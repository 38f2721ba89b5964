"""`mlpfast bench`: JSON results, --baseline regression flags, peers, table, plot, bad input.

Kept fast: one tiny GEMM case of a probe variant (``--only``), no peer processes.
"""
import io
import json
import sys
import time

import numpy as np
import pytest

from mlpfast import cli
from mlpfast.benchmarks import harness as benchmark, peers
from mlpfast.kernels import gemm

PROBE = "gemm.sgemm 16x16x16 NN [probe]"


@pytest.fixture
def probe_variant(monkeypatch):
    """A GEMM variant "probe" on one 16x16x16 shape; set ``delay[0]`` to slow it down."""
    delay = [0.0]

    def probe(a, b, out=None, **kwargs):
        if delay[0]:
            time.sleep(delay[0])
        return gemm.gemm_ref(a, b, out, **kwargs)

    monkeypatch.setitem(gemm.VARIANTS, "probe", probe)
    monkeypatch.setattr(benchmark.OP_SPECS[0], "shapes", {"quick": [(16, 16, 16, False, False)],
                                                          "full": [(16, 16, 16, False, False)]})
    return delay


def bench(tmp_path, capsys, *extra):
    rc = cli.main(["bench", "--quick", "--only", PROBE, "--no-peers", "--threshold", "10",
                   *extra])
    return rc, capsys.readouterr().out


def test_json_holds_machine_header_and_rates(probe_variant, tmp_path, capsys):
    path = tmp_path / "run.json"
    rc, out = bench(tmp_path, capsys, "--json", str(path))
    assert rc == 0
    data = json.loads(path.read_text())
    assert data["machine"]["cpu"] and data["machine"]["threads"] >= 1
    assert data["machine"]["numpy"] == np.__version__
    [row] = data["results"]
    assert row["id"].startswith(PROBE) and row["variant"] == "probe"
    assert row["unit"] == "GFLOP/s"
    assert row["rate"] == pytest.approx(2 * 16 ** 3 / row["median_s"] * 1e-9)
    assert "gemm.sgemm" in out and "probe" in out and "fp32 peak" in out


def test_baseline_flags_a_slowed_variant(probe_variant, tmp_path, capsys):
    path = tmp_path / "base.json"
    assert bench(tmp_path, capsys, "--json", str(path))[0] == 0

    rc, out = bench(tmp_path, capsys, "--baseline", str(path))      # unchanged: not flagged
    assert rc == 0, out
    assert "REGRESSION" not in out and "1 rows matched, 0 regressions" in out

    probe_variant[0] = 0.05          # 50 ms per call, thousands of times the 16^3 GEMM
    rc, out = bench(tmp_path, capsys, "--baseline", str(path))
    assert rc == 1
    assert f"REGRESSION {PROBE}" in out and "1 regressions" in out


def test_a_variant_that_disagrees_with_the_reference_is_not_timed(monkeypatch, probe_variant,
                                                                  tmp_path, capsys):
    def wrong(a, b, out=None, **kwargs):
        out[...] = 1.0
        return out
    monkeypatch.setitem(gemm.VARIANTS, "probe", wrong)
    path = tmp_path / "run.json"
    rc, out = bench(tmp_path, capsys, "--json", str(path))
    assert rc == 1
    assert "NOT TIMED, differs from the reference: sgemm 16x16x16 NN" in out
    assert f"1 case(s) differ from the reference and were not timed: {PROBE}" in out
    [row] = json.loads(path.read_text())["results"]
    assert "median_s" not in row and "sgemm 16x16x16" in row["error"]


@pytest.mark.parametrize("option,value", [("--epochs", "0"), ("--threads", "-1"),
                                          ("--threshold", "0")])
def test_bad_numbers_are_refused_by_name(option, value, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", option, value])
    assert f"argument {option}: must be > 0, got '{value}'" in capsys.readouterr().err


def test_a_baseline_that_is_not_a_result_file_is_refused(tmp_path, capsys):
    not_a_result = tmp_path / "x.json"
    not_a_result.write_text("[]")
    assert cli.main(["bench", "--baseline", str(not_a_result)]) == 1
    assert "is not a `mlpfast bench --json` file" in capsys.readouterr().err


def test_table_shows_rate_peer_and_ratio():
    rows = [benchmark._rate_row("gemm.sgemm 8x8x8 NN [c] t1", "kernel", "gemm", "sgemm",
                                "8x8x8 NN", "c", 1, [1e-6], flops=1024.0)]
    benchmark.attach_peer(rows, {"row": {"rate": rows[0]["rate"] / 4}}, "numpy")
    assert rows[0]["ratio"] == pytest.approx(4.0)
    header, line = benchmark.format_table(rows, peak=2.048)
    assert "ratio" in header
    assert "1.0 GFLOP/s" in line and "50%" in line and "0.3 numpy" in line and "4.00x" in line


def test_plot_writes_a_png(probe_variant, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert bench(tmp_path, capsys, "--plot", str(path))[0] == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_probe_measures_a_plausible_rate():
    peak = benchmark.fp32_peak_gflops(1, milliseconds=20)
    if peak is None:
        pytest.skip("mlpfast._peak is not built")
    assert 0.1 < peak < 10_000            # GFLOP/s of one core: 2 GHz x 64 flops/cycle ~ 128


def test_train_flops_count_forward_and_both_gradients():
    # 784-256-10 at batch 2: forward 2*2*(784*256 + 256*10), weight grads as much,
    # input gradient only for the second layer
    fwd = 2 * 2 * (784 * 256 + 256 * 10)
    assert benchmark.mlp_train_flops([784, 256, 10], 2) == 2 * fwd + 2 * 2 * 256 * 10


def test_textbook_numpy_peer_trains_like_mlpfast():
    """Same weights, same batches: the NumPy peer and mlpfast's numpy backend agree."""
    sizes = [20, 16, 12, 5]
    weights = peers.initial_weights(sizes, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 20)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    import mlpfast
    model = mlpfast.MLP(sizes, backend="numpy")
    model.load_state_dict({f"{2 * i}.{k}": v for i, layer in enumerate(weights)
                           for k, v in zip(("weight", "bias"), layer)})
    optimizer = mlpfast.optim.Adam(model.parameters(), lr=peers.LR)
    loss_fn = mlpfast.CrossEntropyLoss(backend="numpy")
    peer = peers.NumpyMLP(weights)
    for _ in range(3):
        expected = loss_fn(model.forward(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()
        assert peer.step(x, y) == pytest.approx(expected, rel=1e-5)
    state = model.state_dict()
    for i in range(len(sizes) - 1):
        np.testing.assert_allclose(peer.params[2 * i], state[f"{2 * i}.weight"], atol=1e-6)
        np.testing.assert_allclose(peer.params[2 * i + 1], state[f"{2 * i}.bias"], atol=1e-6)


def test_missing_peer_is_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)                   # import torch fails
    assert peers.main(["torch", "--sizes", "784,8,10", "--batch", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"].startswith("torch is not installed")


def test_numpy_peer_runs_without_the_openblas_overrides():
    ours = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    numpy_env = benchmark.peer_env("numpy", 2, base=ours)
    assert "OPENBLAS_CORETYPE" not in numpy_env and "OPENBLAS_L2_SIZE" not in numpy_env
    assert numpy_env["OPENBLAS_NUM_THREADS"] == "2" and numpy_env["MLPFAST_NUM_THREADS"] == "2"
    assert "OPENBLAS_CORETYPE" in ours                     # our own environment is untouched
    torch_env = benchmark.peer_env("torch", 1, base=ours)
    assert torch_env["OPENBLAS_CORETYPE"] == "Haswell"
    assert "intra_op_parallelism_threads=1" in torch_env["XLA_FLAGS"]


def test_numpy_peer_serves_kernel_step_and_info_requests(probe_variant):
    requests = [{"info": True}, {"kernel": "gemm.sgemm 16x16x16 NN", "mode": "quick",
                                 "seconds": 0.01},
                {"step": "784-16-10 b8", "seconds": 0.01},
                {"kernel": "gemm.sgemm 3x3x3 NN", "mode": "quick", "seconds": 0.01}]
    replies = io.StringIO()
    peers.serve(io.StringIO("".join(json.dumps(r) + "\n" for r in requests)), replies)
    info, kernel, step, unknown = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert info["blas"] == benchmark.blas_info()
    assert kernel["row"]["variant"] == "numpy" and kernel["row"]["rate"] > 0
    assert step["row"]["shape"] == "784-16-10 b8"
    assert step["row"]["rate"] == pytest.approx(
        benchmark.mlp_train_flops([784, 16, 10], 8) / step["row"]["median_s"] * 1e-9)
    assert unknown["skipped"] == "ValueError: no kernel case 'gemm.sgemm 3x3x3 NN' in mode 'quick'"


def test_peer_process_answers_from_its_own_environment():
    pytest.importorskip("threadpoolctl")
    with benchmark.PeerProcess("numpy", threads=1) as peer:
        reply = peer.ask({"info": True})
    assert "1 threads" in reply["blas"]                 # OPENBLAS_NUM_THREADS=1 reached it
    assert peer.proc.returncode == 0


def test_train_step_validation_catches_a_wrong_gradient(monkeypatch):
    from mlpfast.backend import registry as backends_module
    numpy_backend = backends_module.get_backend("numpy")
    exact_bias_grad = numpy_backend.ops["bias_grad"]

    def bias_grad_one_percent_off(grad_y, out=None):
        out = exact_bias_grad(grad_y, out)
        out *= 1.01
        return out

    def broken():
        ops = dict(numpy_backend.ops, bias_grad=bias_grad_one_percent_off)
        return backends_module.Backend("broken", "cpu", ops, numpy_backend.activations)
    monkeypatch.setitem(backends_module._FACTORIES, "broken", (broken, lambda: True))
    monkeypatch.delitem(backends_module._INSTANCES, "broken", raising=False)
    benchmark.validate_train_step("numpy", [784, 16, 10], 8)          # the reference passes
    with pytest.raises(AssertionError, match="broken gradient of 0.bias"):
        benchmark.validate_train_step("broken", [784, 16, 10], 8)


def test_ours_and_the_peer_are_timed_in_turns():
    order = []

    class Peer:
        def ask(self, request):
            order.append("peer")
            return {"row": {"rate": 2.0, "median_s": 0.5, "times": [0.5, 0.25]}}

    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times, reply = benchmark.time_side_by_side(calls, 0.0, 1, Peer(), {"kernel": "x"})
    assert order == ["a", "b", "peer"] * benchmark.ROUNDS
    assert len(times["a"]) == len(times["b"]) == benchmark.ROUNDS
    row = reply["row"]
    assert len(row["times"]) == 2 * benchmark.ROUNDS and row["rounds"] == 2 * benchmark.ROUNDS
    assert row["median_s"] == pytest.approx(0.375)       # median of all turns' times
    assert row["rate"] == pytest.approx(2.0 * 0.5 / 0.375)


def test_inference_peers_predict_the_classes_of_the_same_model(monkeypatch):
    # the mlpfast and PyTorch inference peers load the same weights: same classes
    rng = np.random.default_rng(0)
    test_x = rng.standard_normal((300, 784)).astype(np.float32)
    monkeypatch.setattr("mlpfast.datasets.mnist", lambda: (None, (test_x, None)))
    ours = peers.infer_rate("mlpfast", [784, 16, 10], 128, 1, seed=2)
    assert ours["samples_per_s"] > 0 and len(ours["agree_with"]) == 300
    torch = pytest.importorskip("torch")
    assert torch is not None
    theirs = peers.infer_rate("torch", [784, 16, 10], 128, 1, seed=2)
    assert np.mean(np.array(theirs["agree_with"]) == ours["agree_with"]) > 0.99


def test_inference_table_gives_rates_ratios_and_agreement(monkeypatch):
    answers = {"mlpfast": {"samples_per_s": 80000.0, "seconds": 0.125, "agree_with": [1, 2, 3]},
               "torch": {"samples_per_s": 40000.0, "seconds": 0.25, "agree_with": [1, 2, 0]},
               "jax": {"skipped": "jax is not installed"}}
    monkeypatch.setattr(benchmark, "run_peer", lambda peer, args, threads: dict(answers[peer]))
    results = benchmark.compare_inference(2, lambda line: None)
    lines = benchmark.format_inference(results)
    assert "2.00x" in lines[2] and "66.67%" in lines[2] and "skipped: jax" in lines[3]
    assert [r["variant"] for r in benchmark.inference_rows(results, 2)] == ["mlpfast", "torch"]


def test_compare_table_shows_test_accuracy_and_ratio():
    results = [{"peer": "mlpfast", "config": "784-8-10 b64", "samples_per_s": 90000.0,
                "seconds_per_epoch": 0.67, "loss": 0.25, "test_accuracy": 0.9712},
               {"peer": "torch", "config": "784-8-10 b64", "samples_per_s": 30000.0,
                "seconds_per_epoch": 2.0, "loss": 0.25, "test_accuracy": 0.9705}]
    lines = benchmark.format_compare(results)
    assert "test acc" in lines[0]
    assert "97.12%" in lines[1] and "97.05%" in lines[2] and "3.00x" in lines[2]


def test_peers_classify_with_their_trained_weights():
    # each trainer's classes() reads its current parameters: same weights, same classes
    import mlpfast
    sizes = [20, 16, 5]
    weights = peers.initial_weights(sizes, seed=4)
    x = np.random.default_rng(1).standard_normal((50, 20)).astype(np.float32)
    model = mlpfast.MLP(sizes, backend="numpy")
    model.load_state_dict({f"{2 * i}.{k}": v for i, layer in enumerate(weights)
                           for k, v in zip(("weight", "bias"), layer)})
    expected = mlpfast.predict(model, x)
    *_, classes = peers.numpy_trainer(weights, 1)
    assert np.array_equal(classes(x), expected)
    torch = pytest.importorskip("torch")
    assert torch is not None
    *_, classes = peers.torch_trainer(weights, 1)
    assert np.array_equal(classes(x), expected)
