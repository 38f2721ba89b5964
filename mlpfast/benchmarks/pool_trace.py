"""A trace of the C thread pool's jobs (``mlpf_pool_trace_start`` in csrc/gemm.h): every
GEMM and pass of the C library is one job, with the times of the caller's share, of the
other threads' shares and of its end. ``bench/pool_trace.py`` shows with it where a
training step's time goes::

    with PoolTrace() as trace:
        step.run(...)
    rows, steps, step_us = step_table(trace.jobs)

Times are microseconds of CLOCK_MONOTONIC, the clock of ``time.monotonic()``.
"""
import collections
import statistics
from typing import List, NamedTuple

from ..kernels._c_library import c_library


class PoolJob(NamedTuple):
    task: str            # the task function of csrc/, e.g. "sgemm_task", "adam_task"
    threads: int
    start: float         # the call began
    caller_done: float   # the caller's share done
    first_done: float    # the first and the last of the other threads done
    last_done: float     # (both caller_done on one thread)
    end: float           # the call returned


class PoolTrace:
    """Records the pool's jobs while open, up to ``capacity`` of them; ``jobs`` holds them
    afterwards (``full`` is True when the capacity ran out and later jobs were not kept)."""

    def __init__(self, capacity=1 << 18):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.jobs: List[PoolJob] = []
        self.full = False

    def __enter__(self):
        if c_library().lib.mlpf_pool_trace_start(self.capacity) != 0:
            raise MemoryError(f"no memory for a trace of {self.capacity} jobs")
        return self

    def __exit__(self, *exc):
        module = c_library()
        events = module.ffi.new("mlpf_pool_event[]", self.capacity)
        count = module.lib.mlpf_pool_trace_stop(events, self.capacity)
        self.jobs = [PoolJob(module.ffi.string(e.task).decode(), e.threads, e.start_us,
                             e.caller_done_us, e.first_done_us, e.last_done_us, e.end_us)
                     for e in events[0:count]]
        self.full = count == self.capacity


class JobRow(NamedTuple):
    """One job of a step, medians over the steps: microseconds of the caller's share, of
    the slowest other thread's share, of the caller's wait for it, and of the time before
    the next job starts (Numba and Python code between the pool's jobs)."""
    task: str
    threads: int
    caller: float
    others: float
    join: float
    gap_after: float


def split_steps(jobs, first_task="gather_task"):
    """The jobs cut into steps, each starting at a job of ``first_task`` (the gather of the
    batch's rows); jobs before the first one are dropped."""
    steps = []
    for job in jobs:
        if job.task == first_task:
            steps.append([])
        if steps:
            steps[-1].append(job)
    return steps


def step_table(jobs, first_task="gather_task"):
    """(rows, steps, step_us): a JobRow per job of the most common sequence of jobs
    (task, threads) of a step, the number of steps that had it, and the median step time
    (from its first job's start to the next step's). The last step is left out: no next
    step tells where it ends."""
    steps = split_steps(jobs, first_task)
    timed = [(step, following[0].start) for step, following in zip(steps, steps[1:])]
    if not timed:
        raise ValueError(f"the trace holds fewer than two steps (jobs {first_task!r})")
    signature = lambda step: tuple((job.task, job.threads) for job in step)
    common = collections.Counter(signature(step) for step, _ in timed).most_common(1)[0][0]
    kept = [(step, next_start) for step, next_start in timed if signature(step) == common]
    rows = []
    for i, (task, threads) in enumerate(common):
        parts = []
        for step, next_start in kept:
            job = step[i]
            after = step[i + 1].start if i + 1 < len(step) else next_start
            parts.append((job.caller_done - job.start, job.last_done - job.start,
                          job.end - job.caller_done, after - job.end))
        rows.append(JobRow(task, threads, *(statistics.median(column) for column in zip(*parts))))
    step_us = statistics.median(next_start - step[0].start for step, next_start in kept)
    return rows, len(kept), step_us


def task_totals(jobs, start, end):
    """{task: microseconds} of the jobs that started in [start, end), each from its start
    to its end."""
    totals = collections.Counter()
    for job in jobs:
        if start <= job.start < end:
            totals[job.task] += job.end - job.start
    return dict(totals)
