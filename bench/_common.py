"""Helpers every bench/bench_*.py file uses (the suite runs with `pytest bench/`).

    from _common import assert_close, run_benchmark, gemm_flops, SQUARES, MLP_GEMM_SHAPES

    @pytest.mark.parametrize("variant", list(gemm.VARIANTS))
    def test_sgemm(benchmark, variant):
        a, b, out = ...
        assert_close(variant_result, reference_result, atol, rtol, "sgemm 512")   # validate first
        run_benchmark(benchmark, lambda: gemm.VARIANTS[variant](a, b, out),
                      flops=gemm_flops(m, n, k), shape=f"{m}x{n}x{k}", variant=variant)

``run_benchmark`` calls the function twice before timing (past any JIT compilation), times
it with pytest-benchmark, and records in ``extra_info``: shape, variant, threads, median
seconds, and GFLOP/s (``flops=``) or GB/s (``nbytes=``), plus the percentage of the
measured fp32 peak for GFLOP/s. The machine header (CPU, ISA, threads, versions, BLAS,
fp32 peak) is printed above the run and stored in the JSON of ``--benchmark-json``.
"""
import numpy as np

from mlpfast import get_num_threads
from mlpfast.benchmarks.harness import (CONFIGS, OP_SPECS, TOL, assert_close, config_name,  # noqa: F401
                               fp32_peak_gflops, machine_info, mlp_gemm_shapes,
                               mlp_train_flops)

SQUARES = [128, 256, 512, 1024, 2048]
# (m, n, k, trans_a, trans_b) of the forward, weight-gradient and input-gradient GEMMs of
# every Linear layer of the three reference configurations
MLP_GEMM_SHAPES = sorted({shape for sizes, batch in CONFIGS
                          for n_in, n_out in zip(sizes[:-1], sizes[1:])
                          for shape in mlp_gemm_shapes(n_in, n_out, batch)})
# (batch, features) of the hidden activations of the reference configurations
MLP_ACTIVATION_SHAPES = sorted({(batch, n) for sizes, batch in CONFIGS for n in sizes[1:-1]})

_PEAK = {}


def gemm_flops(m, n, k):
    return 2.0 * m * n * k


def peak_gflops():
    """The measured fp32 peak for the current thread count (measured once per count)."""
    threads = get_num_threads()
    if threads not in _PEAK:
        _PEAK[threads] = fp32_peak_gflops(threads)
    return _PEAK[threads]


def run_benchmark(benchmark, fn, *, shape, variant, flops=None, nbytes=None, warmup=2,
                  **extra):
    """Warm up ``fn()``, time it with the pytest-benchmark fixture, fill ``extra_info``.

    Validate ``fn``'s result against the reference before calling this. Give ``flops``
    (floating-point operations per call) or ``nbytes`` (bytes read + written per call).
    Returns what the last call of ``fn`` returned.
    """
    if (flops is None) == (nbytes is None):
        raise ValueError("give exactly one of flops= or nbytes=")
    for _ in range(warmup):
        fn()
    result = benchmark(fn)
    info = benchmark.extra_info
    info.update(shape=str(shape), variant=variant, threads=get_num_threads(), **extra)
    stats = getattr(benchmark, "stats", None)
    if stats is None:                       # --benchmark-disable: a single untimed call
        return result
    median = stats.stats.median
    info["median_s"] = median
    if flops is not None:
        info["gflops"] = flops / median * 1e-9
        peak = peak_gflops()
        if peak:
            info["percent_of_peak"] = 100.0 * info["gflops"] / peak
    else:
        info["gbps"] = nbytes / median * 1e-9
    return result


def spread_indices(n, count=16):
    """``count`` indices spread over 0 .. n-1, the first and the last among them: the rows
    (or elements) of a full-size call that its check compares with the reference, since
    the parallel chunks and prefetching twins of a kernel run only at full size."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def random_uniform(rng, shape, dtype=np.float32):
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)
