"""How mlpfast runs Numba: vector width, threading layer, thread count, JIT cache.

Imported by every kernel module with Numba variants, before any of them is compiled.

Vector width
    LLVM tunes Intel AVX-512 CPUs to prefer 256-bit vectors (``prefer-256-bit``), which
    halves the FMA throughput of every vectorized loop. Unless ``NUMBA_CPU_FEATURES`` is
    set by the user or ``MLPFAST_NUMBA_512=0``, this module asks Numba for the host's
    features minus that preference, so loops use 512-bit zmm registers. Numba reads the
    setting when it compiles its first function in the process: import mlpfast before
    compiling other Numba code, or set ``NUMBA_CPU_FEATURES`` yourself. Cached machine
    code is keyed by these features, so the two settings never mix in the cache.

Threading layer
    ``MLPFAST_NUMBA_THREADING_LAYER`` (default: the first of ``omp``, ``tbb`` that
    imports, else ``workqueue``) becomes ``numba.config.THREADING_LAYER``, unless the user
    set ``NUMBA_THREADING_LAYER``. ``omp`` (GNU OpenMP here) and ``tbb`` accept parallel
    kernels launched from several Python threads at once; ``workqueue`` aborts the
    process if that happens, so on it ``parallel_call`` serializes launches with a lock.
    (GNU OpenMP is not fork-safe: fork after a parallel kernel ran gives a child whose
    parallel kernels hang; use the ``spawn`` start method for multiprocessing.)
    ``OMP_WAIT_POLICY`` defaults to ``passive`` here (set it to override): with OpenMP's
    active waiting, idle threads spin and take the cores from the threads that have
    work whenever other processes share the machine; measured on 2 shared cores, an
    empty 2-thread parallel region took 16-25 ms spinning and 5 us passive.

Threads
    ``mlpfast.set_num_threads(n)`` reaches Numba through ``set_threads`` (registered in
    mlpfast.backend). Numba's thread count is per Python thread, so ``parallel_call``
    applies the process-wide count in the calling thread before each launch.
    Small calls run on one thread: waking a passive OpenMP thread costs about 55 us here
    (bias gradient of 64x256: 6 us on 1 thread, 62 us on 2; relu backward of 256x1024,
    1M elements touched: 57 us on 1, 82 us on 2). ``parallel_call`` therefore uses one
    thread when the call touches fewer than ``MLPFAST_PARALLEL_MIN_ELEMENTS`` elements
    (default 2**21, where one thread needs about twice the wake-up time).

JIT cache
    Kernels are compiled with ``cache=True``; Numba keeps their machine code where it
    would for any module (``kernels/__pycache__``, or ``NUMBA_CACHE_DIR``). Numba stamps
    a cached function with a hash of its own source file only, but a kernel carries the
    code of the helpers it calls from other files (``_numba_math``, ``losses`` in
    ``mlp_step``): after an edit to a helper, or an upgrade that changed one, the caller's
    stale machine code would load. ``_KernelSourcesLocator`` adds a hash of every
    ``kernels/*.py`` file to the stamp of mlpfast's kernels, so a change to any of them
    recompiles them all (once).
"""
import contextlib
import functools
import glob
import hashlib
import os
import threading
import warnings

import numba
import numpy as np
from numba.core import caching, config, registry


def _numba_compiled_anything():
    """True once Numba's CPU code generator exists (its features are then fixed)."""
    return registry.cpu_target.__dict__.get("_toplevel_target_context") is not None


def _enable_512_bit_vectors():
    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("MLPFAST_NUMBA_512") == "0":
        return False
    import llvmlite.binding as ll
    features = ll.get_host_cpu_features().flatten()
    if "+avx512f" not in features.split(","):
        return False
    if _numba_compiled_anything():
        warnings.warn("mlpfast's Numba kernels run with 256-bit vectors (about half the FMA "
                      "throughput of this AVX-512 CPU): Numba code was compiled before "
                      "mlpfast was imported, which fixes Numba's CPU features. Import mlpfast "
                      "first, or set NUMBA_CPU_FEATURES.", RuntimeWarning, stacklevel=3)
        return False
    config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


def _layer_imports(layer):
    try:
        if layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        elif layer == "tbb":
            from numba.np.ufunc import tbbpool  # noqa: F401
        return True
    except ImportError:
        return False


def _choose_threading_layer():
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")   # read when libgomp loads
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return config.THREADING_LAYER
    wanted = os.environ.get("MLPFAST_NUMBA_THREADING_LAYER")
    if wanted is not None:
        if wanted not in ("omp", "tbb", "workqueue"):
            raise ValueError(f"MLPFAST_NUMBA_THREADING_LAYER must be omp, tbb or workqueue, "
                             f"got {wanted!r}")
        if not _layer_imports(wanted):
            raise ValueError(f"MLPFAST_NUMBA_THREADING_LAYER={wanted} but Numba cannot load "
                             f"that layer on this machine")
        layer = wanted
    else:
        layer = next((name for name in ("omp", "tbb") if _layer_imports(name)), "workqueue")
    config.THREADING_LAYER = layer
    return layer


KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def sources_stamp(directory=KERNELS_DIR):
    """SHA-256 over the names and contents of the directory's *.py files, in name order."""
    files = sorted(glob.glob(os.path.join(directory, "*.py")))
    return _hash_files(tuple((path, os.stat(path).st_mtime_ns, os.stat(path).st_size)
                             for path in files))


@functools.lru_cache(maxsize=8)
def _hash_files(stats):
    """stats: ((path, mtime, size), ...); hashed again when any of them changes."""
    digest = hashlib.sha256()
    for path, _, _ in stats:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


class _KernelSourcesLocator(caching._CacheLocator):
    """Numba cache locator for functions defined in kernels/*.py: the place and name that
    Numba's own locators give, with sources_stamp() added to the source stamp."""

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), sources_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != KERNELS_DIR:
            return None
        for locator_class in _CACHE_IMPL._locator_classes:
            if locator_class is not cls:
                inner = locator_class.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl   # before Numba 0.61
if _KernelSourcesLocator not in _CACHE_IMPL._locator_classes:
    _CACHE_IMPL._locator_classes.insert(0, _KernelSourcesLocator)


VECTOR_512 = _enable_512_bit_vectors()
THREADING_LAYER = _choose_threading_layer()
MAX_THREADS = config.NUMBA_NUM_THREADS       # Numba's pool size, fixed at import

_threads = MAX_THREADS
_launch_lock = threading.Lock() if THREADING_LAYER == "workqueue" else contextlib.nullcontext()


def set_threads(n):
    """Thread hook: the thread count of every parallel Numba kernel (capped at the pool)."""
    global _threads
    _threads = max(1, min(int(n), MAX_THREADS))


def get_threads():
    return _threads


def _parallel_min_elements():
    value = os.environ.get("MLPFAST_PARALLEL_MIN_ELEMENTS", str(1 << 21))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"MLPFAST_PARALLEL_MIN_ELEMENTS must be an integer, got {value!r}") \
            from None


PARALLEL_MIN_ELEMENTS = _parallel_min_elements()


def parallel_call(kernel, *args, work=None):
    """Run a ``parallel=True`` kernel with mlpfast's thread count, safely from any thread.

    ``work``: the elements the call touches (default: the sizes of its array arguments
    added up); below ``PARALLEL_MIN_ELEMENTS`` the kernel runs on one thread.
    """
    if work is None:
        work = sum(a.size for a in args if isinstance(a, np.ndarray))
    threads = _threads if work >= PARALLEL_MIN_ELEMENTS else 1
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    with _launch_lock:
        return kernel(*args)


def info():
    """What ``mlpfast info`` can show about the Numba setup."""
    return {"numba": numba.__version__, "threading_layer": THREADING_LAYER,
            "max_threads": str(MAX_THREADS), "vector_512": str(VECTOR_512)}
