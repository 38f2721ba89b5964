"""The trace of the C thread pool's jobs (mlpf_pool_trace_start, mlpfast.benchmarks.pool_trace):
what each job records, the capacity, and the per-step table of bench/pool_trace.py."""
import time

import numpy as np
import pytest

import mlpfast as mf
from mlpfast.benchmarks.pool_trace import (PoolJob, PoolTrace, split_steps, step_table,
                                           task_totals)
from mlpfast.kernels import gemm, optim
from mlpfast.kernels.cpu_config import CONFIGS

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")


@pytest.fixture
def two_threads():
    before = mf.get_num_threads()
    mf.set_num_threads(2)
    yield
    mf.set_num_threads(before)


def test_a_two_thread_gemm_is_one_job_with_ordered_times(two_threads, rng):
    a = rng.standard_normal((256, 512)).astype(np.float32)
    b = rng.standard_normal((512, 256)).astype(np.float32)
    before = time.monotonic() * 1e6
    with PoolTrace() as trace:
        out = gemm.gemm_c(a, b)
    after = time.monotonic() * 1e6
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert len(trace.jobs) == 1 and not trace.full
    job = trace.jobs[0]
    assert (job.task, job.threads) == ("sgemm_task", 2)
    assert before <= job.start <= job.caller_done <= job.end <= after
    assert job.start <= job.first_done <= job.last_done <= job.end


def test_a_pass_below_the_threshold_runs_on_the_caller_alone(two_threads, rng):
    p, g = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    m, v = np.zeros(64, np.float32), np.zeros(64, np.float32)
    with PoolTrace() as trace:
        optim.adam_c(p, g, m, v, step=1, lr=1e-3)
    [job] = trace.jobs
    assert (job.task, job.threads) == ("adam_task", 1)
    assert job.caller_done == job.first_done == job.last_done <= job.end


def test_the_trace_keeps_its_capacity_and_stops(two_threads, rng):
    a = rng.standard_normal((8, 8)).astype(np.float32)
    with PoolTrace(capacity=2) as trace:
        for _ in range(5):
            gemm.gemm_c(a, a)
    assert len(trace.jobs) == 2 and trace.full
    with PoolTrace(capacity=8) as again:                 # a new trace starts from scratch
        gemm.gemm_c(a, a)
    assert len(again.jobs) == 1 and not again.full
    gemm.gemm_c(a, a)                                    # after the end: nothing recorded
    from mlpfast.kernels._c_library import c_library
    assert c_library().lib.mlpf_pool_trace_stop(c_library().ffi.NULL, 0) == 0


@pytest.mark.parametrize("capacity", [0, -1, 2.5])
def test_bad_capacity_names_the_argument(capacity):
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        PoolTrace(capacity)
    from mlpfast.kernels._c_library import c_library
    assert c_library().lib.mlpf_pool_trace_start(0) == -1          # MLPF_ERR_SHAPE


def job(task, start, caller, others, end, threads=2):
    """A PoolJob starting at ``start``; the other times relative to it."""
    return PoolJob(task, threads, start, start + caller, start + others, start + others,
                   start + end)


def test_step_table_takes_medians_of_the_common_sequence():
    jobs = [job("sgemm_task", 0, 5, 5, 6)]                   # before the first step: dropped
    for s, (gemm_us, gap) in enumerate([(100, 10), (120, 30), (110, 20)]):
        t = 1000.0 * (s + 1)
        jobs += [job("gather_task", t, 4, 5, 6),
                 job("sgemm_task", t + 7, gemm_us, gemm_us + 8, gemm_us + 9),
                 job("adam_task", t + 7 + gemm_us + 9 + gap, 40, 38, 41)]
    jobs.append(job("gather_task", 4000, 4, 5, 6))
    jobs.append(job("narrow_task", 4010, 1, 1, 2))          # an odd step: not in the table
    jobs.append(job("gather_task", 5000, 4, 5, 6))
    assert [len(step) for step in split_steps(jobs)] == [3, 3, 3, 2, 1]
    rows, steps, step_us = step_table(jobs)
    assert steps == 3 and step_us == 1000
    assert [(r.task, r.caller, r.others, r.join) for r in rows] == [
        ("gather_task", 4, 5, 2), ("sgemm_task", 110, 118, 9), ("adam_task", 40, 38, 1)]
    assert [r.gap_after for r in rows] == [1, 20, 1000 - (7 + 110 + 9 + 20 + 41)]
    assert task_totals(jobs, 1000, 2000) == {"gather_task": 6, "sgemm_task": 109,
                                             "adam_task": 41}


def test_step_table_needs_two_steps():
    with pytest.raises(ValueError, match="fewer than two steps"):
        step_table([job("gather_task", 0, 1, 1, 2), job("adam_task", 3, 1, 1, 4)])


def test_a_traced_training_step_runs_gather_gemms_and_adam(two_threads):
    """Every job of the step is sized so that its thread count does not depend on whether
    the pool's workers still spin (kernels/cpu_config.py's thresholds): the gather's
    1,344 x 784 values, the last layer's backward pass over its 1,344 x 1,344 inputs and
    Adam's 1.07 M parameters are above pass_min_parallel_asleep, every GEMM above
    min_parallel_fmas; so all 7 timed steps run the same jobs."""
    (x, y), _ = mf.datasets.mnist()
    from mlpfast.datasets import as_dataset
    batch, steps_run = 1344, 8
    thresholds = CONFIGS[gemm.c_kernel_name().split("_")[1]]
    assert batch * 784 >= thresholds["pass_min_parallel_asleep"]
    assert 784 * batch + 10 * batch >= thresholds["pass_min_parallel_asleep"]
    assert batch * batch >= thresholds["pass_min_parallel_asleep"]
    assert 10 * batch * batch >= thresholds["min_parallel_fmas"]
    model = mf.MLP([784, batch, 10], backend="cpu", seed=0)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
    rows_used = batch * steps_run
    step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), optimizer,
                                   as_dataset(model, x[:rows_used], y[:rows_used]), batch)
    model.train()
    order = np.arange(rows_used, dtype=np.int64)
    with PoolTrace() as trace:
        step.run(order, 0, steps_run, np.full(steps_run, 1e-3), np.zeros(2))
    rows, steps, step_us = step_table(trace.jobs)
    assert [(row.task, row.threads) for row in rows] == [
        ("gather_task", 2), ("sgemm_task", 2), ("narrow_task", 2),      # x W1^T, W2
        ("narrow_backward_task", 2), ("sgemm_task", 2), ("adam_task", 2)]   # dW2 and dh; dW1
    assert steps == steps_run - 1 and step_us > 0
