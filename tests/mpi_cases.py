"""The ranks' side of tests/test_distributed.py, run under ``mpiexec -n 2``:

    python tests/mpi_cases.py CASE OUT [ARGS]

Each case trains a small MLP on made-up data (FEATURES inputs, CLASSES classes) and writes
what the test checks into the folder OUT: parameters as RANK-suffixed .npy files, errors as
text files. A rank that stops with a DistributedError writes its message to OUT/error.RANK
and leaves with os._exit(3) (MPI_Finalize could wait for a lost rank).
"""
import os
import signal
import sys

import numpy as np

import mlpfast as mf
from mlpfast import distributed
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
          batch_size=BATCH, **options):
    """MLP FEATURES-HIDDEN-CLASSES (init seed 3), Adam lr 1e-2, cross-entropy."""
    x, y = make_data() if data is None else data
    model = mf.MLP([FEATURES, HIDDEN, CLASSES], backend=backend, seed=3)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-2)
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
    """Rank 1 stops (SIGSTOP) at step 13: its process exists but never answers."""
    cluster = distributed.Cluster(comm, timeout=3.0, roll_call=2.0)
    train(cluster, epochs=2, lr_schedule=_die_at(1, 13, signal.SIGSTOP))


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
             "comm": lambda: train("COMM_WORLD")}
    for name, call in calls.items():
        try:
            call()
            write(out, f"{name}.{rank}", "no error")
        except (TypeError, ValueError) as e:
            write(out, f"{name}.{rank}", f"{type(e).__name__}: {e}")


CASES = {"parity": case_parity, "kill": case_kill, "stall": case_stall, "full": case_full,
         "resume": case_resume, "bad_input": case_bad_input, "interrupt": case_interrupt}
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
