"""sgemm variants (the C GEMM of csrc/ and any other fast entry of gemm.VARIANTS) and the
fused Linear forward of the C GEMM: validated, then timed.

    pytest bench/bench_gemm.py [-k "c and 1024"] [--benchmark-json out.json]

GEMM: squares and the issue's MLP shapes (forward X W^T, grad_x = dY W, grad_W = dY^T X of
784 -> 512 at batch 128 and 1024 -> 1024 at batch 256), 1 and 2 threads; extra_info holds
GFLOP/s and the percentage of the measured fp32 peak. The side-by-side comparison against
NumPy/OpenBLAS is bench/compare_gemm.py.

Linear forward y = relu(x W^T + b): the fused C call (bias and relu in the GEMM epilogue)
against the same C GEMM followed by a separate bias + relu pass.
"""
import numpy as np
import pytest
from _common import assert_close, gemm_flops, run_benchmark

import mlpfast
from mlpfast.kernels import gemm

# (m, n, k, trans_a, trans_b): op(A) is m x k, op(B) is k x n
SHAPES = [(256, 256, 256, False, False), (1024, 1024, 1024, False, False),
          (2048, 2048, 2048, False, False),
          (128, 512, 784, False, True), (128, 784, 512, False, False), (512, 784, 128, True, False),
          (256, 1024, 1024, False, True), (256, 1024, 1024, False, False),
          (1024, 1024, 256, True, False)]
LINEAR = [(128, 784, 512), (256, 1024, 1024), (64, 784, 256), (256, 256, 128)]  # (batch, in, out)
# every fast variant of the registry; NumPy here would run this environment's slowed
# OpenBLAS settings (OPENBLAS_CORETYPE), so the OpenBLAS peer lives in compare_gemm.py
VARIANTS = [v for v in gemm.VARIANTS if v != "numpy"]


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def threads(request):
    before = mlpfast.get_num_threads()
    mlpfast.set_num_threads(request.param)
    yield request.param
    mlpfast.set_num_threads(before)


def describe(m, n, k, ta, tb):
    return f"{m}x{n}x{k} {'T' if ta else 'N'}{'T' if tb else 'N'}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: describe(*s).replace(" ", "-"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_sgemm(benchmark, variant, shape, threads):
    m, n, k, ta, tb = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    fn = gemm.VARIANTS[variant]
    expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
    assert_close(fn(a, b, out, trans_a=ta, trans_b=tb), expected, 1e-5 * k, 1e-5 * k ** 0.5,
                 f"{variant} {describe(*shape)}")
    run_benchmark(benchmark, lambda: fn(a, b, out, trans_a=ta, trans_b=tb),
                  flops=gemm_flops(m, n, k), shape=describe(*shape), variant=variant,
                  kernel=gemm.c_kernel_name() if variant == "c" else "numpy matmul")


@pytest.mark.skipif("c" not in gemm.VARIANTS, reason="C GEMM not built")
@pytest.mark.parametrize("layer", LINEAR, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("form", ["fused", "separate"])
def test_linear_relu_forward(benchmark, form, layer, threads):
    batch, n_in, n_out = layer
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    bias = rng.standard_normal(n_out, dtype=np.float32)
    y = np.empty((batch, n_out), np.float32)

    def fused():            # one pass: bias and relu in the GEMM epilogue
        return gemm.gemm_c_fused(x, w, y, False, True, 1.0, 0.0, bias, 1)

    def separate():         # GEMM, then a second pass over y for bias + relu
        gemm.gemm_c(x, w, y, trans_b=True)
        np.add(y, bias, out=y)
        return np.maximum(y, 0, out=y)

    fn = fused if form == "fused" else separate
    expected = np.maximum(x.astype(np.float64) @ w.T + bias, 0)
    assert_close(fn(), expected, 1e-5 * n_in, 1e-5 * n_in ** 0.5, f"linear {form}")
    run_benchmark(benchmark, fn, flops=gemm_flops(batch, n_out, n_in),
                  shape=f"{batch}x{n_in}->{n_out} relu", variant=f"c {form}")
