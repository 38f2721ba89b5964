"""How fit splits an epoch into calls of the backend's step (mlpfast.run.ChunkSizes), with
every call as long as it may be: the cpu backend's compiled step, fed k batches a call,
trains as the numpy backend's reference kernels do batch by batch (a dataset object's
calls capped at _ChunkBuffer.CHUNK_BATCHES, the epoch's last call and last batch short),
and no call runs past a checkpoint (checkpoint_every=N writes after global steps N, 2N, ...
whether or not N divides an epoch)."""
import numpy as np
import pytest
from conftest import BatchSamples, assert_close

import mlpfast as mf
from mlpfast.backend.cpu import CompiledStep, _ChunkBuffer
from mlpfast.kernels import gemm
from mlpfast.resume import CheckpointWriter
from mlpfast.run import ChunkSizes


@pytest.fixture
def longest_calls(monkeypatch):
    """Every call of the step after an epoch's first as long as ChunkSizes allows (the
    step's own bound, the epoch's end, the next checkpoint), whatever the machine's speed."""
    monkeypatch.setattr(ChunkSizes, "done",
                        lambda self, count: setattr(self, "size", self.limit))


@pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")
@pytest.mark.parametrize("data", ["arrays", "dataset object"])
def test_the_longest_calls_train_as_the_reference_backend(data, longest_calls, monkeypatch):
    """131 steps an epoch, the last of 1 row: a dataset object's calls take 1, 64, 64 and 2
    batches (the chunk buffer's bound), resident arrays 1 and 130; parameters, losses and
    accuracies as on the numpy backend."""
    assert _ChunkBuffer.CHUNK_BATCHES == 64
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4 * 130 + 1, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0)
    calls = []
    run = CompiledStep.run

    def counted(self, order, first_batch, num_batches, lrs, sums):
        calls.append(num_batches)
        return run(self, order, first_batch, num_batches, lrs, sums)
    monkeypatch.setattr(CompiledStep, "run", counted)
    results = []
    for backend in ("cpu", "numpy"):
        model = mf.MLP([6, 8, 3], activation="tanh", backend=backend, seed=0)
        opt = mf.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        train = (BatchSamples(x, y, 4),) if data == "dataset object" else (x, y)
        history = mf.fit(model, opt, mf.CrossEntropyLoss(), *train, epochs=2, batch_size=4,
                         seed=4, progress=False)
        results.append((model.flat_data.copy(), history, opt.step_count))
    assert calls == ([1, 64, 64, 2] if data == "dataset object" else [1, 130]) * 2
    (p1, h1, n1), (p2, h2, n2) = results
    assert n1 == n2 == 2 * 131
    assert_close(p1, p2, tol=(1e-5, 1e-4))
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    assert h1["train_accuracy"] == h2["train_accuracy"]


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_no_call_runs_past_a_checkpoint(backend, longest_calls, monkeypatch, tmp_path):
    """checkpoint_every=3 with 7 steps an epoch: checkpoints after global steps 3, 6, ..., 21
    (the last again when the run ends), though 3 divides no epoch's length."""
    written = []
    write = CheckpointWriter.write

    def spy(self, run, epoch):
        written.append(run.global_step)
        return write(self, run, epoch)
    monkeypatch.setattr(CheckpointWriter, "write", spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((56, 5)).astype(np.float32)
    y = rng.integers(0, 3, 56)
    model = mf.MLP([5, 4, 3], backend=backend, seed=0)
    mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(), x, y, epochs=3,
           batch_size=8, seed=1, progress=False, checkpoint=tmp_path / "c", checkpoint_every=3)
    assert written == [3, 6, 9, 12, 15, 18, 21, 21]
