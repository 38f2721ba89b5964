"""The CUDA kernels and backend, tested on a GPU when one is usable, else under Numba's CUDA
simulator. The cases live in tests/cuda_cases.py.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first
imported, and must stay off for the rest of the suite (``backend="auto"`` would pick the
simulated GPU). So in a plain ``pytest`` run on a machine without a GPU this file runs the
cases in a child interpreter with the simulator on (``test_cuda_cases_under_simulator``).
To see each case:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py

The simulator runs one Python thread per CUDA thread, so the cases use small shapes.
Needs the ``cuda`` extra (``pip install -e ".[test,cuda]"``).
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from mlpfast import backends

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')", allow_module_level=True)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

if SIMULATED or "cuda" in backends():
    from cuda_cases import *  # noqa: F401,F403  (kernels can run in this process)
else:
    def test_cuda_cases_under_simulator():
        here = os.path.dirname(os.path.abspath(__file__))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), cwd=here,
            capture_output=True, text=True, timeout=900)
        lines = result.stdout.strip().splitlines()
        summary = lines[-1] if lines else ""
        assert result.returncode == 0, \
            f"CUDA simulator run failed:\n{result.stdout[-8000:]}\n{result.stderr[-3000:]}"
        assert " passed" in summary and "failed" not in summary and "error" not in summary, \
            summary


# --- compiled for a real GPU (no GPU needed) -------------------------------------------------
# The simulator runs kernels as Python and never type-checks them with Numba; this compiles
# every kernel to PTX for sm_90 as a GPU would, where a CUDA toolkit's NVVM is installed.

def _compile_specs():
    """(name, kernel, argument types) for every kernel of kernels/cuda."""
    from numba import types

    from mlpfast.kernels.cuda import (activations, batchnorm, data, dropout, gemm, linear, losses,
                                      optim)

    def arr(dtype, ndim):
        return types.Array(dtype, ndim, "C")
    f64, i64 = types.float64, types.int64
    specs = []
    for dtype in (types.float32, types.float64):       # every transpose case, both dtypes
        m2, v1 = arr(dtype, 2), arr(dtype, 1)
        for trans_a in (False, True):
            for trans_b in (False, True):
                kernel, _ = gemm.gemm_kernel(np.dtype(str(dtype)), trans_a, trans_b, "identity",
                                             False, gemm.TILE_LARGE)
                specs.append((f"gemm {dtype} {trans_a} {trans_b}", kernel,
                              (m2, m2, m2, v1, f64, f64, i64, i64, i64)))
    m2, v1 = arr(types.float32, 2), arr(types.float32, 1)   # the rest in float32
    for activation in ("relu", "gelu"):                     # inline, and second-pass epilogue
        kernel, _ = gemm.gemm_kernel(np.dtype(np.float32), False, True, activation, True,
                                     gemm.TILE_LARGE)
        specs.append((f"gemm + bias + {activation}", kernel,
                      (m2, m2, m2, v1, f64, f64, i64, i64, i64)))
    for name in activations.ELEMENTWISE:
        specs.append((f"{name} forward", activations._FORWARD_KERNELS[name], (m2, m2, f64)))
        specs.append((f"{name} backward", activations._BACKWARD_KERNELS[name],
                      (m2, m2, m2, m2, f64)))
    specs += [
        ("softmax forward", activations._softmax_forward_kernel, (m2, m2)),
        ("softmax backward", activations._softmax_backward_kernel, (m2, m2, m2)),
        ("bias_grad", linear._bias_grad_kernel, (m2, v1)),
        ("mse partials", losses._squared_error_partials, (v1, v1, arr(f64, 1))),
        ("mse backward", losses._mse_backward_kernel, (v1, v1, v1, f64)),
        ("sgd", optim._sgd_kernel, (v1, v1, v1, f64, f64, types.boolean, f64, types.boolean)),
        ("adam", optim._adam_kernel, (v1, v1, v1, v1) + (f64,) * 7),
        ("gather", data._gather_kernel, (arr(types.uint8, 2), arr(i64, 1), m2)),
        ("max_norm", optim._max_norm_kernel, (m2, f64)),
        ("batchnorm statistics", batchnorm._statistics_kernel, (m2, f64, f64, v1, v1, v1, v1)),
        ("batchnorm normalize", batchnorm._normalize_kernel,
         (m2, v1, v1, types.boolean, f64, v1, v1, types.boolean, m2)),
        ("batchnorm gradient sums", batchnorm._gradient_sums_kernel,
         (m2, m2, v1, v1, arr(f64, 2), v1, v1, types.boolean)),
        ("batchnorm grad input", batchnorm._grad_input_kernel,
         (m2, m2, v1, v1, v1, arr(f64, 2), types.boolean, m2)),
        ("dropout forward", dropout._dropout_forward_kernel,
         (m2, types.uint64, types.float32) + (types.uint64,) * 5 + (m2, arr(types.uint8, 2))),
        ("dropout backward", dropout._dropout_backward_kernel,
         (m2, arr(types.uint8, 2), types.float32, m2)),
    ]
    for with_grad in (True, False):
        specs.append((f"cross-entropy grad={with_grad}", losses._CROSS_ENTROPY[with_grad],
                      (m2, arr(i64, 1), m2, arr(f64, 2))))
    return specs


@pytest.mark.skipif(SIMULATED, reason="the simulator does not compile kernels")
def test_every_cuda_kernel_compiles_for_a_gpu(monkeypatch):
    from numba import cuda
    from numba.cuda import dispatcher

    try:
        cuda.compile_ptx(lambda x: None, "void(float32[:])", cc=(9, 0))
    except Exception as e:                   # no NVVM: no CUDA toolkit on this machine
        pytest.skip(f"cannot compile PTX here ({type(e).__name__}: {str(e).splitlines()[0]})")

    class Hopper:
        compute_capability = (9, 0)
    # device functions (the activations the GEMM epilogue calls) ask the current GPU for its
    # compute capability; without a GPU, answer for one
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: Hopper())
    for name, kernel, argument_types in _compile_specs():
        ptx, _ = cuda.compile_ptx(kernel.py_func, argument_types, cc=(9, 0))
        if name.startswith("gemm"):          # accumulators in registers, none in local memory
            assert "__local_depot" not in ptx, f"{name}: uses local memory"
