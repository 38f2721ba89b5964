"""The cuda backend: Numba CUDA kernels (kernels/cuda/, the ``cuda`` extra, numba-cuda).

Parameters, activations, gradients and optimizer state stay on the GPU; batches go up with
``to_device``, and only the loss and metrics come back.
"""
import functools
import importlib.util
import os
import sys

import numpy as np

from .registry import Backend, get_backend, register_backend, to_numpy


@functools.lru_cache(maxsize=None)
def _cuda_available():
    """numba-cuda is installed and a GPU (or Numba's CUDA simulator) is usable; cached."""
    if importlib.util.find_spec("numba_cuda") is None:
        return False
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if not simulated and not _nvidia_driver_loadable():
        return False                   # skips importing numba.cuda (~0.5 s) on GPU-less hosts
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:                  # a broken driver or toolkit: not usable
        return False


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


def _cuda_backend():
    from importlib.metadata import version

    from numba import cuda

    from ..kernels.cuda import (activations, batchnorm, data, dropout, gemm, linear, losses,
                                optim)
    from ..kernels.cuda._device import check_device_float, check_device_out, simulator_enabled
    from ..kernels.linear import compose_grad_input
    ops = {"gemm": gemm.VARIANTS["cuda"]}
    for family in (linear, losses, optim, data, batchnorm, dropout):
        ops.update(family.VARIANTS["cuda"])
    ops["linear_grad_input"] = compose_grad_input(ops["gemm"], activations.VARIANTS["cuda"],
                                                  check_device_float, check_device_out)
    if simulator_enabled():
        gpu = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), no GPU"
    else:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        gpu = f"{name}, compute capability {'.'.join(map(str, device.compute_capability))}"
    info = {"gpu": gpu, "numba-cuda": version("numba-cuda")}
    return Backend("cuda", "cuda", ops, activations.VARIANTS["cuda"], empty=_cuda_empty,
                   zeros=_cuda_zeros, to_device=_cuda_to_device, to_numpy=to_numpy, info=info)


def gpu_summary():
    """One line for ``mlpfast info``: the GPU backend "cuda" runs on, or why there is none."""
    if importlib.util.find_spec("numba_cuda") is None:
        return "none used: numba-cuda is not installed (pip install 'mlpfast[cuda]')"
    if not _cuda_available():
        return "none found (no NVIDIA driver or GPU usable by numba-cuda)"
    return f"{get_backend('cuda').info['gpu']} (backend cuda)"


register_backend("cuda", _cuda_backend, _cuda_available)
