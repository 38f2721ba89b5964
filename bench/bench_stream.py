"""STREAM-like copy, out[:] = x[:], to know the memory bandwidth: NumPy and Numba.

GB/s counts the bytes that must move (read x, write out); arrays from 1 MiB (in L2)
to 256 MiB (past this machine's 260 MiB L3 when read and written).
bench/compare_bandwidth.py puts every memory-bound kernel next to this copy.
"""
import numpy as np
import pytest
from _common import run_benchmark
from compare_bandwidth import _copy

from mlpfast.kernels import _numba_config

COPIES = {"numpy": np.copyto,
          "numba": lambda out, x: _numba_config.parallel_call(_copy, x, out)}


@pytest.mark.parametrize("mib", [1, 64, 256])
@pytest.mark.parametrize("variant", list(COPIES))
def test_copy(benchmark, variant, mib):
    n = mib * 2 ** 20 // 4
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    COPIES[variant](out, x)
    assert np.array_equal(out, x)
    run_benchmark(benchmark, lambda: COPIES[variant](out, x), nbytes=2 * x.nbytes,
                  shape=f"{mib} MiB", variant=variant)
