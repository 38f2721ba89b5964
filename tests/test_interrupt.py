"""Ctrl-C (SIGINT) or SIGTERM during fit: the chunk in progress finishes, a final checkpoint is written,
KeyboardInterrupt is raised, and resuming from that checkpoint gives the uninterrupted
result bit for bit."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mlpfast as mf
from conftest import BatchSamples
from mlpfast.checkpoint import read_checkpoint

BACKENDS = mf.backends()


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler, which fit takes over, even when this process started
    with SIGINT ignored (as a shell starts background jobs; fit then leaves it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


def CtrlCAt(x, y, at, signum=signal.SIGINT):
    """A dataset that sends this process ``signum`` while gathering batch ``at`` (of 16)."""
    return BatchSamples(x, y, 16, at, lambda: signal.raise_signal(signum), 4)


def _run(backend, data, **kwargs):
    model = mf.MLP([8, 12, 4], backend=backend, seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-2)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), data, epochs=4, batch_size=16, seed=1,
                     progress=False, lr_schedule="cosine", **kwargs)
    return model, opt, history


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("at", [3, 6, 14])         # 6 batches an epoch: mid-epoch, the
def test_ctrl_c_checkpoints_and_resume_is_bit_identical(backend, at, tmp_path):  # last one
    x, y = _data()
    model_a, opt_a, hist_a = _run(backend, CtrlCAt(x, y, None))
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(backend, CtrlCAt(x, y, at), checkpoint=path)
    ckpt = read_checkpoint(path)
    assert ckpt.progress["global_step"] >= at      # the chunk that saw Ctrl-C finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # restored
    model_c, opt_c, hist_c = _run(backend, CtrlCAt(x, y, None), checkpoint=path, resume=path)
    assert np.array_equal(mf.to_numpy(model_a.flat_data), mf.to_numpy(model_c.flat_data))
    assert opt_a.step_count == opt_c.step_count
    assert hist_a["loss"] == hist_c["loss"]


def test_sigterm_checkpoints_like_ctrl_c_and_resume_is_bit_identical(tmp_path):
    backend = "cpu" if "cpu" in BACKENDS else "numpy"
    x, y = _data()
    model_a, _, hist_a = _run(backend, CtrlCAt(x, y, None))
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(backend, CtrlCAt(x, y, 6, signal.SIGTERM), checkpoint=path)
    assert read_checkpoint(path).progress["global_step"] >= 6
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL            # restored
    model_c, _, hist_c = _run(backend, CtrlCAt(x, y, None), checkpoint=path, resume=path)
    assert np.array_equal(mf.to_numpy(model_a.flat_data), mf.to_numpy(model_c.flat_data))
    assert hist_a["loss"] == hist_c["loss"]


def test_sigterm_after_the_last_step_still_stops_with_keyboard_interrupt(tmp_path):
    """A Ctrl-C there lets fit return (the run is done); SIGTERM asks the process to end,
    so fit still raises, after the final checkpoint."""
    x, y = _data()
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run("numpy", CtrlCAt(x, y, 24, signal.SIGTERM), checkpoint=path)     # 6 x 4 batches
    assert read_checkpoint(path).progress["epochs_done"] == 4


def test_a_program_sigterm_handler_stays_in_charge():
    """fit takes over SIGTERM only from the system's default: a handler the program
    installed is called, and training goes on."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        x, y = _data()
        _, opt, _ = _run("numpy", CtrlCAt(x, y, 3, signal.SIGTERM))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and opt.step_count == 4 * 6


def test_an_ignored_sigint_stays_ignored():
    """A process that ignores SIGINT (a background job) is not made interruptible by fit:
    the signal at batch 3 changes nothing, and the disposition is the same afterwards."""
    x, y = _data()
    reference, _, _ = _run("numpy", CtrlCAt(x, y, None))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model, _, history = _run("numpy", CtrlCAt(x, y, 3))
    except KeyboardInterrupt:
        pytest.fail("fit took over an ignored SIGINT")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert len(history["loss"]) == 4
    assert np.array_equal(model.flat_data, reference.flat_data)


def ready(t, total):
    """The child's schedule (its name is part of the checkpointed schedule)."""
    return 1.0


CHILD = """
import os, signal, sys, time
import numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)    # not inherited as ignored
import mlpfast as mf
sys.path.insert(0, {tests!r})
from test_interrupt import _data, CtrlCAt
x, y = _data(480)

started = []
def ready(t, total):
    if not os.path.exists({marker!r}):
        open({marker!r}, "w").close()
        started.append(time.monotonic())
    return 1.0

model = mf.MLP([8, 64, 64, 4], backend={backend!r}, seed=0)
mf.fit(model, mf.optim.Adam(model.parameters(), lr=1e-2), mf.CrossEntropyLoss(), x, y,
       epochs=12, batch_size=16, seed=1, progress=False, lr_schedule=ready,
       checkpoint={path!r}, checkpoint_every=7)
print("finished", time.monotonic() - started[0])
"""


def test_ctrl_c_at_random_moments_of_a_checkpointing_run(tmp_path):
    """20 runs in child processes, each sent SIGINT at a random moment of its training:
    every final checkpoint loads, and resuming it gives the uninterrupted run bit for bit
    (one thread, so that the child and this process sum in the same order)."""
    backend = "cpu" if "cpu" in BACKENDS else "numpy"
    mf.set_num_threads(1)
    x, y = _data(480)

    def fresh():
        model = mf.MLP([8, 64, 64, 4], backend=backend, seed=0)
        return model, mf.optim.Adam(model.parameters(), lr=1e-2)

    def train(model, opt, **kwargs):
        return mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=12, batch_size=16,
                      seed=1, progress=False, lr_schedule=ready, checkpoint_every=7, **kwargs)

    reference, reference_opt = fresh()
    train(reference, reference_opt, checkpoint=tmp_path / "reference.ckpt")
    env = dict(os.environ, MLPFAST_NUM_THREADS="1")

    def start(run):
        path, marker = tmp_path / f"run{run}.ckpt", tmp_path / f"ready{run}"
        code = CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)),
                            marker=str(marker), backend=backend, path=str(path))
        child = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return child, path

    child, _ = start("timed")               # how long a child trains after its first step
    out, err = child.communicate(timeout=120)
    assert out.startswith("finished"), err[-2000:]
    seconds = float(out.split()[1])
    rng = random.Random(0)
    interrupted = 0
    for run in range(20):                   # Ctrl-C at a moment up to 1.1x the training
        child, path = start(run)
        time.sleep(rng.uniform(0.0, 1.1 * seconds))
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
        if "finished" not in out:       # (a signal after training may end the exiting
            assert "KeyboardInterrupt" in err, err[-2000:]     # interpreter: still finished)
            interrupted += 1
        model, opt = fresh()
        train(model, opt, checkpoint=path, resume=path)
        assert np.array_equal(model.flat_data, reference.flat_data), f"run {run}"
        assert opt.step_count == reference_opt.step_count
    assert interrupted >= 10, (f"only {interrupted} of 20 runs were interrupted in the "
                               f"{seconds:.2f} s of training")
