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
import re
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

    from mlpfast.kernels.cuda import (_device, activations, batchnorm, data, dropout, gemm, linear,
                                      losses, mlp_step, optim)

    def arr(dtype, ndim):
        return types.Array(dtype, ndim, "C")
    f64, i64 = types.float64, types.int64

    def gemm_spec(name, dtype, *options):
        kernel, _ = gemm.gemm_kernel(np.dtype(str(dtype)), *options)
        m2, v1, m3 = arr(dtype, 2), arr(dtype, 1), arr(dtype, 3)
        return (name, kernel, (m2, m2, m2, v1, m2, m3, f64, f64, i64, i64, i64, i64))
    specs = []
    for tile in gemm.TILES:                             # every tile and transpose case
        for trans_a in (False, True):
            for trans_b in (False, True):
                specs.append(gemm_spec(f"gemm {tile} {trans_a} {trans_b}", types.float32,
                                       trans_a, trans_b, "identity", False, tile))
    tile = gemm.TILE_64x64x16
    for trans_a, trans_b in ((False, True), (True, False)):
        specs.append(gemm_spec(f"gemm float64 {trans_a} {trans_b}", types.float64, trans_a,
                               trans_b, "identity", False, tile))
    for activation, dact, split in (("relu", "identity", False), ("gelu", "identity", False),
                                    ("identity", "relu", False), ("identity", "sigmoid", False),
                                    ("identity", "tanh", False), ("identity", "identity", True)):
        specs.append(gemm_spec(f"gemm + bias + {activation}, dact {dact}, split {split}",
                               types.float32, False, True, activation, True, tile, dact, split))
    m2, v1 = arr(types.float32, 2), arr(types.float32, 1)   # the rest in float32
    for activation, dact in (("identity", "identity"), ("gelu", "identity"), ("relu", "tanh")):
        specs.append((f"split-K reduce {activation} {dact}",
                      gemm.split_reduce_kernel(activation, True, dact),
                      (arr(types.float32, 3), m2, v1, m2, f64, f64)))
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
         (m2, m2, v1, v1, arr(f64, 2), v1, v1)),
        ("batchnorm grad input", batchnorm._grad_input_kernel,
         (m2, m2, v1, v1, v1, arr(f64, 2), types.boolean, m2)),
        ("dropout forward", dropout._dropout_forward_kernel,
         (m2, types.uint64, types.float32) + (types.uint64,) * 5 + (m2, arr(types.uint8, 2))),
        ("dropout backward", dropout._dropout_backward_kernel,
         (m2, arr(types.uint8, 2), types.float32, m2)),
        ("backend probe", _device.probe_kernel, (v1, v1)),
    ]
    for with_grad in (True, False):
        specs.append((f"cross-entropy grad={with_grad}", losses._CROSS_ENTROPY[with_grad],
                      (m2, arr(i64, 1), m2, arr(f64, 2))))
    return specs + _step_compile_specs(mlp_step, arr)


def _step_compile_specs(mlp_step, arr):
    """The training step's own kernels (kernels/cuda/mlp_step.py)."""
    from numba import types
    f32, f64, i64 = types.float32, types.float64, types.int64
    m2, v1, counts, state = arr(f32, 2), arr(f32, 1), arr(i64, 1), arr(f64, 1)
    return [
        ("step gather rows", mlp_step.gather_rows_kernel, (m2, counts, counts, i64, m2)),
        ("step gather labels", mlp_step.gather_rows_kernel,
         (arr(i64, 2), counts, counts, i64, arr(i64, 2))),
        ("step squared error, labels", mlp_step.SQUARED_ERROR["labels"],
         (m2, counts, m2, arr(f64, 2))),
        ("step squared error, targets", mlp_step.SQUARED_ERROR["targets"],
         (m2, m2, m2, arr(f64, 2))),
        ("step sum of squares", mlp_step.square_sums_kernel, (v1, state)),
        ("step close batch", mlp_step.close_batch_kernel,
         (arr(f64, 2), state, counts, state, arr(f64, 2), state)),
        ("step sgd", mlp_step.sgd_step_kernel,
         (v1, v1, v1, f64, types.boolean, f64, state, state)),
        ("step adam", mlp_step.adam_step_kernel, (v1, v1, v1, v1) + (f64,) * 4 + (state, state)),
    ]


def _missing_compiler():
    """Why this machine cannot compile PTX (NVVM or NVRTC not found), or None."""
    from cuda import pathfinder
    for library in ("nvvm", "nvrtc"):
        try:
            pathfinder.load_nvidia_dynamic_lib(library)
        except pathfinder.DynamicLibNotFoundError as e:
            return f"no {library.upper()} here (no CUDA toolkit): {str(e).splitlines()[0]}"
    return None


@pytest.mark.skipif(SIMULATED, reason="the simulator does not compile kernels")
def test_every_cuda_kernel_compiles_for_a_gpu(monkeypatch):
    # skipped only when the compiler libraries are absent: any other failure (a kernel that
    # does not type, numba-cuda broken by a NumPy release) fails here
    missing = _missing_compiler()
    if missing:
        pytest.skip(missing)
    from numba import cuda
    from numba.cuda import dispatcher

    class Hopper:
        compute_capability = (9, 0)
    # device functions (the activations the GEMM epilogue calls) ask the current GPU for its
    # compute capability; without a GPU, answer for one
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: Hopper())
    from mlpfast.kernels.cuda import gemm
    for name, kernel, argument_types in _compile_specs():
        function = getattr(kernel, "py_func", kernel)
        bounds = getattr(kernel, "targetoptions", {}).get("launch_bounds")
        ptx, _ = cuda.compile_ptx(function, argument_types, cc=(9, 0), launch_bounds=bounds)
        if name.startswith("gemm"):          # accumulators in registers, none in local memory
            assert "__local_depot" not in ptx, f"{name}: uses local memory"
        if any(name.startswith(f"gemm {tile}") for tile in gemm.TILES if tile[3] == 8):
            assert "ld.shared.v4.f32" in ptx, f"{name}: no 16-byte shared-memory loads"
        tile = next((t for t in gemm.TILES if name.startswith(f"gemm {t}")), None)
        if tile is not None:            # the shared memory gemm.check_tile counts
            declared = sum(int(size) for size in re.findall(r"\.shared .*\[(\d+)\];", ptx))
            assert declared == gemm.shared_bytes(tile, np.float32), name


# --- the probe: "auto" never picks a GPU that cannot run kernels ------------------------------
# A fresh interpreter (the probe runs once per process) that sees a GPU: the driver check,
# cuda.is_available() and the device's compute capability answer as on a GPU machine, so the
# probe compiles its kernel with the real numba-cuda compiler and fails as it would there.

PROBE_CHILD = """
import sys, warnings
import numpy as np
if sys.argv[1] == "numpy-2.5":
    del np.row_stack                              # NumPy 2.5 removed it
from numba import cuda
from numba.cuda import dispatcher
import mlpfast as mf
from mlpfast.backend import cuda as cuda_backend

class Hopper:
    compute_capability = (9, 0)

cuda_backend._nvidia_driver_loadable = lambda: True
cuda.is_available = lambda: True
dispatcher.get_current_device = lambda: Hopper()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(mf.get_backend("auto").name, mf.backends())
    print(mf.MLP([3, 2], seed=0).backend.name)
for w in caught:
    print(w.category.__name__, w.message)
try:
    mf.get_backend("cuda")
except ValueError as e:
    print("ValueError", e)
"""


def run_probe_child(case):
    result = subprocess.run([sys.executable, "-c", PROBE_CHILD, case],
                            env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_auto_falls_back_to_cpu_with_one_warning_under_numpy_2_5():
    chosen, model_backend, *rest = run_probe_child("numpy-2.5")
    assert chosen.startswith("cpu ") and "cuda" not in chosen and model_backend == "cpu"
    warned = [line for line in rest if line.startswith("RuntimeWarning")]
    assert len(warned) == 1, rest
    assert "row_stack" in warned[0] and "NumPy 2.5" in warned[0]             # the cause
    assert "pip install 'numpy<2.5'" in warned[0]                            # the fix
    error = [line for line in rest if line.startswith("ValueError")]
    assert error and "backend 'cuda' is not available" in error[0] and "row_stack" in error[0]


@pytest.mark.skipif(SIMULATED or "cuda" in backends(), reason="a usable GPU passes the probe")
def test_auto_falls_back_to_cpu_when_the_probe_kernel_cannot_run():
    chosen, model_backend, *rest = run_probe_child("no-gpu")
    assert chosen.startswith("cpu ") and model_backend == "cpu"
    warned = [line for line in rest if line.startswith("RuntimeWarning")]
    assert len(warned) == 1 and "Fix:" in warned[0], rest
