"""Data-parallel training over MPI (mlpfast.distributed). Each test runs tests/mpi_cases.py
(or the mlpfast command) under ``mpiexec -n 2`` in a subprocess and checks what the ranks
wrote. Needs the mpi extra (mpi4py + MPICH's wheel: ``pip install -e ".[mpi]"``, as .ci/run
does); elsewhere it skips with that reason, in CI (CI=true) it fails instead. The tests of
MPI's fault tolerance (ULFM) run under Open MPI 5 instead (ulfm_case; MLPFAST_TEST_OPENMPI)."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_close

import mpi_cases
from mlpfast.checkpoint import read_checkpoint
from mlpfast.env import openmpi_for_tests

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
MISSING = [what for what, ok in (("mpi4py", importlib.util.find_spec("mpi4py")),
                                 ("mpiexec", MPIEXEC)) if not ok]
if MISSING and os.environ.get("CI") != "true":
    pytest.skip(f"{' and '.join(MISSING)} not installed: pip install -e '.[mpi]'",
                allow_module_level=True)
# a launcher that leaves the survivors running when a rank dies (as Slurm's srun does):
# MPICH's mpiexec kills every rank when one dies of a signal, unless the rank's parent is
# a shell that outlives it, and -disable-auto-cleanup only sends the others SIGUSR1
LEAVE_SURVIVORS = ["-disable-auto-cleanup"]
SURVIVE = "trap '' USR1; \"$0\" \"$@\"; exit $?"
KILL_SECONDS = 60


# (mpiexec, libmpi) of Open MPI 5 (its wheel: pip install --prefix DIR openmpi; .ci/run
# does), for the tests that need an MPI with fault tolerance (ULFM), which MPICH's wheel
# lacks (MPIR_CVAR_ENABLE_FT=1 aborts in MPI_Init)
OPENMPI = openmpi_for_tests()


def mpiexec(*command, survivors=False, timeout=180, env=None, ranks=2):
    """Run ``command`` on ``ranks`` ranks (in ``env``, default this one's); (CompletedProcess,
    seconds). A hang past ``timeout`` kills the whole launch and fails the test."""
    launch = [MPIEXEC] + (LEAVE_SURVIVORS if survivors else []) + ["-n", str(ranks)]
    if survivors:
        launch += ["sh", "-c", SURVIVE]
    return launched(launch + list(command), timeout, env)


def launched(command, timeout, env):
    """Run the launcher ``command``: (CompletedProcess, seconds), as mpiexec()."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{command} still ran after {timeout} s:\n{out}\n{err}")
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return result, time.perf_counter() - started


def case(name, out, *args, **options):
    return mpiexec(sys.executable, os.path.join(HERE, "mpi_cases.py"), name, str(out),
                   *map(str, args), **options)


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def test_mpi_is_installed():
    assert not MISSING, f"{MISSING} missing: CI installs the mpi extra (.ci/run)"


def test_two_ranks_train_as_one_process(tmp_path):
    """20 Adam steps (uneven slices, a last batch of 1 row): both ranks hold the same bits,
    within 1e-5 relative of one process with the same global batch and seed; in bf16 too
    (each rank's loss gradient divided by the whole batch's rows before it is rounded).
    Rank 1 started from other weights and a stepped Adam ends with rank 0's result; its
    parameters changed in step 7 are caught by fit's check after step 10 (check_every=5).
    Rank 0 alone writes checkpoints."""
    result, _ = case("parity", tmp_path)
    assert result.returncode == 0, result.stderr
    for backend, run in mpi_cases.PARITY_RUNS.items():
        ranks = [np.load(tmp_path / f"{backend}.{r}.npy") for r in (0, 1)]
        assert np.array_equal(ranks[0], ranks[1]), backend
        model, optimizer, history = mpi_cases.train(None, *run)
        assert optimizer.step_count == 20
        assert_close(ranks[0], model.flat_data, tol=(1e-6, 1e-5), what=backend)
        losses = np.load(tmp_path / f"{backend}_loss.0.npy")
        assert_close(losses, np.array(history["loss"]), tol=(0, 1e-6), what="loss")
    seed_none = [np.load(tmp_path / f"seed_none.{r}.npy") for r in (0, 1)]
    assert np.array_equal(seed_none[0], seed_none[1])        # rank 0's seed on both
    for r in (0, 1):                      # rank 0's weights and Adam state on both
        assert np.array_equal(np.load(tmp_path / f"own_start.{r}.npy"),
                              np.load(tmp_path / "cpu.0.npy")), r
        assert "rank(s) [1] differ from rank 0's after optimizer step 10 " in \
            read(tmp_path, f"fit_drift.{r}"), r
    assert (tmp_path / "own.0.ckpt").exists() and not (tmp_path / "own.1.ckpt").exists()
    for r in (0, 1):                                         # the planted difference
        assert "rank(s) [1] differ from rank 0's after optimizer step 20" in \
            read(tmp_path, f"drift.{r}")


def test_killed_rank_is_named_and_the_run_resumes_exactly(tmp_path):
    """Rank 1 SIGKILLs itself in epoch 2 under a launcher that leaves rank 0 running: rank
    0 stops within 60 s naming rank 1; the last checkpoint loads, and 2 ranks resumed from
    it end bit-identical to the uninterrupted 2-rank run."""
    full, _ = case("full", tmp_path)
    assert full.returncode == 0, full.stderr
    ckpt = tmp_path / "run.ckpt"
    killed, seconds = case("kill", tmp_path, ckpt, survivors=True)
    assert killed.returncode != 0 and seconds < KILL_SECONDS, (seconds, killed.stderr)
    error = read(tmp_path, "error.0")
    assert error.startswith("RankLost: lost rank 1 (pid ") and "process is gone" in error
    progress = read_checkpoint(ckpt).meta["progress"]
    assert progress["epochs_done"] == 1 and 0 < progress["batches_done"] < 20
    assert progress["global_step"] % 5 == 0
    resumed, _ = case("resume", tmp_path, ckpt)
    assert resumed.returncode == 0, resumed.stderr
    for r in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"resumed.{r}.npy"),
                              np.load(tmp_path / "full.0.npy"))
        assert np.array_equal(np.load(tmp_path / f"resumed_loss.{r}.npy"),
                              np.load(tmp_path / "full_loss.0.npy"))


def test_killed_rank_under_plain_mpiexec(tmp_path):
    """MPICH's mpiexec itself stops every rank when one is killed; the checkpoint stays
    valid."""
    ckpt = tmp_path / "run.ckpt"
    killed, seconds = case("kill", tmp_path, ckpt)
    assert killed.returncode != 0 and seconds < KILL_SECONDS, (seconds, killed.stderr)
    assert read_checkpoint(ckpt).meta["progress"]["global_step"] >= 5


def test_stalled_rank_is_named_after_the_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP: its process exists, it never answers): rank 0 waits out its
    timeout (3 s), takes a roll call (2 s) and names rank 1."""
    result, seconds = case("stall", tmp_path)
    assert result.returncode != 0 and seconds < KILL_SECONDS, (seconds, result.stderr)
    error = read(tmp_path, "error.0")
    assert error.startswith("RankLost: lost rank 1 (pid ") and "roll call" in error, error


def test_ctrl_c_on_one_rank_stops_both_after_the_same_step(tmp_path):
    """SIGINT to rank 1 alone (fit takes Ctrl-C at a chunk boundary): both ranks stop after
    the same optimizer step, with equal parameters, and rank 0's final checkpoint holds
    that step and those parameters."""
    ckpt = tmp_path / "run.ckpt"
    result, _ = case("interrupt", tmp_path, ckpt)
    assert result.returncode == 0, result.stderr
    steps = [int(read(tmp_path, f"interrupt.{r}")) for r in (0, 1)]
    assert steps[0] == steps[1] and 1 <= steps[0] <= 14, steps
    params = [np.load(tmp_path / f"interrupted.{r}.npy") for r in (0, 1)]
    assert np.array_equal(params[0], params[1])
    saved = read_checkpoint(ckpt)
    assert saved.meta["progress"]["global_step"] == steps[0]
    flat = np.concatenate([a.ravel() for a in saved.model_state().values()])  # flat order
    assert np.array_equal(flat, params[0])


def test_bad_input_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 alone gets bad input: it raises its own error, rank 0 names rank 1 and its
    message; arguments that differ between ranks are a ValueError on every rank."""
    result, _ = case("bad_input", tmp_path)
    assert result.returncode == 0, result.stderr
    assert read(tmp_path, "nan.1") == "ValueError: x contains NaN or inf (first at row 3)"
    assert read(tmp_path, "nan.0") == ("RankFailed: fit did not start: rank 1 raised "
                                       "ValueError: x contains NaN or inf (first at row 3)")
    for r in (0, 1):
        assert read(tmp_path, f"batch.{r}").startswith(
            "ValueError: comm: every rank must call fit with the same model, data and "
            "arguments; rank 1 has data={'batch_size': 30")
    for r in (0, 1):
        assert read(tmp_path, f"val.{r}").startswith(
            "ValueError: comm: every rank must call fit with the same model, data and "
            "arguments; rank 1 has val_crc32=[")
        assert read(tmp_path, f"speech.{r}").startswith(
            "ValueError: comm: every rank must call fit with the same model, data and "
            "arguments; rank 1 has data_crc32={'context': 0, 'features': ")
    assert read(tmp_path, "gather.1") == "ValueError: row file 5 is corrupt"
    assert read(tmp_path, "gather.0").startswith(
        "RankFailed: rank 1 stopped with ValueError: row file 5 is corrupt")
    # a message too long for an alarm arrives cut, and rank 1 raises its own error
    assert read(tmp_path, "long.1") == "ValueError: row file 5 is corrupt" + "!" * 20000
    long_0 = read(tmp_path, "long.0")
    assert long_0.startswith("RankFailed: rank 1 stopped with ValueError: row file 5 is "
                             "corrupt!!!") and len(long_0) < 700
    assert long_0.endswith("! ... (rank 0 was waiting for the gradients of optimizer step 5)")
    for r in (0, 1):
        assert read(tmp_path, f"timeout.{r}") == \
            "ValueError: timeout must be a positive number of seconds, got 0"
        assert read(tmp_path, f"check_every.{r}") == \
            "ValueError: check_every must be a positive integer, got 1.5"
        assert read(tmp_path, f"check_every_0.{r}") == \
            "ValueError: check_every must be a positive integer, got 0"
        assert read(tmp_path, f"comm.{r}") == ("TypeError: comm must be an mpi4py "
                                               "intracommunicator or a "
                                               "mlpfast.distributed.Cluster, got str")


def test_threads_rows_and_faults_of_each_rank(tmp_path):
    """mpi_cases.case_split, without MLPFAST_NUM_THREADS:
    - a Cluster gives each rank its CPUs over the ranks of the node (2 here), unless a
      count was chosen (set_num_threads(7) is kept);
    - each step's batch of n rows (fit's order, one process with the same seed) is split
      as the module documents: rank r gathers rows [n r / 2, n (r + 1) / 2), in order;
      an empty slice gathers nothing;
    - ranks whose seed, epochs, lr or cosine warm-up differ, a resume on rank 1 alone, or a
      Dropout model, are refused on both;
    - a step whose gradient overflows on rank 1's rows alone stops both ranks with the
      message of one process (the batch's mean loss);
    - rank 1 reaching fit 5 s late and slow in its first step (timeout 2.5 s) trips
      nothing: the start and the first step wait start_timeout;
    - rank 0 failing inside root_first stops rank 1 with its message;
    - rank 0 failing to write a checkpoint stops rank 1 with rank 0's error."""
    env = {k: v for k, v in os.environ.items() if k != "MLPFAST_NUM_THREADS"}
    result, _ = case("split", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    for r in (0, 1):
        threads = json.loads(read(tmp_path, f"threads.{r}"))
        assert threads["chosen_before"] is False
        assert threads["default"] == max(1, threads["cpus"] // 2), threads
        assert threads["chosen"] == 7, threads

    rows = mpi_cases.RecordingRows(*mpi_cases.make_data())
    _, _, history = mpi_cases.train(None, data=(rows, None))
    order = np.concatenate(rows.gathered)         # one process may gather batches together
    assert sorted(order.tolist()) == list(range(mpi_cases.ROWS))
    batches = [order[i:i + mpi_cases.BATCH] for i in range(0, len(order), mpi_cases.BATCH)]
    assert [len(b) for b in batches] == [mpi_cases.BATCH] * 19 + [1]
    gathered = []
    for r in (0, 1):
        with np.load(tmp_path / f"gathered.{r}.npz") as saved:
            gathered.append([saved[f"arr_{i}"] for i in range(len(saved.files))])
    expected = [[b[len(b) * r // 2:len(b) * (r + 1) // 2] for b in batches] for r in (0, 1)]
    expected[0] = [part for part in expected[0] if len(part)]      # rank 0's empty slice
    for r in (0, 1):
        assert len(gathered[r]) == len(expected[r]), r
        for got, want in zip(gathered[r], expected[r]):
            assert np.array_equal(got, want), r
    # the correct rows of every rank counted once: one process's accuracy (a prediction
    # may flip in the last bits of the split sums: 2 rows of slack), the same on both ranks
    accuracy = [np.load(tmp_path / f"accuracy.{r}.npy") for r in (0, 1)]
    assert np.array_equal(accuracy[0], accuracy[1])
    assert np.abs(accuracy[0] - history["train_accuracy"]).max() * mpi_cases.ROWS <= 2
    # seed None: rank 0 draws the order, so the two slices of each step are one batch and
    # the epoch covers every row once
    slices = []
    for r in (0, 1):
        with np.load(tmp_path / f"gathered_seed_none.{r}.npz") as saved:
            slices.append([saved[f"arr_{i}"] for i in range(len(saved.files))])
    assert [len(s) for s in slices] == [19, 20]          # rank 0's slice of the last is empty
    order = np.concatenate([part for step in range(20) for part in
                            ([slices[0][step]] if step < 19 else []) + [slices[1][step]]])
    assert sorted(order.tolist()) == list(range(mpi_cases.ROWS))

    differ = "ValueError: comm: every rank must call fit with the same model, data and " \
             "arguments; rank 1 has "
    for r in (0, 1):
        assert read(tmp_path, f"seed.{r}").startswith(differ + "seed=1, rank 0 has 0")
        assert read(tmp_path, f"epochs.{r}").startswith(differ + "epochs=2, rank 0 has 1")
        assert read(tmp_path, f"lr.{r}").startswith(differ + "optimizer="), r
        assert read(tmp_path, f"schedule.{r}").startswith(differ + "schedule="), r
        assert read(tmp_path, f"resume.{r}").startswith(differ + "progress="), r
        assert read(tmp_path, f"dropout.{r}") == (
            "ValueError: comm: models with Dropout are not supported: their batch statistics "
            "and masks would depend on how the rows are split over ranks")
    alone = None
    try:
        mpi_cases.train(None, data=mpi_cases.diverging_data(), shuffle=False)
    except Exception as e:           # noqa: BLE001 - compared with the ranks' text
        alone = f"{type(e).__name__}: {e}"
    assert alone is not None and "epoch 1, step 1 of 20" in alone and \
        "the gradient norm overflows (loss " in alone, alone
    for r in (0, 1):
        assert read(tmp_path, f"diverged.{r}") == alone, r
        assert read(tmp_path, f"slow.{r}") == "ok", r
    assert read(tmp_path, "root_first.0") == "ValueError: no such file: data.npz"
    assert read(tmp_path, "root_first.1") == \
        "RankFailed: rank 0 could not load the data: ValueError: no such file: data.npz"
    error_0 = read(tmp_path, "checkpoint.0")
    assert error_0.startswith("FileNotFoundError: "), error_0
    assert read(tmp_path, "checkpoint.1").startswith(
        f"RankFailed: rank 0 stopped with {error_0} (rank 1 was waiting for the gradients "
        f"of optimizer step "), read(tmp_path, "checkpoint.1")
    for r in (0, 1):                   # after the fault: refused at once, not a new exchange
        after = read(tmp_path, f"after_fault.{r}")
        assert after == (f"DistributedError: rank {r} cannot wait for the parameter check of "
                         f"step 0: the run already stopped (rank 0 raised {error_0})"), after


def test_root_first_roll_calls_and_close(tmp_path):
    """mpi_cases.case_deadlines (timeouts 0.1 s, sleeps 0.8 s): root_first waits
    start_timeout on both sides and runs rank 0's block before the others'; ranks that both
    answer a roll call are out of step, not lost, and the roll call ends when everyone
    answered (roll_call 120 s; a hang past 60 s fails); a rank that never answers is named
    after roll_call seconds, not timeout (600 s); close() frees a healthy Cluster's
    communicators, after which a collective is refused, keeps a stopped Cluster's (its
    requests are pending), and a second close does nothing; join() replaces a closed
    Cluster."""
    result, _ = case("deadlines", tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    for r in (0, 1):
        assert read(tmp_path, f"slow_root.{r}") == "ok", r
        assert read(tmp_path, f"late.{r}") == "ok", r
    assert read(tmp_path, "saw_file.1") == "True"          # written in rank 0's block
    assert read(tmp_path, "late_fails.0") == "ValueError: no such file: data.npz"
    assert read(tmp_path, "late_fails.1") == \
        "RankFailed: rank 0 could not load the data: ValueError: no such file: data.npz"
    out_of_step = read(tmp_path, "out_of_step.0")          # "no progress for 0 s" (or 1 s)
    assert out_of_step.startswith("DistributedError: rank 0: every rank answered a roll "
                                  "call, but a barrier did not complete (no progress for ") \
        and out_of_step.endswith(" s); the ranks are out of step"), out_of_step
    assert read(tmp_path, "out_of_step.1") == (
        "DistributedError: rank 1: every rank answered a roll call, but a message did not "
        "complete (rank 0 called the roll); the ranks are out of step")
    silent = read(tmp_path, "silent.0")                    # no fit ran: no pid to name
    assert silent.startswith("RankLost: lost rank 1: it did not answer a roll call (no "
                             "progress for ") \
        and silent.endswith(" s); rank 0 was waiting for a barrier"), silent
    for r in (0, 1):
        closed = json.loads(read(tmp_path, f"closed.{r}"))
        assert closed["close"] == closed["again"] == "ok", closed
        assert closed["freed"] == [True, True], closed                 # COMM_NULL
        assert closed["stopped_close"] == closed["stopped_again"] == "ok", closed
        assert closed["stopped_freed"] == [False, False], closed
        assert closed["check_after_close"] == (
            f"DistributedError: rank {r} cannot wait for the parameter check of step 0: the "
            f"Cluster is closed"), closed
        assert closed["join_after_close"] == [True, "ok"], closed


def test_faults_reach_every_rank_of_three(tmp_path):
    """mpi_cases.case_three_ranks under ``mpiexec -n 3``: rank 1's error stops ranks 0
    and 2, each naming rank 1; when rank 2's process ends, rank 0 (its node) names it and
    its alarm makes rank 1 (another node by its host name) name rank 2 too, with rank 2's
    pid, as "found gone" by rank 0."""
    result, _ = case("three_ranks", tmp_path, ranks=3, survivors=True, timeout=60)
    for r in (0, 2):
        assert read(tmp_path, f"failed.{r}") == (
            f"RankFailed: rank 1 stopped with ValueError: row file 5 is corrupt (rank {r} "
            f"was waiting for the parameter check of step 0)"), result.stderr
    lost = f"RankLost: lost rank 2 (pid {read(tmp_path, 'pid.2')} on {socket.gethostname()}): "
    assert read(tmp_path, "lost.0") == lost + (
        "its process is gone; rank 0 was waiting for the parameter check of step 0")
    assert read(tmp_path, "lost.1") == lost + (
        "rank 0 found it gone; rank 1 was waiting for the parameter check of step 0")


def test_an_error_reaches_the_others_when_its_rank_exits_at_once(tmp_path):
    """mpi_cases.case_report_and_exit: rank 1 reports and ends its process; rank 0,
    0.5 s later in a collective, stops with rank 1's error."""
    result, _ = case("report_and_exit", tmp_path, survivors=True, timeout=60)
    assert read(tmp_path, "report.0") == (
        "RankFailed: rank 1 stopped with ValueError: disk full (rank 0 was waiting for the "
        "parameter check of step 0)"), result.stderr


def ulfm_case(name, out, *args, ranks=2):
    """mpi_cases ``name`` under Open MPI's ``mpiexec --with-ft ulfm``, which leaves the other
    ranks running when one dies and reports the failure to them through MPI."""
    if not OPENMPI:
        message = "MLPFAST_TEST_OPENMPI (an Open MPI 5 prefix) not set"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: .ci/run installs it")
        pytest.skip(f"{message}: pip install --prefix DIR openmpi")
    mpiexec_path, libmpi = OPENMPI
    variables = dict(os.environ, MPI4PY_LIBMPI=libmpi)
    if os.geteuid() == 0:
        variables.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return launched([mpiexec_path, "--with-ft", "ulfm", "--oversubscribe", "-n", str(ranks),
                     sys.executable, os.path.join(HERE, "mpi_cases.py"), name, str(out),
                     *map(str, args)], timeout=120, env=variables)


def test_ranks_that_mpi_reports_failed_are_named(tmp_path):
    """mpi_cases.case_ulfm under Open MPI with fault tolerance, 3 ranks: ranks 0 and 2
    end; rank 1 gets MPI_ERR_PROC_FAILED from its collective and names the ranks of
    Comm.Get_failed's group, 0 and 2, in MPI's words (not MPI_ERR_IN_STATUS, the error of
    Testall itself)."""
    result, _ = ulfm_case("ulfm", tmp_path, ranks=3)
    assert read(tmp_path, "ulfm.1") == (
        "RankLost: lost rank 0, rank 2: MPI reported: MPI_ERR_PROC_FAILED: Process Failure; "
        "rank 1 was waiting for the parameter check of step 0"), result.stderr


def test_killed_rank_under_open_mpi_with_fault_tolerance(tmp_path):
    """mpi_cases.case_kill under Open MPI with fault tolerance: rank 1 SIGKILLs itself at
    step 33 of a fit; rank 0 names it (from its node's processes or from MPI, whichever
    sees it first) and stops; the checkpoint of step 30 stays valid."""
    ckpt = tmp_path / "run.ckpt"
    result, seconds = ulfm_case("kill", tmp_path, ckpt)
    assert result.returncode != 0 and seconds < KILL_SECONDS, (seconds, result.stderr)
    error = read(tmp_path, "error.0")
    assert error.startswith("RankLost: lost rank 1 (pid ") and \
        ("process is gone" in error or "MPI_ERR_PROC_FAILED" in error), error
    assert read_checkpoint(ckpt).meta["progress"]["global_step"] == 30


def test_a_zombie_rank_process_counts_as_gone():
    """A rank killed under a launcher that does not reap it stays a zombie: its pid still
    exists, but it is no longer alive."""
    from mlpfast.checkpoint import _process_exists
    from mlpfast.distributed import _process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:            # exited, not yet reaped: a zombie
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert _process_exists(child.pid) and not _process_alive(child.pid)
    finally:
        child.wait()
    assert _process_alive(os.getpid())


def test_train_mnist_distributed(tmp_path):
    """``mpiexec -n 2 mlpfast train mnist --distributed``: rank 0 prints and saves."""
    model_path = tmp_path / "m.npz"
    result, _ = mpiexec(sys.executable, "-m", "mlpfast.cli", "train", "mnist", "--distributed",
                        "--epochs", "1", "--hidden", "32", "--batch-size", "256",
                        "--save", str(model_path), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 ranks" in result.stdout and result.stdout.count("epoch 1/1") == 1
    assert result.stdout.count("test accuracy: ") == 1          # rank 1 neither evaluates
    assert result.stdout.count(f"saved model to {model_path}") == 1       # nor saves
    assert float(result.stdout.split("test accuracy: ")[1].split("%")[0]) > 85.0
    assert model_path.exists()
