"""Backends: per device, a table of kernels and the device's training step.

The engine (nn, losses, optim, train) only ever calls a ``Backend``: its ops (one function
per op in ``OPS``, built from the kernel registries ``mlpfast.kernels.<family>.VARIANTS``),
its array helpers, and ``make_step``, which turns a model's ``Plan`` into the step object
that ``fit`` runs (``mlpfast.backend.steps``). Backends, registered by name:

    numpy   the NumPy references: obviously correct, the baseline for every test
    numba   every op a Numba kernel (parallel, fused, float32 transcendentals vectorized)
    cpu     the Numba kernels with the C library where it is built: the default on a CPU;
            its step runs k batches of an MLP per compiled call (kernels/mlp_step.py)
    cuda    Numba CUDA kernels (kernels/cuda/, the ``cuda`` extra) when a GPU is usable
    auto    the first available of: cuda, cpu, numpy

``backends()`` lists what this machine can run. Threads: ``set_num_threads(n)`` (or
``MLPFAST_NUM_THREADS`` at import) sets the thread count of every threaded kernel in the
process through the hooks registered with ``add_thread_hook``; one count for the C pool and
for Numba, so they never oversubscribe.
"""
from .plan import PRECISIONS, Plan, PlanLayer, check_precision  # noqa: F401  (the engine
                                                                  # builds plans from these)
from .registry import (OPS, Backend, add_thread_hook, backends, get_backend,  # noqa: F401
                       get_num_threads, register_backend, resolve_name, set_num_threads,
                       threads_chosen, to_numpy)
from . import cpu, cuda  # noqa: E402,F401  (they register the cpu-side and cuda backends)
from .cuda import gpu_summary  # noqa: F401

# The activation table, for the engine (which imports no kernel module): every name, those
# a Linear layer may apply in its epilogue (f' written with f's output), the elementwise ones.
from ..kernels.activations import ELEMENTWISE, FUSABLE, NAMES as ACTIVATIONS  # noqa: F401
