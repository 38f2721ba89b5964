"""Data-parallel training over MPI (mpi4py): ``fit(..., comm=MPI.COMM_WORLD)`` trains one
model on N processes (ranks) as one process would, up to the order of summation.

Every rank holds the whole model and data set and makes the same ``fit`` call. At the start
the ranks compare what they were given (arguments, CRC-32s of the training and validation
data or a dataset object's ``fingerprint()``, architecture, backend, optimizer, checkpoint
progress; not threads: they change the last bits of a rank's share of the gradient, but
every rank applies the same reduced sum); an error on one rank is raised there and
reported to the others, which stop too. Then every rank takes rank
0's parameters, buffers, optimizer state and random generator. Each step of a global
batch of n rows (``batch_size`` is the global batch; every rank draws the same order):

    rank r of N trains on rows [n r / N, n (r + 1) / N) of the batch (n_r rows, maybe 0)
    g_r = gradient of (summed loss over those rows) / n       0 when n_r = 0
    g   = sum_r g_r = the batch's mean gradient: one Allreduce over the flat gradient buffer
    (summed loss, correct rows, Ctrl-C seen): a 3-value Allreduce in flight with it

then the finiteness check on g (the same numbers, so the same verdict on every rank) and
the optimizer's step (the same arithmetic on the same numbers on every rank). Every
``check_every`` optimizer steps the ranks compare a CRC-32 of their parameters: a
difference raises ParameterDrift. Rank 0 alone writes checkpoints; every rank resumes from
the same file.

Faults: every collective is non-blocking and polled against a deadline. While waiting, a
rank reads alarms from the others (a rank that raises sends one before it stops) and looks
whether the processes of its node's other ranks still exist; MPI implementations with
fault tolerance (ULFM) name failed ranks themselves. When the deadline passes, the rank
takes a roll call on a communicator of its own: ranks that do not answer within
``roll_call`` seconds are named lost. The errors: RankFailed (a rank raised: its message),
RankLost (a rank is gone), ParameterDrift; all are DistributedError (a RuntimeError). After
RankFailed or RankLost the communicator is unusable: end the process (MPI_Finalize can wait
forever for a lost rank; ``mlpfast train --distributed`` exits with os._exit). Ending it
at once loses no alarm: a rank that tells of its own error, or of a loss only it has seen,
waits up to ``roll_call`` seconds for the alarm to leave before it raises.

Threads: a Cluster sets every rank's kernel threads to the CPUs it may run on divided by
the ranks on its node (MPI's shared-memory split), unless MLPFAST_NUM_THREADS or
set_num_threads chose a count. MPI itself runs no threads of its own here (MPICH's default).
"""
import atexit
import contextlib
import hashlib
import json
import math
import os
import socket
import time
import zlib

import numpy as np

from .backend import set_num_threads, threads_chosen
from .backend.steps import gradients_finite
from .checkpoint import _process_exists
from .datasets import contents_digest
from .machine import available_cpus
from .resume import _jsonable

BLOB_BYTES = 8192          # one rank's message in the start-up exchange and in alarms
ALARM_TAG = 7071
# A collective progresses only while its ranks call into MPI: a waiting rank tests in a
# loop for SPIN_SECONDS (as MPI's blocking calls do; yielding the CPU to other processes
# between tests slows a collective under load: bench/README.md, "Measured on this
# machine"), then sleeps NAP_SECONDS between tests (a rank that slow is not waiting on the
# network).
SPIN_SECONDS = 1.0
NAP_SECONDS = 1e-3
LOOK_SECONDS = 0.25        # between looks for alarms and for local ranks that are gone


class DistributedError(RuntimeError):
    """A distributed run stopped; ``ranks`` names the ranks at fault."""

    def __init__(self, message, ranks=()):
        super().__init__(message)
        self.ranks = tuple(ranks)


class RankFailed(DistributedError):
    """Another rank raised an error (its message is in this one)."""


class RankLost(DistributedError):
    """A rank is gone (its process ended) or stopped answering."""


class ParameterDrift(DistributedError):
    """The ranks' parameters are no longer bit-identical."""


def mpi():
    """The mpi4py.MPI module (importing it initializes MPI), or a RuntimeError that says
    how to install it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("distributed training needs mpi4py and an MPI library: "
                           "pip install 'mlpfast[mpi]'") from None
    return MPI


def _positive_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Cluster:
    """The ranks of an MPI intracommunicator, set up for ``fit(..., comm=cluster)``.

    ``timeout``: seconds a rank waits in a collective before it takes a roll call;
    ``start_timeout``: the same for the exchange at the start of fit and the first step
    (ranks load data and compile kernels at different speeds); ``roll_call``: seconds the
    ranks have to answer one; ``check_every``: optimizer steps between parameter checks.
    Creating a Cluster is collective (it duplicates ``comm`` twice and splits it by node).
    """

    def __init__(self, comm, *, timeout=30.0, start_timeout=300.0, roll_call=10.0,
                 check_every=100):
        MPI = mpi()
        if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
            raise TypeError(f"comm must be an mpi4py intracommunicator such as "
                            f"MPI.COMM_WORLD, got {type(comm).__name__}")
        self.timeout = _positive_real("timeout", timeout)
        self.start_timeout = _positive_real("start_timeout", start_timeout)
        self.roll_call_seconds = _positive_real("roll_call", roll_call)
        if isinstance(check_every, bool) or not isinstance(check_every, (int, np.integer)) \
                or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        self.check_every = int(check_every)
        self.MPI = MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.comm, self.alarm_comm = comm.Dup(), comm.Dup()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.peers = {}                     # rank -> (host, pid), from the start of fit
        self.broken = None                  # the error that made the communicator unusable
        self.closed = False                 # close() ran: no more collectives
        self._alarm_buf = np.zeros(BLOB_BYTES, np.uint8)
        self._alarm_request = self.alarm_comm.Irecv(self._alarm_buf, source=MPI.ANY_SOURCE,
                                                    tag=ALARM_TAG)
        self._sent = []                     # (request, buffer, destination) of alarms sent
        if not threads_chosen():
            set_num_threads(max(1, (available_cpus() or 1) // self.local_size))
        atexit.register(self.close)

    def __repr__(self):
        return f"Cluster(rank {self.rank} of {self.size}, {self.local_size} on {self.host})"

    # -- waiting ---------------------------------------------------------------------
    def wait(self, requests, what, timeout=None):
        """Poll ``requests`` until all complete (``what``, a noun phrase, names them in
        errors: "rank 1 was waiting for {what}"). Raises RankFailed when another rank
        reports an error, RankLost when a rank is gone or silent past the deadline."""
        self._usable(what)
        start = time.perf_counter()
        deadline = start + (self.timeout if timeout is None else timeout)
        next_look = start + LOOK_SECONDS
        statuses = [self.MPI.Status() for _ in requests]
        while True:
            now = time.perf_counter()
            try:
                if self.MPI.Request.Testall(requests, statuses):
                    return
                if now >= next_look:
                    self._look(what)
                    next_look = now + LOOK_SECONDS
            except self.MPI.Exception as error:      # ULFM: a process failed
                self._lost(self._failed_ranks(), what,
                           f"MPI reported: {self._mpi_error_text(error, statuses)}",
                           deliver=True)
            if now >= deadline:
                self._roll_call(what, f"no progress for {now - start:.0f} s")
            if now - start > SPIN_SECONDS:
                time.sleep(NAP_SECONDS)

    def _usable(self, what):
        """The communicator, for a collective (``what``, as in wait); DistributedError when
        close() ran or a fault left the communicator unusable."""
        if self.closed:
            raise DistributedError(f"rank {self.rank} cannot wait for {what}: the Cluster is "
                                   f"closed")
        if self.broken is not None:
            raise DistributedError(f"rank {self.rank} cannot wait for {what}: the run already "
                                   f"stopped ({self.broken})")
        return self.comm

    def _look(self, what):
        """Alarms from other ranks; ranks of this node whose process is gone."""
        alarms = self._read_alarms()
        if alarms:
            self._answer(alarms, what)
        gone = [r for r, (host, pid) in self.peers.items()
                if host == self.host and not _process_alive(pid)]
        if gone:
            self._lost(gone, what, "its process is gone", deliver=True)

    def _mpi_error_text(self, error, statuses):
        """MPI's words for ``error`` from Testall; for MPI_ERR_IN_STATUS (Open MPI's answer
        when a request failed), the failed requests' own errors instead."""
        if error.Get_error_class() == self.MPI.ERR_IN_STATUS:
            codes = sorted({s.Get_error() for s in statuses}
                           - {self.MPI.SUCCESS, self.MPI.ERR_PENDING})
            if codes:
                return "; ".join(self.MPI.Get_error_string(code) for code in codes)
        return str(error)

    def _failed_ranks(self):
        try:
            group = self.comm.Get_failed()
            failed = self.MPI.Group.Translate_ranks(group, list(range(group.Get_size())),
                                                    self.comm.Get_group())
            return sorted(r for r in failed if r is not None and r >= 0)
        except (AttributeError, NotImplementedError, self.MPI.Exception):
            return []

    # -- alarms ----------------------------------------------------------------------
    def report(self, error):
        """Tell every other rank that this one stops with ``error`` (then raise it)."""
        if self.broken is None and not isinstance(error, DistributedError):
            self.broken = f"rank {self.rank} raised {_describe(error)}"
            self._send_alarm({"kind": "error", "text": _describe(error)})
            self._deliver_alarms()

    def _send_alarm(self, message, skip=()):
        blob = _encode(dict(message, rank=self.rank))
        for dest in range(self.size):
            if dest != self.rank and dest not in skip:
                self._sent.append((self.alarm_comm.Isend(blob, dest=dest, tag=ALARM_TAG),
                                   blob, dest))

    def _deliver_alarms(self, skip=()):
        """Wait up to ``roll_call`` seconds until the alarms sent to ranks not in ``skip``
        have left this process. It may end right after it raises, and MPI moves a message
        of BLOB_BYTES only once its receiver asks for it: from a process that ended it
        never arrives, and the receiver sees an MPI error instead of the alarm."""
        requests = [request for request, _, dest in self._sent if dest not in skip]
        end = time.perf_counter() + self.roll_call_seconds
        try:
            while not self.MPI.Request.Testall(requests) and time.perf_counter() < end:
                time.sleep(NAP_SECONDS)
        except self.MPI.Exception:          # ULFM: a receiver failed; the others may not
            pass

    def _read_alarms(self):
        alarms = []
        while self._alarm_request.Test():
            alarms.append(_decode(self._alarm_buf))
            self._alarm_request = self.alarm_comm.Irecv(
                self._alarm_buf, source=self.MPI.ANY_SOURCE, tag=ALARM_TAG)
        return alarms

    def _answer(self, alarms, what):
        for alarm in alarms:
            if alarm["kind"] == "error":
                self.broken = f"rank {alarm['rank']} raised {alarm['text']}"
                raise RankFailed(f"rank {alarm['rank']} stopped with {alarm['text']} "
                                 f"(rank {self.rank} was waiting for {what})", [alarm["rank"]])
        for alarm in alarms:
            if alarm["kind"] == "lost":
                self._lost(alarm["ranks"], what, f"rank {alarm['rank']} found it gone")
        self._roll_call(what, f"rank {alarms[0]['rank']} called the roll", alarms)

    def _roll_call(self, what, why, heard=()):
        """Send a roll call to every rank, then wait ``roll_call`` seconds for theirs:
        the ranks not heard from are lost."""
        self._send_alarm({"kind": "roll"})
        answered = {a["rank"] for a in heard}
        lost = set()
        end = time.perf_counter() + self.roll_call_seconds
        while len(answered | lost) < self.size - 1 and time.perf_counter() < end:
            for alarm in self._read_alarms():
                answered.add(alarm["rank"])
                if alarm["kind"] == "error":
                    self._answer([alarm], what)
                if alarm["kind"] == "lost":
                    lost.update(alarm["ranks"])
            time.sleep(0.01)
        lost |= set(range(self.size)) - answered - {self.rank}
        if not lost:
            self.broken = f"every rank answered a roll call, but {what} did not complete"
            raise DistributedError(f"rank {self.rank}: {self.broken} ({why}); the ranks "
                                   f"are out of step")
        self._lost(sorted(lost), what, f"it did not answer a roll call ({why})")

    def _lost(self, ranks, what, why, deliver=False):
        """Tell the other ranks that ``ranks`` are lost, then raise RankLost. ``deliver``:
        only this rank knows (its node's processes, MPI's report), so it waits until the
        alarm has left (_deliver_alarms). A roll call's verdict every rank reaches itself,
        and a loss another rank reported that rank delivers."""
        ranks = sorted(set(ranks)) or ["unknown"]
        self._send_alarm({"kind": "lost", "ranks": [r for r in ranks if r != "unknown"]},
                         skip=ranks)
        if deliver:
            self._deliver_alarms(skip=ranks)
        names = ", ".join(f"rank {r}" + (f" (pid {self.peers[r][1]} on {self.peers[r][0]})"
                                         if r in self.peers else "") for r in ranks)
        self.broken = f"lost {names}"
        raise RankLost(f"lost {names}: {why}; rank {self.rank} was waiting for {what}",
                       [r for r in ranks if r != "unknown"])

    # -- collectives of a run ----------------------------------------------------------
    def agree(self, error, spec):
        """The exchange at the start of fit: every rank's error (or None) and ``spec``.
        Raises RankFailed when another rank failed, ValueError when specs differ; the
        caller re-raises its own error."""
        mine = {"error": _describe(error) if error is not None else None, "spec": spec,
                "host": self.host, "pid": self.pid}
        everyone = np.zeros((self.size, BLOB_BYTES), np.uint8)
        request = self._usable("the start of fit").Iallgather(_encode(mine), everyone)
        self.wait([request], "the start of fit", timeout=self.start_timeout)
        blobs = [_decode(row) for row in everyone]
        self.peers = {r: (b["host"], b["pid"]) for r, b in enumerate(blobs) if r != self.rank}
        failed = [(r, b["error"]) for r, b in enumerate(blobs) if b["error"] and r != self.rank]
        if error is not None:
            return
        if failed:
            raise RankFailed("fit did not start: " + "; ".join(
                f"rank {r} raised {text}" for r, text in failed), [r for r, _ in failed])
        differ = [(r, key) for r, b in enumerate(blobs) for key in sorted(spec)
                  if b["spec"].get(key) != blobs[0]["spec"].get(key)]
        if differ:
            raise ValueError("comm: every rank must call fit with the same model, data and "
                             "arguments; " + "; ".join(
                                 f"rank {r} has {key}={blobs[r]['spec'].get(key)}, rank 0 "
                                 f"has {blobs[0]['spec'].get(key)}" for r, key in differ[:4]))

    def share_state(self, model, optimizer, rng):
        """Rank 0's parameters, buffers, optimizer state and random generator, on every
        rank. Returns the generator."""
        opt = optimizer.state_dict()
        arrays = [model.flat_data] + [b for _, b in model.named_buffers()] + \
            [opt["state"][name] for name in sorted(opt["state"])]
        meta = _encode({"step": opt["step"], "rng": _jsonable(rng.bit_generator.state)})
        comm = self._usable("rank 0's parameters")
        requests = [comm.Ibcast(a, root=0) for a in arrays + [meta]]
        self.wait(requests, "rank 0's parameters")
        if self.rank == 0:
            return rng
        opt["step"] = _decode(meta)["step"]
        optimizer.load_state_dict(opt)
        generator = getattr(np.random, _decode(meta)["rng"]["bit_generator"])()
        generator.state = _decode(meta)["rng"]
        return np.random.Generator(generator)

    def check_parameters(self, params, step):
        """Compare a CRC-32 of every rank's parameters; a difference is ParameterDrift."""
        mine = np.array([zlib.crc32(params)], np.int64)
        everyone = np.zeros(self.size, np.int64)
        what = f"the parameter check of step {step}"
        self.wait([self._usable(what).Iallgather(mine, everyone)], what)
        drifted = [r for r in range(self.size) if everyone[r] != everyone[0]]
        if drifted:
            raise ParameterDrift(f"the parameters of rank(s) {drifted} differ from rank 0's "
                                 f"after optimizer step {step} (CRC-32 {everyone.tolist()})",
                                 drifted)

    def root_first(self, what):
        """A context: rank 0 runs the block first (e.g. a download into a shared cache),
        then the others; an error on rank 0 stops them with RankFailed ("rank 0 could not
        {what}": ``what`` is a verb phrase, e.g. "load MNIST")."""
        return _root_first(self, what)

    def close(self):
        """Cancel the alarm receive; free the communicators unless a fault left
        collectives pending on them. Then the Cluster refuses collectives (join makes a
        new one); a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self._alarm_request.Cancel()
        self._alarm_request.Wait()
        self._alarm_request = None
        if self.broken is None:
            self.comm.Free()
            self.alarm_comm.Free()


@contextlib.contextmanager
def _root_first(cluster, what):
    status = np.zeros(BLOB_BYTES, np.uint8)
    waiting_for = f"rank 0 to {what}"

    def share_status():
        request = cluster._usable(waiting_for).Ibcast(status, root=0)
        cluster.wait([request], waiting_for, cluster.start_timeout)
    if cluster.rank == 0:
        try:
            yield
        except BaseException as error:
            status[:] = _encode({"error": _describe(error)})
            share_status()
            raise
        status[:] = _encode({"error": None})
        share_status()
        return
    share_status()
    error = _decode(status)["error"]
    if error is not None:
        raise RankFailed(f"rank 0 could not {what}: {error}", [0])
    yield


# --- fit's side ------------------------------------------------------------------------

_CLUSTERS = {}


def join(comm):
    """The Cluster of ``comm`` (a Cluster, an mpi4py communicator, or None -> None).
    A communicator gets one default Cluster, reused by later fits."""
    if comm is None or isinstance(comm, Cluster):
        return comm
    MPI = mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intracommunicator or a "
                        f"mlpfast.distributed.Cluster, got {type(comm).__name__}")
    key = comm.py2f()
    if key not in _CLUSTERS or _CLUSTERS[key].broken is not None or _CLUSTERS[key].closed:
        _CLUSTERS[key] = Cluster(comm)
    return _CLUSTERS[key]


@contextlib.contextmanager
def starting(cluster):
    """fit's checks and resume, then the start-up exchange: an error on any rank is
    raised on that rank and reported on the others (RankFailed)."""
    if cluster is None:
        yield
        return
    try:
        yield
    except Exception as error:
        cluster.agree(error, {})
        raise


def start(cluster, model, optimizer, job, run, seed, lr_schedule):
    """The start-up exchange of a fit whose checks passed on this rank (see ``agree``),
    then rank 0's state on every rank (``run.rng`` included)."""
    error = _unsupported(model)
    if error is not None:
        cluster.agree(error, {})
        raise error
    cluster.agree(None, _spec(model, optimizer, job, run, seed, lr_schedule))
    run.rng = cluster.share_state(model, optimizer, run.rng)


def _unsupported(model):
    """The ValueError for a model this module cannot train, or None."""
    if model.backend.device != "cpu":
        return ValueError(f"comm: distributed training runs on the CPU backends, the model "
                          f"is on {model.backend.name}")
    stateful = sorted({type(layer).__name__ for layer in model.layers
                       if type(layer).__name__ in ("BatchNorm1d", "Dropout")})
    if stateful:
        return ValueError(f"comm: models with {', '.join(stateful)} are not supported: their "
                          f"batch statistics and masks would depend on how the rows are "
                          f"split over ranks")
    return None


def _spec(model, optimizer, job, run, seed, lr_schedule):
    """What every rank must agree on, as short JSON values (long ones as digests)."""
    opt = optimizer.state_dict()
    progress = {k: v for k, v in run.as_json().items() if k != "seconds"}
    spec = {"architecture": model.architecture(), "backend": model.backend.name,
            "optimizer": [opt["type"], opt["hyper"]],
            "loss": type(job.val_loss_fn).__name__,
            "data": {k: v for k, v in job.data_spec.items() if k != "contents"},
            "epochs": job.epochs, "every_steps": job.every_steps, "seed": seed,
            "lr_schedule": lr_schedule if isinstance(lr_schedule, (str, type(None)))
            else type(lr_schedule).__name__, "schedule": run.rates.schedule.state_dict(),
            "early_stopping": None if run.stopper is None else run.stopper.as_json(),
            "progress": progress,
            "data_crc32": job.data_spec["contents"],
            "val_crc32": None if job.val_set is None else contents_digest(job.val_set)}
    return {key: _short(value) for key, value in spec.items()}


def wrap(cluster, step, writer, model, optimizer, batch_size, interrupts):
    """fit's step and checkpoint writer for a Cluster: the step over every rank, and the
    writer on rank 0 only (None elsewhere). ``interrupts``: fit's Ctrl-C flag
    (``requested``), which the step makes the same on every rank."""
    step = DistributedStep(cluster, step, model, optimizer, batch_size, interrupts)
    writer = _RootWriter(cluster, writer) if writer is not None and cluster.rank == 0 else None
    return step, writer


class DistributedStep:
    """The step contract of ``mlpfast.backend.steps`` over the ranks of a Cluster, built
    on the backend step's two halves (compute_gradients, apply_update); one batch at a
    time, so every call of ``run`` does the same collectives on every rank however fit
    splits the epoch into calls. A Ctrl-C on any rank (``interrupts.requested``) travels
    with the step's sums: every rank sets the flag and returns after the same step."""

    max_batches = None

    def __init__(self, cluster, step, model, optimizer, batch_size, interrupts):
        self.cluster, self.step, self.optimizer = cluster, step, optimizer
        self.batch_size, self.interrupts = batch_size, interrupts
        self.params, self.grad = model.flat_data, model.flat_grad
        # (summed loss, correct rows, ranks asked to stop) of this rank and of all
        self.local, self.reduced = np.zeros(3), np.zeros(3)
        self.allreduce_seconds, self.allreduces = 0.0, 0
        self._warm = False

    def run(self, order, first_batch, num_batches, lrs, sums):
        for i in range(num_batches):
            start = (first_batch + i) * self.batch_size
            index = order[start:start + self.batch_size]
            self._local_gradients(index)
            self._allreduce()
            loss_sum, correct, stop = self.reduced
            if not gradients_finite(loss_sum, [self.grad]):
                return i, False, loss_sum / index.shape[0]
            self.step.apply_update(lrs[i])
            sums[0] += loss_sum
            sums[1] += correct
            if self.optimizer.step_count % self.cluster.check_every == 0:
                self.cluster.check_parameters(self.params, self.optimizer.step_count)
            if stop:
                self.interrupts.requested = True
                return i + 1, True, 0.0
        return num_batches, True, 0.0

    def _local_gradients(self, index):
        """This rank's share of the batch's mean gradient in flat_grad, (loss sum,
        correct) of its rows in ``local``."""
        rows, rank, size = index.shape[0], self.cluster.rank, self.cluster.size
        lo, hi = rows * rank // size, rows * (rank + 1) // size
        try:
            self.local[2] = self.interrupts.requested
            if hi == lo:
                self.grad.fill(0)
                self.local[:2] = 0
                return
            loss, correct = self.step.compute_gradients(index[lo:hi], rows)
            self.local[:2] = (loss * (hi - lo), correct)
        except BaseException as error:
            self.cluster.report(error)
            raise

    def _allreduce(self):
        MPI, what = self.cluster.MPI, f"the gradients of optimizer step " \
                                     f"{self.optimizer.step_count + 1}"
        started = time.perf_counter()
        comm = self.cluster._usable(what)
        requests = [comm.Iallreduce(MPI.IN_PLACE, self.grad, op=MPI.SUM),
                    comm.Iallreduce(self.local, self.reduced, op=MPI.SUM)]
        self.cluster.wait(requests, what, None if self._warm else self.cluster.start_timeout)
        self._warm = True
        self.allreduce_seconds += time.perf_counter() - started
        self.allreduces += 1


class _RootWriter:
    """Rank 0's checkpoint writer: an error while writing stops every rank."""

    def __init__(self, cluster, writer):
        self.cluster, self.writer = cluster, writer

    def write(self, *args):
        try:
            self.writer.write(*args)
        except BaseException as error:
            self.cluster.report(error)
            raise


# --- helpers --------------------------------------------------------------------------

def _process_alive(pid):
    """The process exists and is not a zombie (this node only)."""
    if not _process_exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _describe(error):
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _encode(message):
    """message as JSON in a zero-padded uint8 array of BLOB_BYTES (long texts cut)."""
    data = json.dumps(message).encode()
    if len(data) >= BLOB_BYTES:
        message = {key: value[:BLOB_BYTES // 16] + " ..."
                   if isinstance(value, str) and len(value) > BLOB_BYTES // 16 else value
                   for key, value in message.items()}
        data = json.dumps(message).encode()
    if len(data) >= BLOB_BYTES:
        raise ValueError(f"a message of {len(data)} bytes does not fit {BLOB_BYTES}")
    blob = np.zeros(BLOB_BYTES, np.uint8)
    blob[:len(data)] = np.frombuffer(data, np.uint8)
    return blob


def _decode(blob):
    return json.loads(bytes(blob).rstrip(b"\0").decode())


def _short(value):
    """A JSON value, or the SHA-256 prefix of its JSON when that is long."""
    text = json.dumps(_jsonable(value), sort_keys=True)
    if len(text) <= 160:
        return json.loads(text)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]

