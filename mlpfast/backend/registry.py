"""The Backend table, the registry of backends by name, and the thread count they share
(mlpfast.backend re-exports all of it)."""
from dataclasses import dataclass, field
from typing import Callable, Dict

import numpy as np

from .. import env
from ..machine import available_cpus
from .steps import fp32_only, layer_by_layer_step

# Every backend provides all of these ops (signatures in the kernel modules):
OPS = (
    "gemm",                              # kernels/gemm.py
    "linear_forward", "bias_grad", "linear_grad_input",     # kernels/linear.py
    "softmax_cross_entropy", "softmax_cross_entropy_forward", "mse", "mse_backward",  # losses.py
    "sgd", "adam", "max_norm",           # kernels/optim.py
    "gather",                            # kernels/data.py
    "batchnorm_train", "batchnorm_eval", "batchnorm_backward",     # kernels/batchnorm.py
    "dropout_mask", "dropout_forward", "dropout_backward",         # kernels/dropout.py
)


def _fill_zeros(a):
    a.fill(0)


@dataclass
class Backend:
    """A table of kernels for one device, its array helpers and its training step.

    ``activations[name]`` is an ``Activation(forward, backward)``. ``make_step(plan,
    loss_fn, optimizer, dataset, batch_size)`` returns the step ``fit`` runs
    (``mlpfast.backend.steps`` has the contract); ``check_step(plan, loss_fn, optimizer,
    dataset)`` raises the ValueError make_step would raise for that training (its
    precision), changing nothing. Arrays of a CPU backend are NumPy arrays.
    """
    name: str
    device: str
    ops: Dict[str, Callable]
    activations: Dict[str, object]
    make_step: Callable = layer_by_layer_step
    check_step: Callable = fp32_only
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
    n = env.num_threads()
    return n if n is not None else available_cpus() or 1


_num_threads = _default_threads()
_threads_chosen = env.num_threads() is not None     # by MLPFAST_NUM_THREADS or set_num_threads


def add_thread_hook(hook):
    """Call ``hook(n)`` now and whenever the thread count changes."""
    _THREAD_HOOKS.append(hook)
    hook(_num_threads)


def set_num_threads(n):
    """Threads used by every threaded kernel of mlpfast (C GEMM, Numba)."""
    global _num_threads, _threads_chosen
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
            or not 1 <= n <= env.MAX_THREADS:
        raise ValueError(f"n must be an integer from 1 to {env.MAX_THREADS} (the C thread "
                         f"pool's limit), got {n!r}")
    _num_threads, _threads_chosen = int(n), True
    for hook in _THREAD_HOOKS:
        hook(_num_threads)


def get_num_threads():
    """Threads of mlpfast's threaded kernels: set_num_threads(n), else MLPFAST_NUM_THREADS,
    else the CPUs this process may run on."""
    return _num_threads


def threads_chosen():
    """True once MLPFAST_NUM_THREADS or set_num_threads chose the count (not the default)."""
    return _threads_chosen
