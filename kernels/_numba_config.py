"""How mlpfast runs Numba: threading layer, thread count, JIT cache.

Imported by every kernel module with Numba variants, before any of them is compiled.
Importing it changes nothing outside mlpfast: no environment variable, no Numba setting
(except the threading layer, and only when ``MLPFAST_NUMBA_THREADING_LAYER`` asks for one).

Threading layer
    Numba's own choice (``NUMBA_THREADING_LAYER``, else the first of tbb, omp, workqueue
    that loads), or ``MLPFAST_NUMBA_THREADING_LAYER=omp|tbb|workqueue``, which sets
    ``numba.config.THREADING_LAYER``. ``omp`` and ``tbb`` accept parallel kernels launched
    from several Python threads at once; ``workqueue`` aborts the process if that happens,
    so on it ``parallel_call`` serializes launches with a lock. (GNU OpenMP is not
    fork-safe: in a child forked after a parallel kernel ran, ``parallel_call`` raises a
    RuntimeError; use the ``spawn`` start method for multiprocessing.) With other
    processes on the same cores, ``OMP_WAIT_POLICY=passive`` (set before Python starts)
    keeps OpenMP's idle threads from spinning; mlpfast leaves that choice to you (README,
    "Environment").

Threads
    ``mlpfast.set_num_threads(n)`` reaches Numba through ``set_threads`` (registered in
    mlpfast.backend). Numba's thread count is per Python thread, so ``parallel_call``
    applies the process-wide count in the calling thread before each launch, and puts
    the thread's own count back after it. A call that touches fewer than
    ``PARALLEL_MIN_ELEMENTS`` elements runs on one thread: waking a sleeping thread costs
    tens of microseconds (kernels/cpu_config.py).

JIT cache
    Kernels are compiled with ``cache=True``; Numba keeps their machine code where it
    would for any module (``kernels/__pycache__``, or ``NUMBA_CACHE_DIR``). Numba stamps
    a cached function with a hash of its own source file only, but a kernel carries the
    code of the helpers it calls from other files (``_numba_math``, ``losses`` in
    ``mlp_step``): after an edit to a helper, the caller's stale machine code would load.
    Each kernel module ends with ``stamp_kernel_caches(globals())``, which gives its
    cached functions a cache whose stamp adds a hash of every ``kernels/*.py`` file
    (``_KernelSourcesLocator``), so a change to any of them recompiles them all (once).
    The stamp also holds a hash of the C library's API as built (``c_api_stamp``): the
    kernels that call C compile its prototypes into their machine code (``_c_calls``),
    so a rebuilt library with a changed prototype recompiles them too.
"""
import contextlib
import functools
import glob
import hashlib
import os
import sys
import threading

import numba
import numpy as np
from numba.core import caching, config

from .. import env
from .cpu_config import THRESHOLDS


def _layer_imports(layer):
    try:
        if layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        elif layer == "tbb":
            from numba.np.ufunc import tbbpool  # noqa: F401
        return True
    except ImportError:
        return False


def _threading_layer():
    """The layer parallel kernels will run on: MLPFAST_NUMBA_THREADING_LAYER (then set in
    Numba's config), else the one Numba will pick (its setting, or tbb, omp, workqueue)."""
    wanted = env.numba_threading_layer()
    if wanted is not None and not os.environ.get("NUMBA_THREADING_LAYER"):
        if not _layer_imports(wanted):
            raise ValueError(f"MLPFAST_NUMBA_THREADING_LAYER={wanted} but Numba cannot load "
                             f"that layer on this machine")
        config.THREADING_LAYER = wanted
        return wanted
    chosen = config.THREADING_LAYER
    if chosen in ("omp", "tbb", "workqueue"):
        return chosen
    order = ("omp", "tbb") if chosen == "forksafe" else ("tbb", "omp")   # "default", "safe"
    return next((name for name in order if _layer_imports(name)), "workqueue")


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


@functools.lru_cache(maxsize=1)
def c_api_stamp():
    """SHA-256 over the C library's functions' cffi types and its constants (csrc/gemm.h
    as the loaded library was built from it), or None without the library."""
    from ._c_library import c_library
    try:
        library = c_library()
    except ImportError:
        return None
    digest = hashlib.sha256()
    for name in sorted(dir(library.lib)):
        value = getattr(library.lib, name)
        declared = library.ffi.typeof(value).cname if callable(value) else repr(value)
        digest.update(f"{name} {declared}\0".encode())
    return digest.hexdigest()


class _KernelSourcesLocator(caching._CacheLocator):
    """Numba cache locator for functions defined in kernels/*.py: the place and name that
    Numba's own locators give, with sources_stamp() and c_api_stamp() added to the
    source stamp."""

    def __init__(self, inner):
        self._inner = inner
        self._py_file = inner._py_file          # where Numba's "cannot cache" warnings point

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), sources_stamp(), c_api_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != KERNELS_DIR:
            return None
        for locator_class in _NumbaCacheImpl._locator_classes:
            inner = locator_class.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


_NumbaCacheImpl = getattr(caching, "CompileResultCacheImpl", None) or caching._CacheImpl


class _KernelCacheImpl(_NumbaCacheImpl):
    _locator_classes = [_KernelSourcesLocator]


class _KernelCache(caching.FunctionCache):
    """Numba's cache of compiled functions, located by _KernelSourcesLocator."""
    _impl_class = _KernelCacheImpl


def stamp_kernel_caches(namespace):
    """Give every cached Numba function in ``namespace`` (a kernel module's globals) the
    cache stamped with all kernel sources. Touches only those functions' own cache
    objects; Numba's settings and other functions keep theirs."""
    for value in list(namespace.values()):
        cache = getattr(value, "_cache", None)
        if isinstance(cache, caching.FunctionCache) and not isinstance(cache, _KernelCache):
            value._cache = _KernelCache(value.py_func)


THREADING_LAYER = _threading_layer()
MAX_THREADS = config.NUMBA_NUM_THREADS       # Numba's pool size, fixed at import

_threads = MAX_THREADS
_launch_lock = threading.Lock() if THREADING_LAYER == "workqueue" else contextlib.nullcontext()


def set_threads(n):
    """Thread hook: the thread count of every parallel Numba kernel (capped at the pool)."""
    global _threads
    _threads = max(1, min(int(n), MAX_THREADS))


def get_threads():
    return _threads


PARALLEL_MIN_ELEMENTS = env.parallel_min_elements(THRESHOLDS["parallel_min_elements"])
# parallel_call's work= for kernels that run on every thread at any size, their work per
# element far above what PARALLEL_MIN_ELEMENTS counts (an FFT per audio frame)
ALL_THREADS = PARALLEL_MIN_ELEMENTS

_forked_after_gnu_omp = False       # this process is a fork of one whose GNU OpenMP ran


def _after_fork_in_child():
    """GNU OpenMP's threads, once started, do not survive fork(): Numba then stops the child
    at its first parallel kernel with SIGTERM, which fit (holding SIGTERM until a chunk
    ends) took for a stop request, running on with the kernel skipped. Noted here, so that
    parallel_call raises a clear error instead."""
    global _forked_after_gnu_omp
    try:
        layer = numba.threading_layer()
    except ValueError:                  # no parallel kernel ran: the child starts its own
        return
    omppool = sys.modules.get("numba.np.ufunc.omppool")
    if layer == "omp" and getattr(omppool, "openmp_vendor", "GNU") == "GNU":
        _forked_after_gnu_omp = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_call(kernel, *args, work=None):
    """Run a ``parallel=True`` kernel with mlpfast's thread count, safely from any thread;
    the calling thread's Numba thread count is put back afterwards, so the caller's own
    parallel Numba code keeps the count it chose.

    ``work``: the elements the call touches (default: the sizes of its array arguments
    added up); below ``PARALLEL_MIN_ELEMENTS`` the kernel runs on one thread.
    """
    if _forked_after_gnu_omp:
        raise RuntimeError(
            "this process was forked from one whose Numba kernels ran on GNU OpenMP threads, "
            "which do not survive fork(): start processes with multiprocessing's 'spawn' or "
            "'forkserver' method, or run the parent with MLPFAST_NUMBA_THREADING_LAYER=tbb "
            "or workqueue")
    if work is None:
        work = sum(a.size for a in args if isinstance(a, np.ndarray))
    threads = _threads if work >= PARALLEL_MIN_ELEMENTS else 1
    callers = numba.get_num_threads()
    if callers != threads:
        numba.set_num_threads(threads)
    try:
        with _launch_lock:
            return kernel(*args)
    finally:
        if callers != threads:
            numba.set_num_threads(callers)


def info():
    """What ``mlpfast info`` can show about the Numba setup."""
    return {"numba": numba.__version__, "threading_layer": THREADING_LAYER,
            "max_threads": str(MAX_THREADS)}
