"""Backends: one table of kernels per device. The engine only ever calls these tables.

A backend is a ``Backend`` holding one function per op (see ``OPS``) and the array
helpers of its device. Tables are built from the kernel registries
(``mlpfast.kernels.<family>.VARIANTS``) by a factory registered under a name:

    numpy   the NumPy references: obviously correct, the baseline for every test
    numba   every op a Numba kernel (parallel, fused, float32 transcendentals vectorized)
    cpu     the Numba kernels with the C GEMM where it is built: the default on a CPU
    cuda    Numba CUDA kernels (kernels/cuda/, the ``cuda`` extra) when a GPU is usable
    auto    the first available of: cuda, cpu, numpy

Other backends (numba, cpu, cuda) register themselves with ``register_backend`` in
this module, next to the numpy one. ``backends()`` lists what this machine can run.

Threads: ``set_num_threads(n)`` (or ``MLPFAST_NUM_THREADS`` at import) sets the thread
count of every threaded kernel in the process through the hooks registered with
``add_thread_hook``; one count for the C GEMM and for Numba, so they never oversubscribe.
"""
import functools
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict

import numpy as np

# Every backend provides all of these ops (signatures in the kernel modules):
OPS = (
    "gemm",                              # kernels/gemm.py
    "linear_forward", "bias_grad", "linear_grad_input",     # kernels/linear.py
    "softmax_cross_entropy", "softmax_cross_entropy_forward", "mse", "mse_backward",  # losses.py
    "sgd", "adam",                       # kernels/optim.py
    "gather",                            # kernels/data.py
)
# and may provide these (the engine checks with ``ops.get``):
OPTIONAL_OPS = (
    "mlp_train_step",   # kernels/mlp_step.py: MLPTrainStep, fit's whole step in one call
)


def _fill_zeros(a):
    a.fill(0)


@dataclass
class Backend:
    """A table of kernels for one device plus the array helpers the engine needs.

    ``activations[name]`` is an ``Activation(forward, backward)``;
    ``fused_activations`` are those ``linear_forward`` applies in its epilogue.
    Arrays of a CPU backend are NumPy arrays.
    """
    name: str
    device: str
    ops: Dict[str, Callable]
    activations: Dict[str, object]
    fused_activations: tuple = ()
    empty: Callable = np.empty
    zeros: Callable = np.zeros
    to_device: Callable = np.ascontiguousarray   # host array -> backend array
    to_numpy: Callable = np.asarray              # backend array -> NumPy array
    assign: Callable = np.copyto                 # assign(dst, src): dst[...] = src, src a host
                                                 # or backend array of dst's shape
    zero: Callable = _fill_zeros                 # zero(dst): dst[...] = 0
    info: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        missing = [op for op in OPS if op not in self.ops]
        if missing:
            raise ValueError(f"backend {self.name!r} lacks ops {missing}")

    def __getattr__(self, op):
        ops = self.__dict__.get("ops", {})
        if op in ops:
            return ops[op]
        raise AttributeError(f"backend {self.__dict__.get('name')!r} has no op {op!r}")

    def __repr__(self):
        return f"Backend({self.name!r}, device={self.device!r})"


# --- registry ---------------------------------------------------------------------

_FACTORIES: Dict[str, tuple] = {}   # name -> (factory() -> Backend, available() -> bool)
_INSTANCES: Dict[str, Backend] = {}
AUTO_ORDER = ("cuda", "cpu", "numpy")
WHY_UNAVAILABLE: Dict[str, str] = {}   # name -> why a present device cannot be used


def register_backend(name, factory, available=lambda: True):
    """Register ``factory() -> Backend`` under ``name``; ``available()`` says if it can run."""
    _FACTORIES[name] = (factory, available)
    _INSTANCES.pop(name, None)


def backends():
    """Names of the backends that can run on this machine, in ``auto`` preference order."""
    names = [n for n in AUTO_ORDER if n in _FACTORIES and _FACTORIES[n][1]()]
    names += sorted(n for n, (_, avail) in _FACTORIES.items() if n not in names and avail())
    return names


def resolve_name(name="auto"):
    if name == "auto":
        for candidate in AUTO_ORDER:
            if candidate in _FACTORIES and _FACTORIES[candidate][1]():
                return candidate
    if name not in _FACTORIES:
        raise ValueError(f"backend must be one of {['auto'] + sorted(_FACTORIES)}, got {name!r}")
    if not _FACTORIES[name][1]():
        why = f" ({WHY_UNAVAILABLE[name]})" if name in WHY_UNAVAILABLE else ""
        raise ValueError(f"backend {name!r} is not available on this machine{why}; "
                         f"available: {backends()}")
    return name


def get_backend(name="auto"):
    """The ``Backend`` called ``name`` (or the object itself when given a ``Backend``)."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    name = resolve_name(name)
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name][0]()
    return _INSTANCES[name]


def to_numpy(a):
    """Any backend's array (NumPy, device array, Parameter) as a NumPy array on the host."""
    data = getattr(a, "data", None)
    if data is not None and not isinstance(a, np.ndarray):
        a = data                                  # a Parameter
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):               # Numba CUDA device array
        return a.copy_to_host()
    return np.asarray(a)


# --- threads ----------------------------------------------------------------------

_THREAD_HOOKS = []


def _default_threads():
    env = os.environ.get("MLPFAST_NUM_THREADS")
    if env is not None:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"MLPFAST_NUM_THREADS must be a positive integer, got {env!r}")
        if n < 1:
            raise ValueError(f"MLPFAST_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_num_threads = _default_threads()


def add_thread_hook(hook):
    """Call ``hook(n)`` now and whenever the thread count changes."""
    _THREAD_HOOKS.append(hook)
    hook(_num_threads)


def set_num_threads(n):
    """Threads used by every threaded kernel of mlpfast (C GEMM, Numba)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _num_threads = int(n)
    for hook in _THREAD_HOOKS:
        hook(_num_threads)


def get_num_threads():
    return _num_threads


# --- the backends -----------------------------------------------------------------

def _registry_table(variant):
    """ops + activations of one kernel variant across all families."""
    from .kernels import activations, data, gemm, linear, losses, optim  # noqa: F401
    ops = {"gemm": gemm.VARIANTS[variant]}
    for family in (linear, losses, optim, data):
        ops.update(family.VARIANTS[variant])
    return ops, activations.VARIANTS[variant]


def _numpy_backend():
    from .kernels import linear
    ops, acts = _registry_table("numpy")
    return Backend("numpy", "cpu", ops, acts, fused_activations=linear.FUSED["numpy"])


def _c_gemm_available():
    from .kernels import gemm
    return gemm.c_available()


def _c_thread_hook(n):
    if _c_gemm_available():
        from . import _cgemm
        _cgemm.lib.mlpf_set_num_threads(n)


register_backend("numpy", _numpy_backend)
add_thread_hook(_c_thread_hook)


def _numba_thread_hook(n):
    from .kernels import _numba_config
    _numba_config.set_threads(n)


add_thread_hook(_numba_thread_hook)


def _numba_backend():
    """Every op a Numba kernel (kernels/*.py, variant "numba")."""
    from .kernels import _numba_config, linear
    ops, acts = _registry_table("numba")
    return Backend("numba", "cpu", ops, acts, fused_activations=linear.FUSED["numba"],
                   info=_numba_config.info())


def _cpu_backend():
    """The fastest CPU mix: the Numba kernels, with from the C extension, when it is
    built: the GEMM, the linear forward and input gradient (GEMM epilogues), Adam, and
    the compiled MLP step of fit (kernels/mlp_step.py). Rule, from
    bench/compare_gemm_numba.py: the C GEMM was at least as fast as the Numba GEMM at
    every square and MLP shape measured (1 and 2 threads), so it is used for every shape;
    the Numba GEMM is the fallback. Adam in C runs on the GEMM's threads, awake right
    after a step's last GEMM, where the Numba kernel would wake OpenMP's."""
    from .kernels import _numba_config, gemm, linear, mlp_step, optim
    ops, acts = _registry_table("numba")
    fused = linear.FUSED["numba"]
    info = dict(_numba_config.info(), gemm="numba")
    if gemm.c_available():
        ops["gemm"] = gemm.VARIANTS["c"]
        ops.update(linear.VARIANTS["cpu"])
        ops.update(optim.VARIANTS["c"])
        ops["mlp_train_step"] = mlp_step.MLPTrainStep
        fused = linear.FUSED["cpu"]
        info["gemm"] = "c"
    return Backend("cpu", "cpu", ops, acts, fused_activations=fused, info=info)


register_backend("numba", _numba_backend)
register_backend("cpu", _cpu_backend)


# --- cuda: Numba CUDA kernels (kernels/cuda/), the `cuda` extra (numba-cuda) ---------------

@functools.lru_cache(maxsize=None)
def _cuda_available():
    """numba-cuda is installed, a GPU (or Numba's CUDA simulator) is usable, and a tiny kernel
    compiled, ran and gave the right values there (``_cuda_probe``); cached, so the probe
    runs once per process. When the probe fails, warns once with the cause and the fix."""
    if importlib.util.find_spec("numba_cuda") is None:
        return False
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if not simulated and not _nvidia_driver_loadable():
        return False                   # skips importing numba.cuda (~0.5 s) on GPU-less hosts
    try:
        from numba import cuda
        if not cuda.is_available():
            return False
    except Exception:                  # a broken driver or toolkit: not usable
        return False
    problem = _cuda_probe()
    if problem is not None:
        WHY_UNAVAILABLE["cuda"] = problem
        warnings.warn(f"mlpfast: the GPU is not used, backend 'auto' falls back to the CPU: "
                      f"{problem}", RuntimeWarning, stacklevel=2)
        return False
    return True


def _cuda_probe():
    """None when a tiny kernel compiles, runs and returns 2 x + 1; else the cause and the fix.

    Compiled eagerly for one signature, so a compiler failure (e.g. numba-cuda 0.30 under
    NumPy 2.5) shows before any device memory is touched."""
    from numba import cuda
    try:
        from .kernels.cuda._device import probe_kernel
        kernel = cuda.jit("void(float32[:], float32[:])")(probe_kernel)
        x = np.arange(64, dtype=np.float32)
        out = cuda.device_array(64, dtype=np.float32)
        kernel[2, 32](cuda.to_device(x), out)
        got = out.copy_to_host()
    except Exception as e:             # any failure means: not usable here
        return _probe_failure(e)
    if not np.array_equal(got, 2 * x + 1):
        return (f"a test kernel ran but returned wrong values ({got[:4]} ... instead of "
                f"{(2 * x + 1)[:4]} ...). Fix: update the NVIDIA driver and numba-cuda")
    return None


def _probe_failure(error):
    """The cause of a failed probe, in words, with the fix."""
    from importlib.metadata import version
    words = " ".join(str(error).split())
    cause = f"{type(error).__name__}: {words[:200]}"
    if "row_stack" in str(error):
        return (f"numba-cuda {version('numba-cuda')} cannot compile CUDA kernels under NumPy "
                f"{np.__version__} ({cause}): NumPy 2.5 removed np.row_stack, which "
                f"numba-cuda 0.30 registers. Fix: pip install 'numpy<2.5' (the pin of "
                f"mlpfast's cuda extra)")
    if any(name in str(error).lower() for name in ("nvvm", "nvrtc", "libdevice")):
        return (f"the CUDA compiler libraries were not found ({cause}). Fix: pip install "
                f"'mlpfast[cuda12]' or 'mlpfast[cuda13]' (NVIDIA's wheels, by the driver's "
                f"CUDA version) or install the CUDA toolkit")
    return (f"a test kernel failed to compile or run ({cause}). Fix: check the driver and "
            f"toolkit with python -c 'from numba import cuda; cuda.detect()'; "
            f"pip install 'mlpfast[cuda12]' or 'mlpfast[cuda13]' brings NVIDIA's runtime")


def _nvidia_driver_loadable():
    import ctypes
    names = {"win32": ["nvcuda.dll"], "darwin": []}.get(sys.platform, ["libcuda.so.1"])
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


def _cuda_zeros(shape, dtype=np.float32):
    from numba import cuda
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def _cuda_empty(shape, dtype=np.float32):
    from numba import cuda
    return cuda.device_array(shape, dtype=dtype)


def _cuda_to_device(host):
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(host))


def _cuda_assign(dst, src):
    """dst[...] = src for a contiguous device array dst; src a device array of dst's dtype,
    or a host array (cast to dst's dtype): one copy, no temporary on the device."""
    from .kernels.cuda._device import is_device_array
    if not is_device_array(src):
        src = np.ascontiguousarray(src, dtype=dst.dtype)
    dst.copy_to_device(src)


def _cuda_zero(dst):
    """dst[...] = 0 for a contiguous device array (gradients, optimizer state)."""
    dst.copy_to_device(np.zeros(dst.shape, dtype=dst.dtype))


def _cuda_backend():
    """Parameters, activations, gradients and optimizer state stay on the GPU; batches go
    up with ``to_device``, and only the loss and metrics come back."""
    from importlib.metadata import version

    from numba import cuda

    from .kernels.cuda import activations, data, gemm, linear, losses, optim
    from .kernels.cuda._device import simulator_enabled
    ops = {"gemm": gemm.VARIANTS["cuda"]}
    for family in (linear, losses, optim, data):
        ops.update(family.VARIANTS["cuda"])
    if simulator_enabled():
        gpu = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), no GPU"
    else:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        gpu = f"{name}, compute capability {'.'.join(map(str, device.compute_capability))}"
    info = {"gpu": gpu, "numba-cuda": version("numba-cuda")}
    return Backend("cuda", "cuda", ops, activations.VARIANTS["cuda"],
                   fused_activations=linear.FUSED["cuda"], empty=_cuda_empty, zeros=_cuda_zeros,
                   to_device=_cuda_to_device, to_numpy=to_numpy, assign=_cuda_assign,
                   zero=_cuda_zero, info=info)


def gpu_summary():
    """One line for ``mlpfast info``: the GPU backend "cuda" runs on, or why there is none."""
    if importlib.util.find_spec("numba_cuda") is None:
        return "none used: numba-cuda is not installed (pip install 'mlpfast[cuda]')"
    if not _cuda_available():
        if "cuda" in WHY_UNAVAILABLE:
            return f"none used: {WHY_UNAVAILABLE['cuda']}"
        return "none found (no NVIDIA driver or GPU usable by numba-cuda)"
    return f"{get_backend('cuda').info['gpu']} (backend cuda)"


register_backend("cuda", _cuda_backend, _cuda_available)
