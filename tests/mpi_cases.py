"""The ranks' side of tests/test_distributed.py, run under ``mpiexec -n 2``:

    python tests/mpi_cases.py CASE OUT [ARGS]

Each case trains a small MLP on made-up data (FEATURES inputs, CLASSES classes) and writes
what the test checks into the folder OUT: parameters as RANK-suffixed .npy files, errors as
text files. A rank that stops with a DistributedError writes its message to OUT/error.RANK
and leaves with os._exit(3) (MPI_Finalize could wait for a lost rank).
"""
import json
import os
import shutil
import signal
import sys
import time

import numpy as np

import mlpfast as mf
from mlpfast import distributed
from mlpfast.backend import threads_chosen
from mlpfast.data.speech import SpeechFrames

FEATURES, HIDDEN, CLASSES = 13, 17, 5
BATCH = 29                  # odd: the two ranks' slices differ by one row
ROWS = 19 * BATCH + 1       # 20 steps an epoch, the last of 1 row: rank 0's slice is empty


def make_data(rows=ROWS, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, rows).astype(np.int64)
    return x, y


def train(comm, backend="cpu", precision="fp32", epochs=1, seed=0, data=None,
          batch_size=BATCH, lr=1e-2, dropout=0.0, **options):
    """MLP FEATURES-HIDDEN-CLASSES (init seed 3), Adam lr 1e-2, cross-entropy."""
    x, y = make_data() if data is None else data
    model = mf.MLP([FEATURES, HIDDEN, CLASSES], backend=backend, seed=3, dropout=dropout)
    optimizer = mf.optim.Adam(model.parameters(), lr=lr)
    history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=epochs,
                     batch_size=batch_size, seed=seed, progress=False, comm=comm,
                     precision=precision, **options)
    return model, optimizer, history


def write(out, name, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


# (backend, precision) of each parity run
PARITY_RUNS = {"cpu": ("cpu", "fp32"), "numpy": ("numpy", "fp32"), "bf16": ("cpu", "bf16")}


def case_parity(comm, out):
    """20 Adam steps on cpu (compiled step, fp32 and bf16) and numpy (layer by layer), seed
    0 and None; the cpu run again with rank 1 starting from its own weights and Adam state;
    a fit with a checkpoint path of each rank's own; a fit whose rank 1 drifts at step 7
    under check_every=5;
    then a planted difference in rank 1's parameters must raise ParameterDrift."""
    rank = comm.Get_rank()
    for backend in ("cpu", "numpy", "bf16"):
        model, _, history = train(comm, *PARITY_RUNS[backend])
        np.save(os.path.join(out, f"{backend}.{rank}.npy"), model.flat_data)
        np.save(os.path.join(out, f"{backend}_loss.{rank}.npy"), history["loss"])
    model, _, _ = train(comm, "cpu", seed=None)
    np.save(os.path.join(out, f"seed_none.{rank}.npy"), model.flat_data)
    # rank 1 starts from other weights and an optimizer one step along: rank 0's
    # parameters, moments and step count must replace them (the cpu run's result)
    model = mf.MLP([FEATURES, HIDDEN, CLASSES], backend="cpu", seed=3 + 10 * rank)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-2)
    if rank == 1:
        model.flat_grad[...] = np.linspace(-1.0, 1.0, model.flat_grad.size)
        optimizer.step()
    x, y = make_data()
    mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=BATCH, seed=0,
           progress=False, comm=comm)
    np.save(os.path.join(out, f"own_start.{rank}.npy"), model.flat_data)
    # each rank names its own checkpoint file: rank 0 alone writes one
    train(comm, "cpu", checkpoint=os.path.join(out, f"own.{rank}.ckpt"))
    # rank 1's parameters drift while it gathers step 7's rows: with check_every=5 the
    # check after optimizer step 10 finds it
    model = mf.MLP([FEATURES, HIDDEN, CLASSES], backend="cpu", seed=3)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-2)
    try:
        mf.fit(model, optimizer, mf.CrossEntropyLoss(),
               DriftingRows(x, y, model if rank == 1 else None, 7), epochs=1,
               batch_size=BATCH, seed=0, progress=False,
               comm=distributed.Cluster(comm, check_every=5))
        write(out, f"fit_drift.{rank}", "no error")
    except distributed.ParameterDrift as e:
        write(out, f"fit_drift.{rank}", str(e))
    if rank == 1:
        model.flat_data[0] += 1.0
    try:
        distributed.join(comm).check_parameters(model.flat_data, 20)
    except distributed.ParameterDrift as e:
        write(out, f"drift.{rank}", str(e))


def _die_at(rank, step, how):
    """An lr schedule (factor 1) under which ``rank`` stops itself with signal ``how``
    when fit asks for the rate of global step ``step``."""
    def schedule(t, total):
        if t == step and _RANK == rank:
            if how == signal.SIGSTOP:
                with open(os.path.join(_OUT, "stopped.pid"), "w") as f:
                    f.write(str(os.getpid()))
            os.kill(os.getpid(), how)
        return 1.0
    return schedule


def case_kill(comm, out, ckpt):
    """Two epochs with a checkpoint every 5 steps; rank 1 SIGKILLs itself at step 33."""
    train(comm, epochs=2, checkpoint=ckpt, checkpoint_every=5,
          lr_schedule=_die_at(1, 33, signal.SIGKILL))


def case_stall(comm, out):
    """Rank 1 stops (SIGSTOP) at step 13: its process exists but never answers. Rank 0,
    once it has named rank 1, ends it with SIGKILL: mpiexec's teardown once waited past
    the test's 180 s on the stopped process (a CI run on a loaded machine)."""
    cluster = distributed.Cluster(comm, timeout=3.0, roll_call=2.0)
    try:
        train(cluster, epochs=2, lr_schedule=_die_at(1, 13, signal.SIGSTOP))
    except distributed.RankLost:
        stopped = os.path.join(out, "stopped.pid")
        if os.path.exists(stopped):
            with open(stopped) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        raise


def case_full(comm, out):
    """The uninterrupted two-epoch run of case_kill (same schedule function, no signal)."""
    model, _, history = train(comm, epochs=2, checkpoint_every=5,
                           checkpoint=os.path.join(out, "full.ckpt"),
                           lr_schedule=_die_at(None, -1, None))
    np.save(os.path.join(out, f"full.{comm.Get_rank()}.npy"), model.flat_data)
    np.save(os.path.join(out, f"full_loss.{comm.Get_rank()}.npy"), history["loss"])


def case_resume(comm, out, ckpt):
    model, _, history = train(comm, epochs=2, checkpoint_every=5, checkpoint=ckpt, resume=ckpt,
                           lr_schedule=_die_at(None, -1, None))
    np.save(os.path.join(out, f"resumed.{comm.Get_rank()}.npy"), model.flat_data)
    np.save(os.path.join(out, f"resumed_loss.{comm.Get_rank()}.npy"), history["loss"])


def case_interrupt(comm, out, ckpt):
    """Rank 1 alone gets Ctrl-C (SIGINT) at step 13: both ranks stop after the same step,
    rank 0 writes the final checkpoint, both raise KeyboardInterrupt."""
    model = mf.MLP([FEATURES, HIDDEN, CLASSES], seed=3)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-2)
    x, y = make_data()
    try:
        mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=BATCH,
               seed=0, progress=False, comm=comm, checkpoint=ckpt, checkpoint_every=100,
               lr_schedule=_die_at(1, 13, signal.SIGINT))
        write(out, f"interrupt.{comm.Get_rank()}", "no interrupt")
    except KeyboardInterrupt:
        write(out, f"interrupt.{comm.Get_rank()}", str(optimizer.step_count))
        np.save(os.path.join(out, f"interrupted.{comm.Get_rank()}.npy"), model.flat_data)


class FailingRows:
    """A dataset whose gather_batch raises at its ``fail_at``-th call (never when None)."""

    def __init__(self, x, y, fail_at, detail=""):
        self.x, self.y, self.fail_at, self.calls, self.detail = x, y, fail_at, 0, detail
        self.num_features, self.num_classes = x.shape[1], CLASSES

    def __len__(self):
        return self.x.shape[0]

    def gather_batch(self, index, x_out, y_out):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError(f"row file {self.calls} is corrupt{self.detail}")
        x_out[...] = self.x[index]
        y_out[...] = self.y[index]


class DriftingRows(FailingRows):
    """Rows that add 1 to ``model``'s first parameter at the ``at``-th gather (model None:
    never)."""

    def __init__(self, x, y, model, at):
        super().__init__(x, y, None)
        self.model, self.at = model, at

    def gather_batch(self, index, x_out, y_out):
        super().gather_batch(index, x_out, y_out)
        if self.calls == self.at and self.model is not None:
            self.model.flat_data[0] += 1.0


def case_bad_input(comm, out):
    """Fits stopped by rank 1: a NaN in its x; another batch_size; other validation labels;
    a speech dataset with other features; a dataset that fails in the 5th batch, with a
    short and with a 20,000-character message. Then bad arguments on every rank. Every
    rank writes what it raised."""
    rank = comm.Get_rank()
    x, y = make_data()
    nan_x = x.copy()
    if rank == 1:
        nan_x[3, 2] = np.nan
    val_y = np.roll(y[:50], rank)
    frames = SpeechFrames.from_arrays([x * (1 + rank)], [y], context=0, phones=list("abcde"))
    runs = {"nan": dict(data=(nan_x, y)),
            "batch": dict(batch_size=BATCH + rank),
            "val": dict(val=(x[:50], val_y)),
            "speech": dict(data=(frames, None)),
            "gather": dict(data=(FailingRows(x, y, 5 if rank == 1 else None), None)),
            "long": dict(data=(FailingRows(x, y, 5 if rank == 1 else None, "!" * 20000),
                               None))}
    for name, options in runs.items():
        try:
            train(comm, **options)
            write(out, f"{name}.{rank}", "no error")
        except (ValueError, distributed.DistributedError) as e:
            write(out, f"{name}.{rank}", f"{type(e).__name__}: {e}")
    calls = {"timeout": lambda: distributed.Cluster(comm, timeout=0),
             "check_every": lambda: distributed.Cluster(comm, check_every=1.5),
             "check_every_0": lambda: distributed.Cluster(comm, check_every=0),
             "comm": lambda: train("COMM_WORLD")}
    for name, call in calls.items():
        try:
            call()
            write(out, f"{name}.{rank}", "no error")
        except (TypeError, ValueError) as e:
            write(out, f"{name}.{rank}", f"{type(e).__name__}: {e}")


class RecordingRows(FailingRows):
    """Rows that keep the index of every gather_batch call (``gathered``)."""

    def __init__(self, x, y):
        super().__init__(x, y, None)
        self.gathered = []

    def gather_batch(self, index, x_out, y_out):
        super().gather_batch(index, x_out, y_out)
        self.gathered.append(index.copy())


class SlowFirstRows(FailingRows):
    """Rows whose first gather_batch takes ``seconds`` longer (a rank still compiling)."""

    def __init__(self, x, y, seconds):
        super().__init__(x, y, None)
        self.seconds = seconds

    def gather_batch(self, index, x_out, y_out):
        super().gather_batch(index, x_out, y_out)
        if self.calls == 1:
            time.sleep(self.seconds)


DIVERGING_ROW = 20          # in rank 1's half of the first batch: rows 14..28 of 0..28


def diverging_data():
    """make_data with row DIVERGING_ROW scaled to 1e25: finite, but its gradient's square
    overflows float32."""
    x, y = make_data()
    x[DIVERGING_ROW] *= 1e25
    return x, y


def outcome(call):
    """"ok", or the exception call() raised as "Type: message"."""
    try:
        call()
        return "ok"
    except Exception as e:           # noqa: BLE001 - the test reads which one
        return f"{type(e).__name__}: {e}"


def check_outcome(cluster):
    """outcome() of a small collective on ``cluster``: the parameter check of step 0 (the
    text the tests read names it)."""
    return outcome(lambda: cluster.check_parameters(np.zeros(3, np.float32), 0))


def case_split(comm, out):
    """Run without MLPFAST_NUM_THREADS. The threads a Cluster gives each rank (then with a
    count chosen first); the rows each rank gathers in an epoch; fits refused because the
    ranks' seed, epochs, lr or schedule's settings differ, or only rank 1 resumes, or for a
    Dropout model; a step that diverges on rank 1's rows only; rank 1 slow to start (a
    second timeout it must not trip); rank 0 failing inside root_first; last, rank 0's
    checkpoint write failing (the communicator is unusable after it)."""
    rank = comm.Get_rank()
    threads = {"cpus": len(os.sched_getaffinity(0)), "chosen_before": threads_chosen()}
    distributed.Cluster(comm)
    threads["default"] = mf.get_num_threads()
    mf.set_num_threads(7)
    distributed.Cluster(comm)
    threads["chosen"] = mf.get_num_threads()
    write(out, f"threads.{rank}", json.dumps(threads))

    x, y = make_data()
    rows = RecordingRows(x, y)
    _, _, history = train(comm, data=(rows, None))
    np.savez(os.path.join(out, f"gathered.{rank}.npz"), *rows.gathered)
    np.save(os.path.join(out, f"accuracy.{rank}.npy"), history["train_accuracy"])
    rows = RecordingRows(x, y)
    train(comm, data=(rows, None), seed=None)          # rank 0 draws the order for both
    np.savez(os.path.join(out, f"gathered_seed_none.{rank}.npz"), *rows.gathered)

    for name, options in {"seed": dict(seed=rank), "epochs": dict(epochs=1 + rank),
                          "lr": dict(lr=1e-2 * (1 + rank)), "dropout": dict(dropout=0.1)}.items():
        write(out, f"{name}.{rank}", outcome(lambda: train(comm, **options)))
    write(out, f"diverged.{rank}", outcome(lambda: train(comm, data=diverging_data(),
                                                        shuffle=False)))
    write(out, f"schedule.{rank}", outcome(lambda: train(
        comm, lr_schedule=mf.schedules.make_schedule("cosine", warmup_steps=2 + rank))))
    ckpt = os.path.join(out, "one_epoch.ckpt")         # rank 0 writes it, rank 1 alone resumes
    train(comm, checkpoint=ckpt)
    comm.Barrier()                                     # written before rank 1 reads it
    write(out, f"resume.{rank}", outcome(lambda: train(comm, epochs=2,
                                                      resume=ckpt if rank == 1 else None)))
    slow = distributed.Cluster(comm, timeout=2.5, roll_call=2.0)

    def slow_start():
        if rank == 1:
            time.sleep(5.0)                             # rank 1 reaches fit 5 s late ...
        slow_rows = SlowFirstRows(x[:2 * BATCH], y[:2 * BATCH], 5.0 if rank == 1 else 0.0)
        train(slow, data=(slow_rows, None))       # ... and its first step is 5 s slow (2
    write(out, f"slow.{rank}", outcome(slow_start))     # steps: little time under 2.5 s)

    def root_fails():
        with distributed.join(comm).root_first("load the data"):
            if rank == 0:
                raise ValueError("no such file: data.npz")
    write(out, f"root_first.{rank}", outcome(root_fails))

    folder = os.path.join(out, "ckpt")
    os.makedirs(folder, exist_ok=True)
    comm.Barrier()

    def remove_folder(t, total):        # rank 0 removes it when fit asks for step 2's rate
        if t == 2 and rank == 0:
            shutil.rmtree(folder)
        return 1.0
    cluster = distributed.Cluster(comm, timeout=10.0, roll_call=2.0)
    write(out, f"checkpoint.{rank}", outcome(lambda: train(
        cluster, checkpoint=os.path.join(folder, "run.ckpt"), checkpoint_every=5,
        lr_schedule=remove_folder)))
    write(out, f"after_fault.{rank}", check_outcome(cluster))   # it refuses every collective


def case_deadlines(comm, out):
    """root_first, roll calls and close() on Clusters with 0.1 s timeouts:
    - rank 0's block takes 0.8 s and writes a file: rank 1 waits start_timeout (60 s), not
      timeout, and runs its block after rank 0's (it sees the file);
    - rank 1 reaches root_first 0.8 s late: rank 0 waits start_timeout for it, with its
      block passing and failing (rank 1 stops with rank 0's error);
    - rank 0 waits 0.1 s on a barrier rank 1 never joins while rank 1 waits on a message
      rank 0 never sends: rank 0 calls the roll (roll_call 120 s), rank 1 answers at once
      and both stop out of step, neither lost;
    - rank 0 waits 0.1 s on a barrier on a Cluster whose timeout is 600 s and roll_call
      0.1 s, which rank 1 never uses: rank 0 names rank 1 after the roll call (0.1 s);
    - close() frees a healthy Cluster's communicators (a collective after it is refused)
      and not those of a stopped one; a second close does nothing; join() makes a new
      Cluster for a communicator whose Cluster was closed.
    Ends with os._exit(0): the stopped Clusters' requests never complete (MPI_Finalize
    could wait for them)."""
    from mpi4py import MPI
    rank = comm.Get_rank()
    cluster = distributed.Cluster(comm, timeout=0.1, start_timeout=60.0, roll_call=0.1)
    made = os.path.join(out, "made_by_rank_0")

    def slow_root():
        with cluster.root_first("write a file"):
            if rank == 0:
                time.sleep(0.8)
                write(out, "made_by_rank_0", "")
            else:
                write(out, "saw_file.1", str(os.path.exists(made)))
    write(out, f"slow_root.{rank}", outcome(slow_root))

    def late_other(fail):
        if rank == 1:
            time.sleep(0.8)
        with cluster.root_first("load the data"):
            if rank == 0 and fail:
                raise ValueError("no such file: data.npz")
    write(out, f"late.{rank}", outcome(lambda: late_other(False)))
    write(out, f"late_fails.{rank}", outcome(lambda: late_other(True)))

    apart = distributed.Cluster(comm, timeout=60.0, roll_call=120.0)

    def out_of_step():
        if rank == 0:
            apart.wait([apart.comm.Ibarrier()], "a barrier", timeout=0.1)
        else:
            apart.wait([apart.comm.Irecv(np.zeros(1), source=0, tag=5)], "a message")
    write(out, f"out_of_step.{rank}", outcome(out_of_step))

    silent = distributed.Cluster(comm, timeout=600.0, roll_call=0.1)
    if rank == 0:
        write(out, "silent.0", outcome(
            lambda: silent.wait([silent.comm.Ibarrier()], "a barrier", timeout=0.1)))

    healthy = distributed.Cluster(comm)
    closed = {"close": outcome(healthy.close), "again": outcome(healthy.close),
              "freed": [healthy.comm == MPI.COMM_NULL, healthy.alarm_comm == MPI.COMM_NULL],
              "stopped_close": outcome(apart.close), "stopped_again": outcome(apart.close),
              "stopped_freed": [apart.comm == MPI.COMM_NULL, apart.alarm_comm == MPI.COMM_NULL],
              "check_after_close": check_outcome(healthy)}
    first = distributed.join(comm)
    first.close()
    again = distributed.join(comm)                  # a closed Cluster is not reused
    closed["join_after_close"] = [again is not first, check_outcome(again)]
    write(out, f"closed.{rank}", json.dumps(closed))
    os._exit(0)


def case_three_ranks(comm, out):
    """Under ``mpiexec -n 3``: rank 1 reports an error: ranks 0 and 2 both stop with it.
    Then rank 2 SIGKILLs itself; rank 1 acts as if on another node than rank 2 (another
    host name in the start-up exchange), so only rank 0 sees that rank 2's process is gone:
    its alarm stops rank 1 long before rank 1's own timeout (10 s). Rank 1 reaches that
    check 0.5 s late, and every rank ends with os._exit(0) (MPI_Finalize could wait for
    rank 2) at once: rank 0's alarm must have left before its RankLost was raised."""
    rank = comm.Get_rank()
    failing = distributed.Cluster(comm, timeout=10.0, roll_call=1.0)
    lost = distributed.Cluster(comm, timeout=10.0, roll_call=1.0)
    write(out, f"pid.{rank}", str(os.getpid()))
    if rank == 1:
        failing.report(ValueError("row file 5 is corrupt"))
    else:
        write(out, f"failed.{rank}", check_outcome(failing))

    if rank == 1:
        lost.host = "another-node"
    lost.agree(None, {})                 # every rank's host and pid
    if rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 1:
        time.sleep(0.5)
    write(out, f"lost.{rank}", check_outcome(lost))
    os._exit(0)


def case_report_and_exit(comm, out):
    """Rank 1 reports an error and ends its process at once, as ``mlpfast train`` does
    (os._exit); rank 0 reaches a collective 0.5 s later. Its alarm (BLOB_BYTES, which MPI
    moves only when the receiver asks) must have left rank 1 first: rank 0 stops with rank
    1's error, not with an MPI error about a process it cannot read."""
    rank = comm.Get_rank()
    cluster = distributed.Cluster(comm, timeout=10.0, roll_call=5.0)
    if rank == 1:
        cluster.report(ValueError("disk full"))
        os._exit(0)
    time.sleep(0.5)
    write(out, "report.0", check_outcome(cluster))
    os._exit(0)


def case_ulfm(comm, out):
    """Under Open MPI's ``mpiexec --with-ft ulfm -n 3`` (fault tolerance): ranks 0 and 2
    SIGKILL themselves; rank 1, whose Cluster has no peers (no fit ran), can learn it only
    from MPI, which fails its collective (MPI_ERR_PROC_FAILED) and names the failed
    processes (Comm.Get_failed). Ends with os._exit(0)."""
    rank = comm.Get_rank()
    cluster = distributed.Cluster(comm, timeout=20.0)
    if rank != 1:
        os.kill(os.getpid(), signal.SIGKILL)
    write(out, "ulfm.1", check_outcome(cluster))
    os._exit(0)


CASES = {"parity": case_parity, "split": case_split, "kill": case_kill, "stall": case_stall,
         "full": case_full, "resume": case_resume, "bad_input": case_bad_input,
         "interrupt": case_interrupt, "deadlines": case_deadlines,
         "three_ranks": case_three_ranks, "report_and_exit": case_report_and_exit,
         "ulfm": case_ulfm}
_RANK = _OUT = None


def main(argv):
    global _RANK, _OUT
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    _RANK, _OUT = comm.Get_rank(), argv[1]
    try:
        CASES[argv[0]](comm, *argv[1:])
    except distributed.DistributedError as e:
        write(_OUT, f"error.{_RANK}", f"{type(e).__name__}: {e}")
        print(f"rank {_RANK}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(3)


if __name__ == "__main__":
    main(sys.argv[1:])
