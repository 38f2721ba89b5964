"""The cuda backend: Numba CUDA kernels (kernels/cuda/, the ``cuda`` extra, numba-cuda).

Parameters, activations, gradients and optimizer state stay on the GPU; batches go up with
``to_device``, and only the loss and metrics come back. Its training step
(``cuda_step.cuda_step``) keeps the dataset on the GPU too and runs each step as one CUDA
graph.
"""
import functools
import importlib.util
import os
import sys
import warnings

import numpy as np

from .registry import WHY_UNAVAILABLE, Backend, get_backend, register_backend, to_numpy


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
        from ..kernels.cuda._device import probe_kernel
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
    from ..kernels.cuda._device import is_device_array
    if not is_device_array(src):
        src = np.ascontiguousarray(src, dtype=dst.dtype)
    dst.copy_to_device(src)


def _cuda_zero(dst):
    """dst[...] = 0 for a contiguous device array (gradients, optimizer state)."""
    dst.copy_to_device(np.zeros(dst.shape, dtype=dst.dtype))


def _cuda_backend():
    from importlib.metadata import version

    from numba import cuda

    from ..kernels.cuda import (activations, batchnorm, data, dropout, gemm, linear, losses,
                                optim)
    from ..kernels.cuda._device import simulator_enabled
    from .cuda_step import cuda_step
    ops = {"gemm": gemm.VARIANTS["cuda"]}
    for family in (linear, losses, optim, data, batchnorm, dropout):
        ops.update(family.VARIANTS["cuda"])
    if simulator_enabled():
        gpu = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), no GPU"
    else:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        gpu = f"{name}, compute capability {'.'.join(map(str, device.compute_capability))}"
    info = {"gpu": gpu, "numba-cuda": version("numba-cuda")}
    return Backend("cuda", "cuda", ops, activations.VARIANTS["cuda"], empty=_cuda_empty,
                   zeros=_cuda_zeros, to_device=_cuda_to_device, to_numpy=to_numpy,
                   assign=_cuda_assign, zero=_cuda_zero, make_step=cuda_step, info=info)


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
