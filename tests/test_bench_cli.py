"""`mlpfast bench`: JSON results, --baseline regression flags, peers, table, plot, bad input.

Kept fast: one tiny GEMM case of a probe variant (``--only``), no peer processes; the peers
of --compare train a 784-16-10 MLP for one epoch on 640 real MNIST images.
"""
import argparse
import io
import json
import os
import pathlib
import subprocess
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


def test_the_header_warns_when_threads_outnumber_the_cpus():
    info = benchmark.machine_info(threads=2, peak=False)
    info["cpus_available"] = 2
    assert not any("warning" in line for line in benchmark.format_machine(info))
    info["threads"] = 1
    assert benchmark.format_machine(info)[0].endswith("2 cpus available, 1 thread used")
    info["threads"] = 16
    lines = benchmark.format_machine(info)
    assert lines[0].endswith("2 cpus available, 16 threads used")
    assert lines[1] == ("warning: 16 threads share 2 cpus, so these figures do not show what "
                        "16 cores do")
    assert benchmark.oversubscription_warning(16, None) is None      # the OS did not say


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
    # per sample, as bench/README.md states them
    assert benchmark.mlp_train_flops([784, 256, 128, 10], 1) == 1_007_104
    assert benchmark.mlp_train_flops([784, 1024, 1024, 10], 1) == 9_564_160


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


@pytest.mark.parametrize("peer", ["torch", "torch-tuned"])
def test_missing_peer_is_skipped_with_the_reason(peer, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)                   # import torch fails
    peers.write_weights(tmp_path, peers.initial_weights([784, 8, 10], 0))
    assert peers.main([peer, "--data", str(tmp_path), "--weights", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"].startswith("torch is not installed (CPU build: pip install")


def test_numpy_peer_runs_without_the_openblas_overrides():
    ours = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    numpy_env = benchmark.peer_env("numpy", 2, base=ours)
    assert "OPENBLAS_CORETYPE" not in numpy_env and "OPENBLAS_L2_SIZE" not in numpy_env
    assert numpy_env["OPENBLAS_NUM_THREADS"] == "2" and numpy_env["MLPFAST_NUM_THREADS"] == "2"
    assert "OPENBLAS_CORETYPE" in ours                     # our own environment is untouched
    torch_env = benchmark.peer_env("torch", 1, base=ours)
    assert torch_env["OPENBLAS_CORETYPE"] == "Haswell"
    assert torch_env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"


def test_numpy_peers_serve_kernel_step_and_info_requests(probe_variant):
    kernel_requests = [{"info": True}, {"kernel": "gemm.sgemm 16x16x16 NN", "mode": "quick",
                                        "seconds": 0.01},
                       {"kernel": "gemm.sgemm 3x3x3 NN", "mode": "quick", "seconds": 0.01}]
    replies = io.StringIO()
    peers.serve(io.StringIO("".join(json.dumps(r) + "\n" for r in kernel_requests)), replies,
                benchmark.answer_kernel)
    info, kernel, unknown = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert info["blas"] == benchmark.blas_info()
    assert kernel["row"]["variant"] == "numpy" and kernel["row"]["rate"] > 0
    assert unknown["skipped"] == "ValueError: no kernel case 'gemm.sgemm 3x3x3 NN' in mode 'quick'"

    with benchmark.PeerInputs() as inputs:
        files = inputs.batch(8)
        assert inputs.batch(8) == files                              # written once
        replies = io.StringIO()
        peers.serve(io.StringIO(json.dumps({"step": "784-16-10 b8", "seconds": 0.01, **files})
                                + "\n" + json.dumps({"step": "784-16-10 b8"}) + "\n"),
                    replies, peers.answer_step)
    step, incomplete = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert step["row"]["rate"] == pytest.approx(
        benchmark.mlp_train_flops([784, 16, 10], 8) / step["row"]["median_s"] * 1e-9)
    assert step["row"]["median_s"] == pytest.approx(np.median(step["row"]["times"]))
    assert incomplete["skipped"] == "KeyError: 'x'"


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_numpy_gemm_peer_writes_into_out_without_a_temporary(trans_a, trans_b):
    # the kernel peer times gemm.VARIANTS["numpy"]: np.matmul(..., out=), no product + copy
    import tracemalloc
    rng = np.random.default_rng(0)
    m, n, k = 257, 193, 61
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    out = np.full((m, n), np.nan, np.float32)                  # beta 0: never read
    tracemalloc.start()
    gemm.VARIANTS["numpy"](a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < out.nbytes / 4
    expected = 0.5 * ((a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b))
    benchmark.assert_close(out, expected, 1e-5 * k, 1e-5, "numpy gemm")


@pytest.mark.parametrize("command", ["kernels", "step"])
def test_peer_process_answers_from_its_own_environment(command):
    pytest.importorskip("threadpoolctl")
    argv = (benchmark.KERNEL_PEER_COMMAND if command == "kernels"
            else benchmark.peer_command("numpy", 1, ["--serve"]))
    with benchmark.PeerProcess(argv, threads=1) as peer:
        reply = peer.ask({"info": True})
    assert "1 thread)" in reply["blas"]                 # OPENBLAS_NUM_THREADS=1 reached it
    assert peer.proc.returncode == 0


def python_peer(source, timeout=60):
    """A PeerProcess running ``python -c source``."""
    return benchmark.PeerProcess([sys.executable, "-c", source], threads=1, timeout=timeout)


def test_peer_process_is_not_blocked_by_a_peer_that_writes_much_to_stderr():
    # 1 MiB on stderr before the reply: a pipe would fill at 64 KiB and the peer would
    # block there until the timeout
    source = ("import sys\n"
              "for line in sys.stdin:\n"
              "    sys.stderr.write(('warning ' * 128 + '\\n') * 1024)\n"
              "    print('{\"echo\": ' + line.strip() + '}', flush=True)\n")
    with python_peer(source, timeout=20) as peer:
        assert peer.ask({"epoch": 0}) == {"echo": {"epoch": 0}}
        assert peer.ask({"epoch": 1}) == {"echo": {"epoch": 1}}


def test_peer_process_answers_lines_that_arrived_together():
    source = "print('{\"first\": 1}\\n{\"second\": 2}', flush=True); import time; time.sleep(30)"
    with python_peer(source, timeout=2) as peer:
        assert peer.reply() == {"first": 1}
        started = time.monotonic()
        assert peer.reply() == {"second": 2}         # already read: no wait for the pipe
        assert time.monotonic() - started < 1
        assert peer.reply() == {"skipped": "peer silent for 2 s, stopped"}


def test_peer_process_reports_why_a_peer_exited():
    source = "import sys; sys.stdin.readline(); sys.exit('peers.py: no such data folder')"
    with python_peer(source) as peer:
        assert peer.ask({"epoch": 0}) == {"skipped": "peer exited: peers.py: no such data folder"}
        assert peer.ask({"epoch": 1}) == {"skipped": "peer exited: peers.py: no such data folder"}


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


def test_inference_peers_predict_the_classes_of_the_same_model(tmp_path):
    # the mlpfast and PyTorch inference peers load the same weights: same classes
    rng = np.random.default_rng(0)
    test_x = rng.standard_normal((300, 784)).astype(np.float32)
    peers.write_mnist(tmp_path, (test_x[:0], np.zeros(0, np.int64)),
                      (test_x, np.zeros(300, np.int64)))
    weights = peers.initial_weights([784, 16, 10], 2)
    ours = peers.infer_rate("mlpfast", tmp_path, weights, 128, 1)
    assert ours["samples_per_s"] > 0 and len(ours["agree_with"]) == 300
    assert "mlpfast backend cpu" in ours["notes"]
    pytest.importorskip("torch")
    theirs = peers.infer_rate("torch", tmp_path, weights, 128, 1)
    assert len(theirs["agree_with"]) == 300
    assert np.mean(np.array(theirs["agree_with"]) == ours["agree_with"]) > 0.99


class FakeInputs:
    """PeerInputs without the files: the folders are only passed on."""

    def mnist(self):
        return "MNIST"

    def weights(self, sizes, seed=0):
        return "W-" + "-".join(map(str, sizes))


def test_inference_table_gives_rates_ratios_and_agreement(monkeypatch):
    answers = {"mlpfast": {"samples_per_s": 80000.0, "seconds": 0.125, "agree_with": [1, 2, 3]},
               "torch": {"samples_per_s": 40000.0, "seconds": 0.25, "agree_with": [1, 2, 0]},
               "jax": {"skipped": "jax is not installed"}}
    calls = []

    def run_peer(peer, args, threads):
        calls.append(args)
        return dict(answers[peer])
    monkeypatch.setattr(benchmark, "run_peer", run_peer)
    results = benchmark.compare_inference(2, lambda line: None, FakeInputs(),
                                          benchmark.inference_config(benchmark.CONFIGS))
    assert calls[0] == ["--infer", "--data", "MNIST", "--weights", "W-784-1024-1024-10",
                        "--batch", "1024"]
    lines = benchmark.format_inference(results)
    assert "2.00x" in lines[2] and "66.67%" in lines[2] and "skipped: jax" in lines[3]
    assert [r["variant"] for r in benchmark.inference_rows(results, 2)] == ["mlpfast", "torch"]


class FakeTrainingPeer:
    """A TrainingPeer whose epochs take ``seconds`` (a list), or that is skipped (a str);
    every call is logged in ``calls`` as (peer, what)."""

    def __init__(self, peer, answer, calls):
        self.peer, self.answer, self.calls = peer, answer, calls
        self.started = {"skipped": answer} if isinstance(answer, str) else {"ready": True}
        self.closed = False

    def epoch(self, epoch):
        self.calls.append((self.peer, epoch))
        return {"seconds": self.answer[min(epoch, len(self.answer) - 1)], "loss": 0.25}

    def finish(self):
        self.calls.append((self.peer, "finish"))
        return {"epoch_seconds": list(self.answer), "samples": 60000, "loss": 0.25,
                "test_accuracy": 0.97, "notes": f"{self.peer} notes",
                "threadpools": ["openblas 0.3.31 (SkylakeX, 2 threads)"], "mlpfast_modules": []}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def fake_compare(monkeypatch, seconds, epochs=None, calls=None):
    """compare_training of 784-256-128-10 b64 whose peers answer ``seconds`` (peer -> epoch
    seconds, or a reason to skip), 60000 samples per epoch."""
    calls = [] if calls is None else calls
    started = []

    def training_peer(peer, args, threads):
        assert args == ["--data", "MNIST", "--weights", "W-784-256-128-10", "--batch", "64"]
        answer = seconds.get(peer, f"{peer} not run in this test")
        started.append(FakeTrainingPeer(peer, answer, calls))
        return started[-1]
    monkeypatch.setattr(benchmark, "TrainingPeer", training_peer)
    monkeypatch.setattr(benchmark, "TURN_PAUSE_SECONDS", 0.0)
    epochs = epochs or max(len(v) for v in seconds.values() if not isinstance(v, str))
    results = benchmark.compare_training([((784, 256, 128, 10), 64)], 2, epochs,
                                         lambda line: None, FakeInputs())
    assert [peer.peer for peer in started] == list(benchmark.TRAIN_PEERS)
    assert all(peer.closed for peer in started)
    return results


def test_compare_peers_train_in_turns_an_epoch_each_and_rotate(monkeypatch):
    """Round e starts with the e-th running peer; skipped peers get no turn."""
    calls = []
    fake_compare(monkeypatch, {"mlpfast": [1.0, 1.0, 1.0], "numpy": [2.0, 2.0, 2.0],
                               "jax": [1.5, 1.5, 1.5]}, calls=calls)
    assert calls == [("mlpfast", 0), ("numpy", 0), ("jax", 0),
                     ("numpy", 1), ("jax", 1), ("mlpfast", 1),
                     ("jax", 2), ("mlpfast", 2), ("numpy", 2),
                     ("mlpfast", "finish"), ("numpy", "finish"), ("jax", "finish")]


PEAK = 241.70496          # GFLOP/s: 120,000 samples/s x 1,007,104 FLOP is exactly 50%


def test_compare_table_reports_best_median_peak_and_ratios(monkeypatch):
    results = fake_compare(monkeypatch, {
        "mlpfast": [0.6, 0.5, 0.55], "numpy": [2.5, 3.0, 2.75], "torch": [1.2, 1.0, 1.1],
        "torch-tuned": [1.0, 1.5, 0.9], "jax": "jax is not installed"})
    lines = benchmark.format_compare(results, peak=PEAK)
    assert lines[0] == benchmark.COMPARE_HEADER
    assert [line.split()[2] for line in lines[1:]] == [
        "mlpfast", "numpy", "torch", "torch-tuned", "PyTorch", "jax", "mlpfast-bf16",
        "torch-bf16"]
    mlpfast, numpy, *_ = lines[1:]
    # best 60000 / 0.5 = 120,000 samples/s = 50% of PEAK; median 60000 / 0.55
    assert "120,000   50%   109,091   45%" in mlpfast and "97.00%" in mlpfast
    # numpy: best 24,000, median 21,818: mlpfast is 5.00x (best) and 5.00x (median) faster
    assert "24,000   10%    21,818    9%" in numpy and "5.00x    5.00x" in numpy
    assert "numpy notes; openblas 0.3.31 (SkylakeX, 2 threads)" in numpy
    assert "skipped: jax is not installed" in lines[6]


def test_pytorch_row_is_the_better_median_of_plain_and_tuned(monkeypatch):
    # torch-tuned has the better best epoch (0.9 s), torch the better median (1.1 s)
    results = fake_compare(monkeypatch, {
        "mlpfast": [0.55], "numpy": [2.0], "torch": [1.2, 1.0, 1.1],
        "torch-tuned": [0.9, 1.5, 1.4], "jax": [0.8]})
    assert benchmark.better_torch(results)["peer"] == "torch"
    pytorch = benchmark.format_compare(results, peak=PEAK)[5]
    assert pytorch.split()[2] == "PyTorch" and "= torch, the better median" in pytorch
    # mlpfast 109,091 samples/s: 1.82x torch's best epoch 60,000, 2.00x its median 54,545
    assert "60,000" in pytorch and "54,545" in pytorch and "1.82x    2.00x" in pytorch

    only_tuned = fake_compare(monkeypatch, {
        "mlpfast": [0.55], "numpy": [2.0], "torch": "failed: ...", "torch-tuned": [1.4],
        "jax": [0.8]})
    assert benchmark.better_torch(only_tuned)["peer"] == "torch-tuned"
    neither = fake_compare(monkeypatch, {
        "mlpfast": [0.55], "numpy": [2.0], "torch": "x", "torch-tuned": "y", "jax": [0.8]})
    assert benchmark.better_torch(neither) is None
    assert "PyTorch" not in "".join(benchmark.format_compare(neither))


def test_compare_rows_keep_best_median_and_peak(monkeypatch):
    results = fake_compare(monkeypatch, {
        "mlpfast": [0.6, 0.5, 0.55], "numpy": "numpy failed", "torch": [1.0],
        "torch-tuned": [1.0], "jax": [1.0]})
    rows = benchmark.compare_rows(results, 2, peak=PEAK)
    assert [r["variant"] for r in rows] == ["mlpfast", "torch", "torch-tuned", "jax"]
    ours = rows[0]
    assert ours["id"] == "compare 784-256-128-10 b64 [mlpfast] t2"
    assert ours["best_samples_per_s"] == pytest.approx(120_000)
    assert ours["samples_per_s"] == ours["rate"] == pytest.approx(60000 / 0.55)
    assert ours["min_s"] == 0.5 and ours["median_s"] == 0.55
    assert ours["peak_percent_best"] == pytest.approx(50.0)


@pytest.mark.parametrize("after, used", [(300.0, 300.0), (200.0, PEAK), (None, PEAK)])
def test_compare_takes_the_higher_peak_of_before_and_after_the_epochs(monkeypatch, after, used):
    """The probe runs again after the epochs; %peak is of the higher reading (a slow spell
    can only make the probe read low), and the rows keep the peak they used."""
    results = fake_compare(monkeypatch, {"mlpfast": [0.5], "numpy": "x", "torch": "x",
                                         "torch-tuned": "x", "jax": "x"})
    monkeypatch.setattr(benchmark, "compare_training", lambda *args: results)
    monkeypatch.setattr(benchmark, "fp32_peak_gflops", lambda threads: after)
    printed = []
    rows = benchmark._compare_training(argparse.Namespace(epochs=1), 2, PEAK, FakeInputs(),
                                       printed.append, [((784, 256, 128, 10), 64)], ())
    ours = rows[0]
    assert ours["peak_gflops"] == used
    assert ours["peak_percent_best"] == pytest.approx(50.0 * PEAK / used)   # 120,000 /s
    again = [line for line in printed if line.startswith("fp32 peak measured again")]
    if after is None:
        assert again == []
    else:
        assert again == [f"fp32 peak measured again after the epochs: {after:.0f} GFLOP/s (at "
                         f"the start: {PEAK:.0f}); %peak below is of {used:.0f}"]
    mlpfast = next(line for line in printed if line.split()[2:3] == ["mlpfast"])
    assert f"120,000   {50.0 * PEAK / used:.0f}%" in mlpfast


def test_epoch_over_step_divides_the_median_epoch_by_the_cpu_step(monkeypatch):
    """The share of the step benchmark's samples/s that mlpfast's epochs keep: the median
    epoch (60000 / 0.55 s) over the cpu step row of the same configuration (64 rows in
    0.5 ms); other backends' step rows and other peers' epochs do not count."""
    results = fake_compare(monkeypatch, {
        "mlpfast": [0.6, 0.5, 0.55], "numpy": [2.0], "torch": [1.0], "torch-tuned": [1.0],
        "jax": [1.0]})
    config = "784-256-128-10 b64"
    step = [benchmark._rate_row(f"train.step {config} [{name}] t2", "train", "train", "step",
                                config, name, 2, [seconds] * 3, samples=64)
            for name, seconds in (("numpy", 0.002), ("cpu", 0.0005))]
    kept = benchmark.epoch_over_step(results, step)
    assert list(kept) == [config]
    assert kept[config] == pytest.approx((60000 / 0.55) / (64 / 0.0005))
    assert benchmark.epoch_over_step(results, step[:1]) == {}      # no cpu step: nothing
    other = [dict(step[1], shape="784-1024-1024-10 b256")]
    assert benchmark.epoch_over_step(results, other) == {}

    # --compare prints it after the table and puts it in mlpfast's JSON row alone
    monkeypatch.setattr(benchmark, "compare_training", lambda *args: results)
    printed = []
    rows = benchmark._compare(argparse.Namespace(epochs=3), 2, lambda row: "b64" in row, PEAK,
                              FakeInputs(), printed.append, step_rows=step)
    assert f"its cpu train step above (samples/s): {config} 0.85" in printed[-1]
    assert rows[0]["variant"] == "mlpfast"
    assert rows[0]["epoch_over_step"] == pytest.approx(kept[config])
    assert not any("epoch_over_step" in r for r in rows[1:])


def test_a_peer_that_imported_mlpfast_is_flagged(monkeypatch):
    results = fake_compare(monkeypatch, {
        "mlpfast": [0.5], "numpy": [1.0], "torch": [1.0], "torch-tuned": [1.0], "jax": [1.0],
        "mlpfast-bf16": [0.25]})
    results[1]["mlpfast_modules"] = ["mlpfast", "mlpfast.nn"]
    for mlpfast_itself in ("mlpfast", "mlpfast-bf16"):          # are mlpfast: not flagged
        next(r for r in results if r["peer"] == mlpfast_itself)["mlpfast_modules"] = ["mlpfast"]
    lines = benchmark.format_compare(results)
    assert "NOT CLEAN: imported 2 mlpfast modules" in lines[2]
    assert "NOT CLEAN" not in "".join(lines[:2] + lines[3:])
    assert any(line.split()[2] == "mlpfast-bf16" for line in lines)


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
    pytest.importorskip("torch")
    *_, classes = peers.torch_trainer(weights, 1)
    assert np.array_equal(classes(x), expected)


@pytest.fixture(scope="module")
def peer_inputs(tmp_path_factory):
    """The folder of the peers' inputs: 640 real MNIST images and 200 test images
    (folder/mnist), and the initial weights of a 784-16-10 MLP (folder/weights)."""
    from mlpfast.datasets import mnist
    (x, y), (x_test, y_test) = mnist()
    folder = tmp_path_factory.mktemp("peers")
    peers.write_mnist(folder / "mnist", (x[:640], y[:640]), (x_test[:200], y_test[:200]))
    peers.write_weights(folder / "weights", peers.initial_weights([784, 16, 10], 0))
    return folder


@pytest.fixture(scope="module")
def peer_runs(peer_inputs):
    """Every --compare peer run for real, as `mlpfast bench --compare` runs them (in turns,
    an epoch each): the 784-16-10 MLP of peer_inputs, batch 64, its 640 images (warm-up,
    then 2 timed epochs), 1 thread."""
    folder = peer_inputs

    class Inputs:
        def mnist(self):
            return str(folder / "mnist")

        def weights(self, sizes, seed=0):
            return str(folder / "weights")
    results = benchmark.compare_training([((784, 16, 10), 64)], 1, 2, lambda line: None,
                                         Inputs())
    return {r["peer"]: r for r in results}


def test_a_peer_run_in_one_go_trains_like_one_run_in_turns(peer_inputs, peer_runs):
    """peers.py PEER --epochs 2 (no turns) and the turns of --compare: the same batches
    and updates, so the same losses and test accuracy."""
    args = ["--data", str(peer_inputs / "mnist"), "--weights", str(peer_inputs / "weights"),
            "--batch", "64", "--epochs", "2"]
    for peer in ("mlpfast", "numpy"):
        alone, in_turns = benchmark.run_peer(peer, args, threads=1), ran(peer_runs[peer])
        assert len(alone["epoch_seconds"]) == 2
        assert alone["loss"] == in_turns["loss"]
        assert alone["test_accuracy"] == in_turns["test_accuracy"]


def ran(result):
    if "not installed" in result.get("skipped", ""):
        pytest.skip(result["skipped"])
    assert "skipped" not in result, result["skipped"]
    return result


@pytest.mark.parametrize("peer", ["numpy", "torch", "torch-tuned", "jax"])
def test_peers_import_nothing_of_mlpfast_and_train_like_it(peer, peer_runs):
    result, ours = ran(peer_runs[peer]), ran(peer_runs["mlpfast"])
    assert result["mlpfast_modules"] == []                  # sys.modules of the child
    assert ours["mlpfast_modules"] and "backend cpu, 1 thread" in ours["notes"]
    assert len(result["epoch_seconds"]) == 2 and result["samples"] == 640
    assert result["cpus"] == 1                              # pinned to one CPU
    # the same weights, batches and Adam steps: the same last-epoch loss and test accuracy
    assert result["loss"] == pytest.approx(ours["loss"], rel=1e-4)
    assert abs(result["test_accuracy"] - ours["test_accuracy"]) <= 0.01
    assert 0.5 < ours["test_accuracy"] < 1


def test_numpy_peer_reports_its_blas_on_the_peer_threads(peer_runs):
    pytest.importorskip("threadpoolctl")
    pools = ran(peer_runs["numpy"])["threadpools"]
    assert any(pool.startswith("openblas") and pool.endswith(", 1 thread)") for pool in pools)


def test_tuned_torch_peer_fuses_adam_and_flushes_denormals(peer_runs):
    plain, tuned = ran(peer_runs["torch"]), ran(peer_runs["torch-tuned"])
    assert plain["notes"].endswith("1 thread, Adam default, denormals kept")
    assert tuned["notes"].endswith("1 thread, Adam fused, denormals flushed")


def test_jax_step_donates_params_and_adam_state_and_trains_like_numpy():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    weights = peers.initial_weights([20, 16, 5], 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 20)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    update = peers.jax_adam_update()
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    m, v = jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params)
    t = jnp.asarray(0.0, jnp.float32)
    reference = peers.NumpyMLP(weights)
    for _ in range(3):
        old = jax.tree.leaves((params, m, v, t))
        params, m, v, t, loss = update(params, m, v, t, x, y)
        assert all(leaf.is_deleted() for leaf in old)       # XLA reused their buffers
        assert float(loss) == pytest.approx(reference.step(x, y), rel=1e-5)
    for (w, b), i in zip(params, range(0, 6, 2)):
        np.testing.assert_allclose(w, reference.params[i], atol=1e-6)
        np.testing.assert_allclose(b, reference.params[i + 1], atol=1e-6)


def test_bf16_rows_compare_with_each_other_and_sum_up(monkeypatch):
    """torch-bf16's x columns are mlpfast-bf16's rate over its; mlpfast-bf16's row has none
    and a line follows with its median over mlpfast fp32, JAX, PyTorch and autocast."""
    results = fake_compare(monkeypatch, {
        "mlpfast": [1.0], "numpy": [4.0], "torch": [2.0], "torch-tuned": [1.5], "jax": [1.2],
        "mlpfast-bf16": [0.5], "torch-bf16": [0.8]})
    lines = benchmark.format_compare(results, peak=PEAK)
    bf16_row, torch_bf16_row, summary = lines[-3:]
    assert bf16_row.split()[2:4] == ["mlpfast-bf16", "120,000"]
    assert bf16_row.split()[9:12] == ["-", "-", "mlpfast-bf16"]    # no x best, x median
    assert "1.60x    1.60x" in torch_bf16_row                # 0.8 / 0.5
    assert summary == ("784-256-128-10 b64     mlpfast-bf16 median: 2.00x mlpfast fp32, "
                       "2.40x JAX fp32, 3.00x PyTorch fp32, 1.60x PyTorch autocast bf16")


def test_bf16_peers_train_in_bf16_and_agree(peer_runs):
    """mlpfast-bf16 and PyTorch under autocast: the same run in bf16 GEMMs ends near the
    fp32 loss, not on it, and near each other."""
    fp32, ours, autocast = (ran(peer_runs[p]) for p in ("mlpfast", "mlpfast-bf16",
                                                         "torch-bf16"))
    assert "bf16 (sbgemm_" in ours["notes"]
    assert autocast["notes"].endswith("Adam fused, denormals flushed, autocast bf16")
    assert autocast["mlpfast_modules"] == []
    assert ours["loss"] != fp32["loss"] and ours["loss"] == pytest.approx(fp32["loss"], rel=0.02)
    assert autocast["loss"] == pytest.approx(ours["loss"], rel=0.02)
    assert abs(ours["test_accuracy"] - fp32["test_accuracy"]) <= 0.02


@pytest.mark.parametrize("text", ["784-300-100-10 b32", "784-300-100-10b32", " 784-300-100-10  b32 "])
def test_config_reads_a_rows_configuration(text):
    assert benchmark.parse_config(text) == ((784, 300, 100, 10), 32)
    assert benchmark.config_name(*benchmark.parse_config(text)) == "784-300-100-10 b32"


@pytest.mark.parametrize("text,why", [
    ("784-300-100-10", "expected layer sizes and a batch such as '784-256-128-10 b64'"),
    ("784 b32", "expected layer sizes and a batch"),
    ("784-30x-10 b32", "expected layer sizes and a batch"),
    ("100-10 b32", "sizes must start at 784 and end at 10, got 100-10"),
    ("784-300-9 b32", "sizes must start at 784 and end at 10, got 784-300-9"),
    ("784-0-10 b32", "every layer size must be at least 1"),
    ("784-10 b0", "the batch must be 1 .. 60,000 (MNIST's training rows), got 0"),
    ("784-10 b60001", "got 60001")])
def test_a_bad_config_is_refused_by_name(text, why, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--config", text])
    err = capsys.readouterr().err
    assert "argument --config: " in err and why in err and repr(text) in err


def test_configs_replace_the_reference_ones_in_every_training_table(monkeypatch, capsys):
    """--config: the step, --full epoch and --compare tables train the given networks, in
    the order given; kernel rows are not per network and stay as they are."""
    seen = {}
    monkeypatch.setattr(benchmark, "kernel_rows", lambda *a, **k: [])
    monkeypatch.setattr(benchmark, "train_step_rows",
                        lambda names, configs, **k: seen.setdefault("step", configs) and [])
    monkeypatch.setattr(benchmark, "epoch_rows",
                        lambda names, configs, **k: seen.setdefault("epoch", configs) and [])
    monkeypatch.setattr(benchmark, "_compare", lambda args, threads, select, peak, inputs, out,
                        configs, step_rows: seen.setdefault("compare", configs) and [])
    given = ((784, 300, 100, 10), 32), ((784, 64, 10), 1000)
    assert cli.main(["bench", "--full", "--compare", "--no-peers", "--config",
                     "784-300-100-10 b32", "--config", "784-64-10 b1000"]) == 0
    assert seen == {"step": given, "epoch": given, "compare": given}

    seen.clear()
    assert cli.main(["bench", "--full", "--compare", "--no-peers"]) == 0
    assert seen == {"step": benchmark.CONFIGS, "epoch": benchmark.CONFIGS,
                    "compare": benchmark.CONFIGS}


def test_compare_trains_the_selected_configs_and_infers_on_the_largest(monkeypatch):
    """_compare of given configurations: --only still selects among them; inference takes
    the network with the most FLOPs per sample of all given, in batches of 1024, when --only
    selects it; with no configuration selected there is no training table."""
    trained, inferred = [], []
    monkeypatch.setattr(benchmark, "compare_training",
                        lambda configs, *a: trained.append(configs) or [])
    monkeypatch.setattr(benchmark, "compare_inference",
                        lambda threads, log, inputs, config: inferred.append(config) or [])
    configs = (((784, 300, 100, 10), 32), ((784, 2048, 10), 128), ((784, 64, 10), 1000))
    args = argparse.Namespace(epochs=3)
    benchmark._compare(args, 2, None, PEAK, FakeInputs(), lambda line: None, configs)
    assert trained == [list(configs)] and inferred == [((784, 2048, 10), 1024)]
    assert benchmark.inference_config(benchmark.CONFIGS) == ((784, 1024, 1024, 10), 1024)

    trained.clear(), inferred.clear()
    benchmark._compare(args, 2, lambda row: "b32" in row, PEAK, FakeInputs(), lambda line: None,
                       configs)
    assert trained == [[configs[0]]] and inferred == []
    printed = []
    only = argparse.Namespace(epochs=3, only="784-2048-10 b1024")
    benchmark._compare(only, 2, lambda row: only.only in row, PEAK, FakeInputs(),
                       printed.append, configs)
    assert len(trained) == 1 and inferred == [((784, 2048, 10), 1024)]
    assert "--compare: no training configuration matched --only '784-2048-10 b1024'" in printed


@pytest.mark.parametrize("argv, message", [
    (["--distributed", "--config", "784-64-10 b100"], "takes only --rounds and --json; got "
                                                      "--config"),
    (["--distributed", "--threads", "1", "--compare", "--full"],
     "takes only --rounds and --json; got --full, --compare, --threads"),
    (["--distributed", "--only", "gemm", "--epochs", "3"], "got --epochs, --only"),
    (["--rounds", "2"], "--rounds applies to --distributed only"),
])
def test_options_of_the_other_kind_of_run_are_refused(argv, message, monkeypatch, capsys):
    # they were ignored without a word
    monkeypatch.setattr(benchmark, "_run", lambda args, out: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option,name", [("--json", "run.json"), ("--plot", "gflops.png")])
def test_an_output_file_in_a_missing_folder_is_refused_before_the_run(option, name, tmp_path,
                                                                      monkeypatch, capsys):
    # it was written after the whole run (minutes with --compare), then failed (exit 1)
    monkeypatch.setattr(benchmark, "_run", lambda args, out: pytest.fail("the run started"))
    for path, why in ((tmp_path / "missing" / name, "does not exist"),
                      (tmp_path, "is a directory; give a file path")):
        with pytest.raises(SystemExit) as exit:
            cli.main(["bench", option, str(path)])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert f"{option} {path}" in err and why in err


def test_plot_without_matplotlib_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # not installed
    monkeypatch.setattr(benchmark, "_run", lambda args, out: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--plot", str(tmp_path / "gflops.png")])
    assert exit.value.code == 2
    assert "--plot needs matplotlib: pip install 'mlpfast[plot]'" in capsys.readouterr().err


BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
# planted, each only where the old checks did not look: the Numba tanh forward wrong in
# the last row of arrays of 4 MiB and more (its prefetching twin; the check read 8 rows),
# the Numba Adam leaving the buffer's last element alone (the check read 1,000 elements)
PLANTED_BUGS = '''
from mlpfast.kernels import activations, optim

tanh = activations.VARIANTS["numba"]["tanh"]


def tanh_forward(x, out=None):
    out = tanh.forward(x, out)
    if x.nbytes >= 4 << 20:
        out[-1] = 0.0
    return out


activations.VARIANTS["numba"]["tanh"] = tanh._replace(forward=tanh_forward)
adam = optim.VARIANTS["numba"]["adam"]


def adam_but_last(param, *args, **kwargs):
    last = param[-1]
    adam(param, *args, **kwargs)
    param[-1] = last


optim.VARIANTS["numba"]["adam"] = adam_but_last
'''


def bench_suite(tmp_path, *args):
    """``python -m pytest bench/... --benchmark-disable`` in a fresh process: its output."""
    pytest.importorskip("pytest_benchmark")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", "--rootdir", str(BENCH), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [str(tmp_path), os.environ.get("PYTHONPATH", "")]))).stdout


def test_bench_suite_checks_the_timed_calls_and_catches_planted_bugs(tmp_path):
    cases = [f"{BENCH / 'bench_activations.py'}::test_activation[forward-numba-tanh-4096x4096]",
             str(BENCH / "bench_optim.py"), "-k", "tanh or 235146"]
    out = bench_suite(tmp_path, *cases)
    assert "6 passed" in out and "failed" not in out, out      # every variant's own ops
    (tmp_path / "planted_bugs.py").write_text(PLANTED_BUGS)
    out = bench_suite(tmp_path, "-p", "planted_bugs", "-rf", *cases)
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in out.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_activation[forward-numba-tanh-4096x4096]",
                      "test_optimizer_step[numba-adam-235146]"], out


# planted where compare_bandwidth.py's old checks did not look (they ran separate calls on
# 8 rows and 5 gathered rows, and never checked sgd or adam): the Numba gelu forward wrong
# in the last row of more than 8, the Numba SGD and Adam leaving the buffer's last element
# alone, the gather's last row left unwritten when it gathers more than 5
PLANTED_BANDWIDTH_BUGS = '''
from mlpfast.kernels import activations, data, optim

gelu = activations.VARIANTS["numba"]["gelu"]


def gelu_forward(x, out=None):
    out = gelu.forward(x, out)
    if x.shape[0] > 8:
        out[-1] = 0.0
    return out


activations.VARIANTS["numba"]["gelu"] = gelu._replace(forward=gelu_forward)


def but_last(update):
    def planted(param, *args, **kwargs):
        last = param[-1]
        update(param, *args, **kwargs)
        param[-1] = last
    return planted


for name in ("sgd", "adam"):
    optim.VARIANTS["numba"][name] = but_last(optim.VARIANTS["numba"][name])
gather = data.VARIANTS["numba"]["gather"]


def gather_but_last(src, index, out):
    if index.shape[0] <= 5:
        return gather(src, index, out)
    gather(src, index[:-1], out[:-1])
    return out


data.VARIANTS["numba"]["gather"] = gather_but_last
'''


def test_compare_bandwidth_checks_whole_results_and_catches_planted_bugs(tmp_path):
    def run(*modules):
        script = f"import {', '.join(modules)}" if modules else "pass"
        return subprocess.run(
            [sys.executable, "-c", f"{script}\nimport runpy\nimport sys\n"
             f"sys.argv = ['compare_bandwidth.py', '--mib', '4', '--rounds', '1', "
             f"'--threads', '1']\nrunpy.run_path({str(BENCH / 'compare_bandwidth.py')!r}, "
             f"run_name='__main__')"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(tmp_path), str(BENCH), os.environ.get("PYTHONPATH", "")])))

    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert "adam" in proc.stdout and "gather rows" in proc.stdout
    (tmp_path / "planted_bandwidth_bugs.py").write_text(PLANTED_BANDWIDTH_BUGS)
    proc = run("planted_bandwidth_bugs")
    assert proc.returncode == 1 and "GB/s" not in proc.stdout, proc.stdout   # nothing timed
    wrong = sorted(line.split(":")[0].strip() for line in proc.stderr.splitlines()
                   if line.startswith("  "))
    assert wrong == ["adam", "gather rows", "gelu forward", "sgd momentum"], proc.stderr


@pytest.mark.parametrize("script,option,value", [
    ("compare_gemm.py", "--rounds", "0"), ("compare_gemm_numba.py", "--threads", "0"),
    ("compare_gemm_bf16.py", "--rounds", "-1"), ("compare_bandwidth.py", "--mib", "0"),
    ("step_variants.py", "--rounds", "0"), ("pool_trace.py", "--seconds", "nan"),
    ("pool_wake.py", "--calls", "0"), ("epoch_overhead.py", "--epochs", "0"),
    ("fit_speed.py", "--threads", "0")])
def test_bench_scripts_refuse_bad_numbers_by_name(script, option, value):
    # they failed after starting work: a traceback from statistics.median of nothing, or
    # from set_num_threads, or (pool_trace --seconds nan) no step traced
    proc = subprocess.run([sys.executable, str(BENCH / script), option, value],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"argument {option}: must be > 0, got '{value}'" in proc.stderr
