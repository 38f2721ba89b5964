"""The C GEMM (csrc/, mlpfast._cgemm) against the NumPy reference, on every micro-kernel this
CPU runs (AVX-512, AVX2, portable), 1 and 2 threads, shapes that cross every edge and
block boundary, all transpose cases, views, alpha/beta, the bias + relu epilogue; its
argument checks; the GIL; threads next to Numba's; fork."""
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
from conftest import C_DRAW, assert_close, run_guarded
from test_kernels_dropout import check_c_dropout, check_c_dropout_ties

import mlpfast
from mlpfast.kernels import gemm, gemm_bf16, linear

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C GEMM not built")

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
# m x n x k: sizes 1, primes, non-multiples of every tile (12x32, 6x16, 4x8), tall-skinny
# and short-wide, k across kc blocks (1024 / 256: k from 1.5 kc on takes two), n across
# nc blocks (768 / 256).
SHAPES = [(1, 1, 1), (1, 33, 7), (29, 1, 13), (13, 37, 29), (97, 101, 103), (12, 32, 8),
          (25, 65, 17), (300, 3, 50), (3, 300, 50), (37, 50, 800), (40, 1000, 40),
          (131, 97, 601), (9, 70, 1601)]


def kernel_names():
    return gemm.c_kernels() if gemm.c_available() else []


@pytest.fixture(params=kernel_names())
def kernel(request):
    before = gemm.c_kernel_name()
    gemm.set_c_kernel(request.param)
    yield request.param
    gemm.set_c_kernel(before)


def operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def reference(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None, bias=None, relu=False):
    """act(alpha op(a) op(b) + beta c + bias) in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    z = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if beta != 0.0:
        z += beta * c.astype(np.float64)
    if bias is not None:
        z += bias
    return np.maximum(z, 0) if relu else z


def tol(dtype, k):
    """Rounding of a k-term float sum grows like sqrt(k); values are O(sqrt(k))."""
    k = max(k, 1)
    return (2e-6 * k, 1e-5 * k ** 0.5) if dtype == np.float32 else (1e-13 * k, 1e-12 * k ** 0.5)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_sgemm_every_kernel_and_thread_count(kernel, threads, m, n, k, trans_a, trans_b, rng):
    a, b = operands(rng, m, n, k, trans_a, trans_b, np.float32)
    out = np.full((m, n), np.nan, np.float32)      # beta = 0: out is never read
    gemm.gemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)
    assert_close(out, reference(a, b, trans_a, trans_b), tol=tol(np.float32, k),
                 what=f"{kernel} {threads} threads")


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_dgemm(threads, m, n, k, trans_a, trans_b, rng):
    a, b = operands(rng, m, n, k, trans_a, trans_b, np.float64)
    out = gemm.gemm_c(a, b, trans_a=trans_a, trans_b=trans_b)
    assert out.dtype == np.float64
    assert_close(out, reference(a, b, trans_a, trans_b), tol=tol(np.float64, k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.0), (-1.5, 0.25), (2.0, 1.0), (1.0, -1.0)])
def test_alpha_beta_bias_relu_epilogue(kernel, threads, dtype, alpha, beta, rng):
    # k = 800 spans two or more k blocks: beta must be applied once, relu only at the end
    m, n, k = 53, 70, 800
    for trans_a, trans_b in TRANSPOSES:
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        for relu in (False, True):
            out = c0.copy() if beta != 0.0 else np.full((m, n), np.nan, dtype)
            gemm.gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, int(relu))
            want = reference(a, b, trans_a, trans_b, alpha, beta, c0, bias, relu)
            assert_close(out, want, tol=tol(dtype, k), what=f"{trans_a},{trans_b} relu={relu}")
            if relu:
                assert (out == 0).sum() > m * n // 4      # the relu really cut


@pytest.mark.parametrize("n", [16, 31, 33, 64])
def test_every_edge_tile_in_place(kernel, threads, n, rng):
    # m = 1..25 leaves every row count 1..12 in the last tile of 12 (1..6 of 6, 1..4 of 4);
    # n cuts the last 32-wide tile at 16, 31 and 1 columns (and none). C is a view into a
    # wider array whose other columns hold a sentinel: an edge tile that wrote past its
    # columns, or rows past m, would change them.
    k = 20
    for m in range(1, 26):
        a, b = operands(rng, m, n, k, False, True, np.float32)
        c0 = rng.standard_normal((m, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        for beta, with_bias, relu in [(0.0, False, False), (0.5, True, False), (1.0, True, True)]:
            wide = np.full((m + 1, n + 5), 7.0, np.float32)
            out = wide[:m, :n]
            out[:] = c0 if beta else np.nan
            gemm.gemm_c_fused(a, b, out, False, True, 1.5, beta, bias if with_bias else None,
                              int(relu))
            want = reference(a, b, False, True, 1.5, beta, c0, bias if with_bias else None,
                             relu)
            assert_close(out, want, tol=tol(np.float32, k), what=f"m={m} n={n} beta={beta}")
            assert (wide[:, n:] == 7.0).all() and (wide[m] == 7.0).all(), f"m={m} n={n}"


def test_relu_epilogue_lets_nan_through(kernel, threads, rng):
    # relu is max(., 0) with NaN passing, as np.maximum (the reference, and the numpy and
    # numba backends): a NaN in a row of A makes that row of C NaN, in a full tile, an edge
    # tile and the narrow products alike, so a diverging step shows NaN rather than zeros
    for m, n, k, trans_b in [(25, 70, 9, False), (9, 10, 33, True)]:
        a, b = operands(rng, m, n, k, False, trans_b, np.float32)
        a[[0, m - 1], 3] = np.nan
        bias = rng.standard_normal(n).astype(np.float32)
        out = np.full((m, n), 7.0, np.float32)
        gemm.gemm_c_fused(a, b, out, False, trans_b, 1.0, 0.0, bias, 1)
        want = reference(a, b, False, trans_b, bias=bias, relu=True)
        assert np.isnan(want[[0, m - 1]]).all()
        assert_close(out, want, tol=tol(np.float32, k), what=f"{kernel} {m}x{n}x{k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_vanishes_k0_and_alpha0(dtype, rng):
    c0 = rng.standard_normal((5, 6)).astype(dtype)
    bias = rng.standard_normal(6).astype(dtype)
    out = c0.copy()
    gemm.gemm_c_fused(np.zeros((5, 0), dtype), np.zeros((0, 6), dtype), out, False, False,
                      1.0, 0.5, bias, 1)
    assert_close(out, np.maximum(0.5 * c0 + bias, 0), dtype=dtype)
    a = np.full((5, 3), np.nan, dtype)            # alpha = 0: A and B are not read
    out = np.full((5, 6), np.nan, dtype)
    gemm.gemm_c_fused(a, np.full((3, 6), np.nan, dtype), out, False, False, 0.0, 0.0, bias, 0)
    assert_close(out, np.broadcast_to(bias, (5, 6)), dtype=dtype)


def test_large_blocks_every_boundary(threads, rng):
    # m past the A block (mc = 3072), n past the B block, k in two kc blocks, all with edges
    a, b = operands(rng, 3100, 800, 1601, False, True, np.float32)
    out = gemm.gemm_c(a, b, trans_b=True)
    assert_close(out, reference(a, b, False, True), tol=tol(np.float32, 1601))


def test_shared_schedule_across_a_blocks(kernel, threads, rng):
    # columns taken in chunks by the threads; m spans two A blocks of the portable kernel
    a, b = operands(rng, 1030, 1100, 37, False, False, np.float32)
    c0 = rng.standard_normal((1030, 1100)).astype(np.float32)
    out = c0.copy()
    gemm.gemm_c(a, b, out, alpha=0.5, beta=2.0)
    assert_close(out, reference(a, b, False, False, 0.5, 2.0, c0), tol=tol(np.float32, 37))


def test_b_block_narrowed_by_its_byte_budget(kernel, threads, rng):
    # avx512 at k = 1024: kc x nc floats would pass b_block_bytes, so the B blocks (1
    # thread) and the shared schedule's column chunks (2 threads: 4000 / 8 columns asked)
    # are 256 columns wide, 4000 = 15 x 256 + 160
    a, b = operands(rng, 40, 4000, 1024, False, True, np.float32)
    c0 = rng.standard_normal((40, 4000)).astype(np.float32)
    out = c0.copy()
    gemm.gemm_c(a, b, out, trans_b=True, alpha=0.5, beta=2.0)
    assert_close(out, reference(a, b, False, True, 0.5, 2.0, c0), tol=tol(np.float32, 1024))


def test_bias_and_relu_reach_every_column_block(kernel, threads, rng):
    # n = 1100 takes two or more B blocks (nc = 768 / 256) on one thread, and column chunks
    # of the shared schedule on two (40 rows: the threads split only the columns); the
    # tiles of every block add the bias of their own columns, not of the first block's
    m, n, k = 40, 1100, 128
    a, b = operands(rng, m, n, k, False, True, np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    for beta, relu in ((0.0, True), (0.5, False)):
        out = c0.copy() if beta else np.full((m, n), np.nan, np.float32)
        gemm.gemm_c_fused(a, b, out, False, True, 1.0, beta, bias, int(relu))
        assert_close(out, reference(a, b, False, True, 1.0, beta, c0, bias, relu),
                     tol=tol(np.float32, k), what=f"{kernel} beta={beta} relu={relu}")


def test_deep_k_falls_back_to_the_static_split(threads, rng):
    # op(A) packed for all of k would exceed the shared schedule's 32 MiB per thread
    a, b = operands(rng, 64, 70, 140_000, False, True, np.float32)
    out = gemm.gemm_c(a, b, trans_b=True)
    assert_close(out, reference(a, b, False, True), tol=tol(np.float32, 140_000))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_and_transposed_views(kernel, threads, dtype, rng):
    big_a = rng.standard_normal((90, 120)).astype(dtype)
    big_b = rng.standard_normal((150, 100)).astype(dtype)
    big_c = np.zeros((80, 130), dtype)
    a, b, out = big_a[3:70:2, 5:66], big_b[7:68, 1:95], big_c[4:38, 10:104]   # 34x61, 61x94
    gemm.gemm_c(a, b, out)
    assert_close(out, reference(a, b, False, False), tol=tol(dtype, 61))
    assert not big_c[:4].any() and not big_c[38:].any()
    assert not big_c[:, :10].any() and not big_c[:, 104:].any()
    # one-row and one-column operands with strided elements
    row, col = big_a[5, 3:60:3][None, :], big_b[2:21, 7][:, None]            # 1x19, 19x1
    assert_close(gemm.gemm_c(row, col), reference(row, col, False, False), tol=tol(dtype, 19))
    assert_close(gemm.gemm_c(col, row), reference(col, row, False, False), tol=tol(dtype, 1))
    # F-ordered operands (x.T of a C array) are read as transposes, not copied
    at, bt = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
    for trans_a, trans_b in TRANSPOSES:
        lhs = at.T if trans_a else at
        rhs = bt.T if trans_b else bt
        got = gemm.gemm_c(lhs, rhs, trans_a=trans_a, trans_b=trans_b)
        assert_close(got, reference(a, b, False, False), tol=tol(dtype, 61))


def test_linear_forward_c_matches_reference(threads, rng):
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((37, 50)).astype(dtype)
        w = rng.standard_normal((29, 50)).astype(dtype)
        b = rng.standard_normal(29).astype(dtype)
        for activation in ("identity", "relu"):
            got = linear.forward_c(x, w, b, activation)
            assert_close(got, linear.forward_ref(x, w, b, activation), tol=tol(dtype, 50))
        assert_close(linear.forward_c(x, w, None), x.astype(np.float64) @ w.T, tol=tol(dtype, 50))


def test_listing_the_kernels_leaves_the_selection_alone():
    # c_kernels() (and the bf16 list) tries each family on the library: afterwards the
    # kernel in use is the one before, the default or one chosen, not the last one tried
    for choice in (gemm._SGEMM_KERNELS, gemm_bf16.C_KERNELS):
        before = choice.name()
        try:
            for family in ["auto", *choice.supported()]:
                choice.select(family)
                chosen = choice.name()
                assert choice.supported() and choice.name() == chosen, (family, choice.name())
        finally:
            choice.select(before)


def test_bad_arguments_name_the_argument(rng):
    a = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    out = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="act must be the code of one of"):
        gemm.gemm_c_fused(a, b, out, False, False, 1.0, 0.0, None, 2)
    with pytest.raises(ValueError, match=r"bias must be a float32 array of shape \(3,\)"):
        gemm.gemm_c_fused(a, b, out, False, False, 1.0, 0.0, np.zeros(4, np.float32), 0)
    with pytest.raises(ValueError, match="bias must be a float32"):
        gemm.gemm_c_fused(a, b, out, False, False, 1.0, 0.0, np.zeros(3), 0)
    with pytest.raises(ValueError, match="overlap input bias"):
        gemm.gemm_c_fused(a, b, out, False, False, 1.0, 0.0, out[0], 0)
    with pytest.raises(ValueError, match="overlap"):
        sq = rng.standard_normal((5, 5)).astype(np.float32)
        gemm.gemm_c(sq, sq.copy(), sq)
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        gemm.set_c_kernel("sse9")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_the_c_api_cannot_take_in_place_are_copied(dtype, rng):
    # no unit-stride axis, reversed rows, a transposed or column-strided out, a strided
    # bias: what the reference accepts, the C GEMM computes (through C-ordered copies)
    a = rng.standard_normal((5, 14)).astype(dtype)
    b = rng.standard_normal((7, 3)).astype(dtype)
    bias = rng.standard_normal(6).astype(dtype)[::2]
    c0 = rng.standard_normal((5, 3)).astype(dtype)
    for a_view, b_view in ((a[:, ::2], b), (a[::-1, :7], b), (a[:, :7], b[::-1]),
                           (a[:, 1::2], np.asfortranarray(b)[:, ::-1])):
        for out in (np.zeros((3, 5), dtype).T, np.zeros((5, 6), dtype)[:, ::2], None):
            if out is not None:
                out[...] = c0
            got = gemm.gemm_c_fused(a_view, b_view, out, False, False, 2.0,
                                    0.0 if out is None else 0.5, bias, 1)
            want = reference(a_view, b_view, False, False, 2.0, 0.0 if out is None else 0.5,
                             c0, bias, relu=True)
            assert got is out or out is None
            assert_close(got, want, tol=tol(dtype, 7), what=f"{a_view.strides} {got.strides}")
    y = rng.random((5, 6)).astype(dtype)[:, ::2]         # the derivative input, no unit stride
    out = np.full((3, 5), np.nan, dtype).T
    gemm.gemm_c_dact(a[:, ::2], b, out, y, 2)
    assert_close(out, reference(a[:, ::2], b, False, False) * y * (1 - y), tol=tol(dtype, 7))


def test_thread_count_follows_mlpfast():
    from mlpfast import _cgemm
    before = mlpfast.get_num_threads()
    try:
        for n in (1, 2, 3):
            mlpfast.set_num_threads(n)
            assert _cgemm.lib.mlpf_get_num_threads() == n
    finally:
        mlpfast.set_num_threads(before)


def test_wake_threads_only_for_gemms_the_sleeping_pool_would_run_alone():
    """mlpf_wake_threads(fmas) wakes sleeping workers (1) only when a GEMM of fmas multiply-
    adds uses them awake but not asleep; a second call, while they spin, has nothing to do
    (0). Below that range the GEMM runs alone; above it, the GEMM wakes them itself."""
    from mlpfast import _cgemm
    from mlpfast.kernels.cpu_config import THRESHOLDS
    wake = _cgemm.lib.mlpf_wake_threads
    low, high = THRESHOLDS["min_parallel_fmas_awake"], THRESHOLDS["min_parallel_fmas"]
    before = mlpfast.get_num_threads()

    def wake_once_asleep(fmas):
        """The first answer once the workers have had time to fall asleep (a worker that the
        OS has not run for 50 ms may still count as spinning: wait longer)."""
        for _ in range(20):
            time.sleep(0.05)
            if wake(fmas):
                return 1
        return 0
    try:
        mlpfast.set_num_threads(2)
        gemm.gemm_c(*operands(np.random.default_rng(0), 256, 256, 256, False, False,
                              np.float32))                   # the workers exist
        for fmas in (low, (low + high) / 2, high - 1):
            answers = []                 # (woke them, woke them again at once); a caller
            for _ in range(10):          # kept off the CPU past their spinning may retry
                answers.append((wake_once_asleep(float(fmas)), wake(float(fmas))))
                if answers[-1] == (1, 0):
                    break
            assert answers[-1] == (1, 0), (fmas, answers)
        for fmas in (low - 1, high, 1e12):
            time.sleep(0.05)
            assert wake(float(fmas)) == 0, fmas
        mlpfast.set_num_threads(1)
        assert wake_once_asleep(float(low)) == 0
    finally:
        mlpfast.set_num_threads(before)


_ONE_CPU_WAKES = """
import os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})    # the caller and its workers
import mlpfast                                               # share one CPU
from mlpfast import _cgemm
mlpfast.set_num_threads(2)
fmas = float(sys.argv[1])
answers = []
for _ in range(20):
    time.sleep(0.01)
    answers.append((_cgemm.lib.mlpf_wake_threads(fmas), _cgemm.lib.mlpf_wake_threads(fmas)))
print("ok" if answers.count((1, 0)) >= 10 else answers)    # 20 of 20 here; 0 without
"""                                                             # the yield, [(1, 1)] x 20


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_woken_worker_on_the_callers_cpu_lets_the_caller_run():
    """The kernel may wake a worker on the caller's CPU. It then spins there after its job,
    and unless it yields, the caller runs only once it has gone back to sleep: each wake
    finds the pool asleep again. Pinned to one CPU, a wake must leave it awake (at least
    half the time: other processes on that CPU may delay the caller)."""
    import subprocess
    import sys
    from mlpfast.kernels.cpu_config import THRESHOLDS
    out = subprocess.run([sys.executable, "-c", _ONE_CPU_WAKES,
                          str(THRESHOLDS["min_parallel_fmas_awake"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout + out.stderr)[-2000:]


def test_gil_released_during_call(rng):
    # While one Python thread is inside a long C call, another keeps running Python code.
    a, b = operands(rng, 1500, 1500, 1500, False, False, np.float32)
    window = {}

    def call():
        window["start"] = time.perf_counter()
        gemm.gemm_c(a, b)
        window["end"] = time.perf_counter()

    worker = threading.Thread(target=call)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    inside = [t for t in ticks if window["start"] < t < window["end"]]
    assert window["end"] - window["start"] > 0.005
    assert len(inside) > 100, f"{len(inside)} ticks of the other thread during the C call"


def test_concurrent_callers_share_the_pool(threads, rng):
    cases = [operands(rng, 200, 150, 170 + i, False, i % 2 == 1, np.float32) for i in range(4)]
    results = [None] * len(cases)

    def run(i):
        for _ in range(5):
            results[i] = gemm.gemm_c(*cases[i], trans_b=i % 2 == 1)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for i, (a, b) in enumerate(cases):
        assert_close(results[i], reference(a, b, False, i % 2 == 1), tol=tol(np.float32, 173))


# At least pass_min_parallel_asleep items, so that the passes run on every thread whether
# or not the workers sleep; neither a multiple of 16 nor of a chunk.
PASS_SIZES = [(1 << 20) + 37, 3 * (1 << 19) + 5]


def c_passes(n, rng_seed=0):
    """Adam (two steps), SGD with Nesterov momentum (two steps), the gather of n rows and
    dropout with its mask, by the C library on the threads set now: their outputs."""
    from mlpfast.kernels._c_library import c_library
    ffi, lib = c_library().ffi, c_library().lib
    rng = np.random.default_rng(rng_seed)
    f32 = lambda a: ffi.from_buffer("float[]", a)
    p, m, v = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    q, buf = p.copy(), np.zeros(n, np.float32)
    for step in (1, 2):
        g = rng.standard_normal(n).astype(np.float32)
        assert lib.mlpf_sadam(f32(p), f32(g), f32(m), f32(v), n, 0.01 / (1 - 0.9 ** step), 0.9,
                              0.999, (1 - 0.999 ** step) ** -0.5, 1e-8, 0.01, 1.0) == 0
        assert lib.mlpf_ssgd(f32(q), f32(g), f32(buf), n, 0.01, 0.9, 1, 0.01, step == 1) == 0
    cols = 7
    src = rng.standard_normal((n // cols + 3, cols)).astype(np.float32)
    index = rng.integers(0, src.shape[0], n // cols)
    rows = np.empty((index.size, cols), np.float32)
    assert lib.mlpf_sgather(f32(src), src.shape[0], cols, cols, ffi.from_buffer("int64_t[]", index),
                            index.size, f32(rows)) == 0
    np.testing.assert_array_equal(rows, src[index])
    dropped, keep = np.empty_like(rows), np.empty(rows.shape, np.uint8)
    assert lib.mlpf_sdropout(f32(rows), f32(dropped), ffi.from_buffer("uint8_t[]", keep),
                             rows.shape[0], cols, 1 << 31, 5, 6, 1, 2, 0, 2.0) == 0
    return {"adam p": p, "adam m": m, "adam v": v, "sgd p": q, "sgd buf": buf,
            "dropout": dropped, "keep": keep}


def reference_updates(n, rng_seed=0):
    """The Adam and SGD of ``c_passes`` by kernels/optim.py's NumPy references, in float64
    from the same draws."""
    from mlpfast.kernels import optim
    rng = np.random.default_rng(rng_seed)
    p = rng.standard_normal(n).astype(np.float32).astype(np.float64)
    m, v, q, buf = np.zeros(n), np.zeros(n), p.copy(), np.zeros(n)
    for step in (1, 2):
        g = rng.standard_normal(n).astype(np.float32).astype(np.float64)
        optim.adam_ref(p, g, m, v, step=step, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.01)
        optim.sgd_ref(q, g, buf, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01,
                      first_step=step == 1)
    return {"adam p": p, "adam m": m, "adam v": v, "sgd p": q, "sgd buf": buf}


@pytest.mark.parametrize("n", PASS_SIZES)
def test_passes_give_the_same_bits_on_any_thread_count(n):
    """Each thread takes its share, then helps with the others' (moving shares): every item
    must be updated exactly once, whoever takes it. An item done twice or never would
    differ from the one-thread run. 3 and 4 threads on fewer cores have threads
    descheduled mid-pass, whose shares the others finish."""
    previous = mlpfast.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2, 3, 4):
            mlpfast.set_num_threads(threads)
            runs[threads] = c_passes(n)
    finally:
        mlpfast.set_num_threads(previous)
    for threads in (2, 3, 4):
        for name, values in runs[1].items():
            assert np.array_equal(runs[threads][name], values), (threads, name)
    for name, expected in reference_updates(n).items():
        assert_close(runs[1][name], expected, np.float32, what=name)
    kept = runs[1]["keep"].astype(bool)
    assert 0.45 < kept.mean() < 0.55                   # p = 1/2
    rows = runs[1]["dropout"]
    assert np.all(rows[~kept] == 0) and np.all(rows[kept] != 0)


def test_a_pass_run_alone_while_the_pool_is_busy_takes_every_share(rng):
    """A long GEMM owns the pool; an Adam call made meanwhile runs on its own thread alone
    (the trace says 1 thread), and must then do the shares of every thread it was cut for."""
    from mlpfast.benchmarks.pool_trace import PoolTrace
    n = PASS_SIZES[0]
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(2)
    try:
        expected = c_passes(n)
        a = rng.standard_normal((3072, 3072)).astype(np.float32)
        started = threading.Event()

        def long_gemm():
            started.set()
            gemm.gemm_c(a, a)

        owner = threading.Thread(target=long_gemm)
        with PoolTrace() as trace:
            owner.start()
            try:
                started.wait()
                time.sleep(0.05)
                alone = c_passes(n)
            finally:
                owner.join()
    finally:
        mlpfast.set_num_threads(previous)
    adam = [job for job in trace.jobs if job.task == "adam_task"]
    assert [job.threads for job in adam] == [1, 1], trace.jobs
    for name, values in expected.items():
        assert np.array_equal(alone[name], values), name


def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_alternating_with_numba_parallel_kernels(rng):
    numba = pytest.importorskip("numba")

    @numba.njit(parallel=True)
    def scaled_row_sums(x, out):
        for i in numba.prange(x.shape[0]):
            out[i] = 2.0 * x[i].sum()

    x = rng.standard_normal((400, 300)).astype(np.float32)
    sums = np.empty(400, np.float32)
    a, b = operands(rng, 256, 256, 256, False, True, np.float32)
    before = mlpfast.get_num_threads()
    try:
        counts = []
        for n in (2, 1, 2, 2, 1, 2):
            mlpfast.set_num_threads(n)
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # as the numba
            scaled_row_sums(x, sums)                                         # kernels do
            assert_close(sums, 2.0 * x.astype(np.float64).sum(axis=1), tol=(1e-3, 1e-5))
            c = gemm.gemm_c(a, b, trans_b=True)
            assert_close(c, reference(a, b, False, True), tol=tol(np.float32, 256))
            counts.append(_os_threads())
        # both pools are persistent: no thread is started per call
        assert counts[-1] == counts[2], counts
    finally:
        mlpfast.set_num_threads(before)


def _gemm_in_child(queue):
    a = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    mlpfast.set_num_threads(2)
    c = gemm.gemm_c(a, a)
    queue.put(float(np.abs(c - a.astype(np.float64) @ a).max()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_pool_works_after_fork(rng):
    mlpfast.set_num_threads(2)
    a, b = operands(rng, 300, 300, 300, False, False, np.float32)
    gemm.gemm_c(a, b)                         # the parent's pool is running
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_gemm_in_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0, "child hung or crashed"
    assert queue.get(timeout=5) < 1e-3


def test_env_selects_kernel():
    import subprocess
    import sys
    code = "from mlpfast.kernels import gemm; print(gemm.c_kernel_name())"
    env = dict(os.environ, MLPFAST_GEMM_KERNEL="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "sgemm_portable_4x8", out.stderr
    env["MLPFAST_GEMM_KERNEL"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "MLPFAST_GEMM_KERNEL: kernel must be" in out.stderr


CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def load_build_cgemm():
    """csrc/build_cgemm.py as a module (its sources, config header and cffi builder)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_cgemm",
                                                  os.path.join(CSRC, "build_cgemm.py"))
    build_cgemm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_cgemm)
    return build_cgemm


def library_sources(tmp_path):
    """The C library's source paths, with its generated cpu_config.h written to tmp_path
    (pass -I tmp_path): for drivers linked with the whole library."""
    build_cgemm = load_build_cgemm()
    (tmp_path / "cpu_config.h").write_text(build_cgemm.config_header())
    return [os.path.join(CSRC, name) for name in build_cgemm.SOURCES]


def test_portable_only_build_as_on_other_cpus(tmp_path, rng):
    # csrc/ compiled with -DMLPF_PORTABLE_ONLY: no x86 kernel exists, as on ARM or POWER
    import importlib.util
    build_cgemm = load_build_cgemm()
    builder = build_cgemm.make_builder("_cgemm_portable_only", [("MLPF_PORTABLE_ONLY", "1")])
    library = builder.compile(tmpdir=str(tmp_path))
    spec = importlib.util.spec_from_file_location("_cgemm_portable_only", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ffi, lib = module.ffi, module.lib
    assert ffi.string(lib.mlpf_kernel_name()) == b"sgemm_portable_4x8"
    assert lib.mlpf_set_kernel(b"avx512") != 0
    lib.mlpf_set_num_threads(2)
    for m, n, k in [(1, 1, 1), (37, 50, 300), (130, 70, 601)]:
        for trans_a, trans_b in TRANSPOSES:
            a, b = operands(rng, m, n, k, trans_a, trans_b, np.float32)
            c = np.full((m, n), np.nan, np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            rc = lib.mlpf_sgemm(trans_a, trans_b, m, n, k, 1.0, ffi.from_buffer("float[]", a),
                                a.shape[1], ffi.from_buffer("float[]", b), b.shape[1], 0.0,
                                ffi.from_buffer("float[]", c), n, ffi.from_buffer("float[]", bias), 1)
            assert rc == 0
            assert_close(c, reference(a, b, trans_a, trans_b, bias=bias, relu=True),
                         tol=tol(np.float32, k), what=f"portable-only {m}x{n}x{k}")
    check_c_dropout(ffi, lib, rng)                       # the loop without AVX-512
    check_c_dropout_ties(ffi, lib, rng)
    check_sum_squares(ffi, lib, rng)


# Two callers share the pool (gemm.h: the functions are thread-safe). After a barrier,
# one's GEMM starts the pool's worker while the other's short passes ask mlpf_pool_awake
# whether the workers spin; then both run the pooled entry points at once. C = A B of
# ones is K exactly, and so are dW and db of a 16-row weight gradient.
_RACE_DRIVER = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "gemm.h"
enum { M = 128, N = 128, K = 512, P = (1 << 20) + 37, ROWS = 64, WIDE = 1024 };
static pthread_barrier_t start;

static float *filled(int64_t n, float value)
{
    float *x;
    if (posix_memalign((void **)&x, 64, (size_t)n * sizeof *x)) abort();
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return x;
}

static void *caller(void *arg)
{
    const int grows = arg != NULL;
    float *a = filled(M * K, 1), *b = filled(K * N, 1), *c = filled(M * N, 0);
    float *p = filled(P, 1), *g = filled(P, 0.5f), *m = filled(P, 0), *v = filled(P, 0);
    float *dw = filled(M * N, 0), *db = filled(M, 0), *out = filled(ROWS * K, 0);
    float *dh = filled(ROWS * K, 0), *dwn = filled(10 * K, 0), *dbn = filled(10, 0);
    const int64_t capacity = mlpf_packed_b_floats(ROWS, K);
    float *packed = filled(capacity, 0);
    uint16_t *cb = (uint16_t *)filled(M * N, 0);
    float *dz16 = filled(K * 16, 1), *h_wide = filled(K * WIDE, 1);
    float *dw_wide = filled(16 * WIDE, 0), *db16 = filled(16, 0);
    int64_t index[ROWS];
    for (int i = 0; i < ROWS; i++) index[i] = (i * 7) % M;
    double squares;
    int bad = 0;
    pthread_barrier_wait(&start);
    if (grows) bad |= mlpf_sgemm(0, 0, M, N, K, 1, a, K, b, N, 0, c, N, NULL, 0);
    else
        for (int i = 0; i < 2000; i++) bad |= mlpf_ssum_squares(p, 64) != 64;
    for (int it = 0; it < 3; it++) {
        bad |= mlpf_sgemm(0, 1, M, N, K, 1, a, K, b, K, 0, c, N, NULL, 1);
        for (int i = 0; i < M * N; i++) bad |= c[i] != K;
        bad |= mlpf_sgemm_weight_grad(M, N, K, a, M, b, N, NULL, dw, N, db, &squares);
        /* 16 rows: the threads split only columns, sharing the one A block (and its sums) */
        bad |= mlpf_sgemm_weight_grad(16, WIDE, K, dz16, 16, h_wide, WIDE, NULL, dw_wide, WIDE,
                                      db16, &squares);
        for (int i = 0; i < 16 * WIDE; i++) bad |= dw_wide[i] != K;
        for (int i = 0; i < 16; i++) bad |= db16[i] != K;
        bad |= mlpf_sadam(p, g, m, v, P, 1e-3f, 0.9, 0.999, 1, 1e-8f, 0, 1);
        bad |= mlpf_ssgd(p, g, m, P, 0.1f, 0.9f, 0, 0, it == 0);
        bad |= mlpf_sdropout(p, p, NULL, 1024, 1024, 1u << 31, 1, 2, 3, it, 0, 2);
        bad |= mlpf_sgather_packed(a, M, K, K, index, ROWS, out, packed, capacity);
        bad |= mlpf_sgemm_packed_a(1, ROWS, N, K, 1, packed, b, K, 0, c, N, NULL, 0);
        bad |= mlpf_sbgemm(0, 0, M, N, K, 1, a, MLPF_TYPE_F32, K, b, MLPF_TYPE_F32, N, 0, cb,
                           MLPF_TYPE_BF16, N, NULL, 0);
        bad |= mlpf_snarrow_backward(ROWS, 10, K, a, 10, b, K, a, K, dh, K, dwn, K, dbn,
                                     MLPF_ACT_RELU, &squares);
    }
    return (void *)(intptr_t)(bad != 0);
}

int main(void)
{
    mlpf_set_num_threads(2);
    pthread_barrier_init(&start, NULL, 2);
    pthread_t threads[2];
    void *bad[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, caller, (void *)(intptr_t)(i == 0));
    for (int i = 0; i < 2; i++) pthread_join(threads[i], &bad[i]);
    puts(bad[0] || bad[1] ? "wrong" : "ok");
    return bad[0] || bad[1];
}
"""


def test_the_pool_has_no_data_race_under_thread_sanitizer(tmp_path):
    # csrc/ and _RACE_DRIVER under ThreadSanitizer: it reports any unsynchronized pair of
    # accesses
    run_sanitized_driver(tmp_path, _RACE_DRIVER, "thread", {"TSAN_OPTIONS": "halt_on_error=1"},
                         timeout=600)


def run_sanitized_driver(tmp_path, source, sanitizer, options, timeout):
    """run_portable_driver for ``source``, the driver and the whole library built with
    -fsanitize=<sanitizer> too (portable-only: ifunc resolvers run before the sanitizer
    starts), its options (e.g. {"TSAN_OPTIONS": "halt_on_error=1"}) in the environment.
    Skipped where gcc cannot build or run such a program."""
    import subprocess
    gcc = gcc_or_skip()
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    sanitize = [f"-fsanitize={sanitizer}", "-g"]
    if subprocess.run([gcc, *sanitize, "-O1", "-std=gnu11", "-pthread", str(probe), "-o",
                       str(tmp_path / "probe")],
                      capture_output=True).returncode or subprocess.run(
                          [str(tmp_path / "probe")], capture_output=True).returncode:
        pytest.skip(f"no working gcc -fsanitize={sanitizer} here")
    env = dict(os.environ, **options)
    env.pop("LD_PRELOAD", None)
    run_portable_driver(tmp_path, source, flags=sanitize, env=env, timeout=timeout)


def gcc_or_skip():
    """The path of gcc; the test is skipped where there is none."""
    import shutil
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("no gcc here")
    return gcc


def run_portable_driver(tmp_path, source, includes=None, flags=(), env=None, timeout=120):
    """run_c_driver for ``source`` linked with the library built portable-only at -O1, with
    ``flags`` added; ``includes``: the library file that the driver #includes (for its
    static functions), left out of the link."""
    sources = [s for s in library_sources(tmp_path) if os.path.basename(s) != includes]
    run_c_driver(tmp_path, gcc_or_skip(), source,
                 [*flags, "-O1", "-std=gnu11", "-pthread", "-fno-math-errno",
                  "-DMLPF_PORTABLE_ONLY=1", f"-I{CSRC}", f"-I{tmp_path}"], sources,
                 libs=["-lm"], env=env, timeout=timeout)


def run_c_driver(tmp_path, gcc, source, flags, sources, libs=(), env=None, timeout=300):
    """Builds ``source`` (a C main) with ``sources`` into tmp_path/driver and runs it: it
    must exit 0 printing "ok"."""
    import subprocess
    (tmp_path / "driver.c").write_text(source)
    built = subprocess.run([gcc, *flags, *sources, str(tmp_path / "driver.c"), *libs, "-o",
                            str(tmp_path / "driver")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    done = subprocess.run([str(tmp_path / "driver")], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stdout + done.stderr[-6000:]


# Jobs of n threads after jobs of more: the pool's surplus workers (started by a wider
# job) must sit out, so each job runs its task exactly once on each index 0..n-1 and
# tells every call n.
_POOL_INDEX_DRIVER = r"""
#include <stdatomic.h>
#include <stdio.h>
#include "threadpool.h"

static atomic_int seen[MLPF_POOL_MAX_THREADS + 1];
static atomic_int wrong_count;

static void record(void *arg, int index, int threads)
{
    if (index < 0 || index > MLPF_POOL_MAX_THREADS || threads != *(const int *)arg) {
        atomic_fetch_add(&wrong_count, 1);
        return;
    }
    atomic_fetch_add(&seen[index], 1);
}

int main(void)
{
    static const int sizes[] = {4, 2, 3, 1, 4, 2, 4, 3};
    int bad = 0;
    for (int round = 0; round < 200; round++)
        for (unsigned j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            int n = sizes[j];
            for (int i = 0; i <= MLPF_POOL_MAX_THREADS; i++) atomic_store(&seen[i], 0);
            bad |= mlpf_pool_run(n, record, &n) != n;
            for (int i = 0; i <= MLPF_POOL_MAX_THREADS; i++)
                bad |= atomic_load(&seen[i]) != (i < n);
        }
    bad |= atomic_load(&wrong_count) != 0;
    puts(bad ? "wrong" : "ok");
    return bad;
}
"""


def test_a_job_runs_each_of_its_thread_indices_once(tmp_path):
    run_c_driver(tmp_path, gcc_or_skip(), _POOL_INDEX_DRIVER, ["-O1", "-std=gnu11", "-pthread", f"-I{CSRC}"],
                 [os.path.join(CSRC, "threadpool.c")])


# The pool's hard moments, made to happen every run: the driver is linked with --wrap, so
# that the pool's pthread_create can fail or hold the caller up after a thread's start, its
# pthread_cond_broadcast can hold the caller up after it published a job, and its
# pthread_cond_wait can hold a worker up (sleep lock held) between its last look at the
# job generation and its wait. Then: threads that cannot start (the job runs on those that
# exist, a wake wakes no one), a caller that must wait for its slowest worker, a job
# published just as a worker goes to sleep (a lost wake-up hangs: alarm), a job that
# spinning workers finish before its broadcast returns, a fork child whose first worker
# starts while the parent's last job is still in the pool's fields, the trace of a job
# whose last worker is slow, and a job asked for more than MLPF_POOL_MAX_THREADS threads.
_POOL_EDGES_DRIVER = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "gemm.h"
#include "threadpool.h"

/* Linked with --wrap: the pool's calls reach these, which can fail a thread's start,
 * hold the caller up after a start or before its broadcast, and hold a worker up between
 * its last look at the job generation and its wait (with the sleep lock held). */
int __real_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
int __real_pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *);
static atomic_int starts_allowed = 1 << 30, start_pause_ms, wait_pause_ms, in_wait_pause;

static void pause_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, ms % 1000 * 1000000L}, NULL);
}

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*f)(void *), void *arg)
{
    if (atomic_fetch_sub(&starts_allowed, 1) <= 0) return EAGAIN;
    int failed = __real_pthread_create(t, attr, f, arg);
    pause_ms(atomic_load(&start_pause_ms));
    return failed;
}

int __real_pthread_cond_broadcast(pthread_cond_t *);
static atomic_int broadcast_pause_ms;

int __wrap_pthread_cond_broadcast(pthread_cond_t *cond)
{
    pause_ms(atomic_load(&broadcast_pause_ms));
    return __real_pthread_cond_broadcast(cond);
}

int __wrap_pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *lock)
{
    const int ms = atomic_load(&wait_pause_ms);
    if (ms) {
        atomic_store(&in_wait_pause, 1);
        pause_ms(ms);
    }
    return __real_pthread_cond_wait(cond, lock);
}

static atomic_int seen[MLPF_POOL_MAX_THREADS + 1], wrong;
typedef struct { int threads, slow_index; } job;

static void record(void *arg, int index, int threads)
{
    const job *j = arg;
    if (index == j->slow_index) pause_ms(10);
    if (index < 0 || index >= j->threads || threads != j->threads) atomic_fetch_add(&wrong, 1);
    else atomic_fetch_add(&seen[index], 1);
}

/* Runs a job asked for `asked` threads that must run on `expected`: returns 1 if wrong. */
static int run_job(int asked, int expected, int slow_index, const char *what)
{
    job j = {expected, slow_index};
    for (int i = 0; i <= MLPF_POOL_MAX_THREADS; i++) atomic_store(&seen[i], 0);
    atomic_store(&wrong, 0);
    int bad = mlpf_pool_run(asked, record, &j) != expected || atomic_load(&wrong) != 0;
    for (int i = 0; i <= MLPF_POOL_MAX_THREADS; i++) bad |= atomic_load(&seen[i]) != (i < expected);
    if (bad) printf("wrong: %s\n", what);
    return bad;
}

int main(void)
{
    alarm(30);                                  /* a lost wake-up hangs: end it */
    int bad = 0;
    atomic_store(&starts_allowed, 0);
    bad |= run_job(3, 1, -1, "no thread can start: the caller runs the job alone");
    if (mlpf_pool_wake(3) != 0) {       /* it ran its empty job alone: it woke no one */
        puts("wrong: a wake with no thread to start says it woke the workers");
        bad = 1;
    }
    atomic_store(&starts_allowed, 1);
    bad |= run_job(4, 2, -1, "one thread of three starts: the job runs on two");
    atomic_store(&starts_allowed, 1 << 30);
    for (int n = 2; n <= 4; n++)
        bad |= run_job(n, n, n - 1, "the caller waits for the slowest worker");
    atomic_store(&wait_pause_ms, 20);
    for (int round = 0; round < 3; round++) {
        atomic_store(&in_wait_pause, 0);
        bad |= run_job(4, 4, -1, "a job wakes every worker");    /* each sleeps after it */
        while (!atomic_load(&in_wait_pause)) pause_ms(1);   /* a worker about to sleep */
        bad |= run_job(4, 4, -1, "a job published as a worker goes to sleep wakes it");
    }
    atomic_store(&wait_pause_ms, 0);
    atomic_store(&broadcast_pause_ms, 5);   /* workers still spinning from the last job */
    for (int round = 0; round < 3; round++)     /* see it first: the counts must be set */
        bad |= run_job(4, 4, -1, "a job that spinning workers finish before its broadcast");
    atomic_store(&broadcast_pause_ms, 0);
    pid_t child = fork();
    if (child == 0) {          /* the child's first worker starts with a stale generation */
        atomic_store(&start_pause_ms, 50);
        const int wrong_in_child = run_job(2, 2, -1, "after fork, a new worker runs only "
                                                     "the child's job");
        fflush(stdout);
        _exit(wrong_in_child);
    }
    int status;
    bad |= waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status);
    mlpf_pool_event event;              /* the trace's last done is the slowest worker's */
    bad |= mlpf_pool_trace_start(4) != MLPF_OK || run_job(3, 3, 2, "a traced job");
    if (mlpf_pool_trace_stop(&event, 1) != 1 || event.threads != 3 ||
        event.last_done_us - event.start_us < 10000 ||
        event.last_done_us - event.first_done_us < 5000) {
        puts("wrong: the trace of a job whose last worker is slow");
        bad = 1;
    }
    bad |= run_job(MLPF_POOL_MAX_THREADS + 44, MLPF_POOL_MAX_THREADS, -1,
                   "a job asked for too many threads runs on MLPF_POOL_MAX_THREADS");
    puts(bad ? "wrong" : "ok");
    return bad;
}
"""


def test_the_pool_through_failed_starts_late_workers_sleep_races_and_fork(tmp_path):
    import shutil
    import sys
    gcc = shutil.which("gcc")
    if not gcc or not sys.platform.startswith("linux"):
        pytest.skip("needs gcc and GNU ld (--wrap)")
    wrapped = ",".join(f"--wrap=pthread_{name}"
                       for name in ("create", "cond_wait", "cond_broadcast"))
    run_c_driver(tmp_path, gcc, _POOL_EDGES_DRIVER,
                 ["-O1", "-std=gnu11", "-pthread", f"-I{CSRC}", f"-Wl,{wrapped}"],
                 [os.path.join(CSRC, "threadpool.c")], timeout=120)


# The thread count a call takes depends on whether the pool's workers are awake: a GEMM of
# fmas multiply-adds runs on one thread below min_parallel_fmas while they sleep and below
# the lower min_parallel_fmas_awake while they spin or work; a pass of n items below
# pass_min_parallel_asleep or pass_min_parallel. Both states are held here, not hoped for:
# the worker is awake while it runs a job that ends only after the caller's share has
# asked, and asleep once mlpf_pool_awake() says so, since nothing else calls the pool.
_THRESHOLDS_DRIVER = r"""
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include "gemm.h"
#include "gemm_driver.h"
#include "gemm_kernels.h"
#include "threadpool.h"

typedef struct { double fmas; int64_t items; int gemm_threads, pass_threads; } ask;
static atomic_int worker_in, caller_done;

/* Thread 1 works until thread 0 has asked how many threads a GEMM and a pass would take. */
static void ask_while_the_worker_works(void *arg, int index, int threads)
{
    ask *q = arg;
    (void)threads;
    if (index == 1) {
        atomic_store(&worker_in, 1);
        while (!atomic_load(&caller_done)) sched_yield();
        return;
    }
    while (!atomic_load(&worker_in)) sched_yield();
    q->gemm_threads = mlpf_threads_for(q->fmas);
    q->pass_threads = mlpf_pass_threads(q->items);
    atomic_store(&caller_done, 1);
}

static int check(const char *what, int got, int want)
{
    if (got == want) return 0;
    printf("wrong: %s takes %d threads, not %d\n", what, got, want);
    return 1;
}

int main(void)
{
    mlpf_set_num_threads(2);
    const char *family = "portable";
    const double gemm_awake = mlpf_config_value(family, "min_parallel_fmas_awake"),
                 gemm_asleep = mlpf_config_value(family, "min_parallel_fmas");
    const int64_t pass_awake = mlpf_config_value(family, "pass_min_parallel"),
                  pass_asleep = mlpf_config_value(family, "pass_min_parallel_asleep");
    if (!(gemm_awake < gemm_asleep && pass_awake < pass_asleep)) {
        puts("wrong: each threshold while awake must be below its threshold while asleep");
        return 1;
    }
    int bad = 0;
    const struct { double fmas; int64_t items; int awake, asleep; } cases[] = {
        {gemm_awake - 1, pass_awake - 1, 1, 1},          /* below both: one thread */
        {gemm_awake, pass_awake, 2, 1},                  /* between: two only while awake */
        {gemm_asleep - 1, pass_asleep - 1, 2, 1},
        {gemm_asleep, pass_asleep, 2, 2},                /* at the upper one: always two */
    };
    for (int i = 0; i < 4; i++) {
        ask q = {cases[i].fmas, cases[i].items, 0, 0};
        atomic_store(&worker_in, 0);
        atomic_store(&caller_done, 0);
        if (mlpf_pool_run(2, ask_while_the_worker_works, &q) != 2) {
            puts("wrong: the job did not run on two threads");
            return 1;
        }
        bad |= check("a GEMM while the worker works", q.gemm_threads, cases[i].awake);
        bad |= check("a pass while the worker works", q.pass_threads, cases[i].awake);
        for (int ms = 0; mlpf_pool_awake(); ms++) {     /* it sleeps after 200 us of spin */
            if (ms == 10000) {
                puts("wrong: the worker never went to sleep");
                return 1;
            }
            nanosleep(&(struct timespec){0, 1000000L}, NULL);
        }
        bad |= check("a GEMM while the worker sleeps", mlpf_threads_for(cases[i].fmas),
                     cases[i].asleep);
        bad |= check("a pass while the worker sleeps", mlpf_pass_threads(cases[i].items),
                     cases[i].asleep);
    }
    puts(bad ? "wrong" : "ok");
    return bad;
}
"""


def test_the_thread_thresholds_follow_whether_the_workers_are_awake(tmp_path):
    run_portable_driver(tmp_path, _THRESHOLDS_DRIVER)


_GUARD_SCRIPT = r"""
from mlpfast.kernels import gemm

kernel = sys.argv[1]
gemm.set_c_kernel(kernel)
for m, n, k in [(5, 3, 7), (13, 37, 29), (1, 1, 1), (17, 20, 33)]:
    for ta in (False, True):
        for tb in (False, True):
            a = at_page_end((k, m) if ta else (m, k))
            b = at_page_end((n, k) if tb else (k, n))
            a[...], b[...] = (np.random.default_rng(0).standard_normal(x.shape) for x in (a, b))
            out = gemm.gemm_c(a, b, trans_a=ta, trans_b=tb)
            ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
            assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), (m, n, k, ta, tb)
print("ok")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux mprotect")
def test_no_read_past_the_operands(kernel):
    # A and B end right before an unreadable page: a read past them crashes the child
    run_guarded(_GUARD_SCRIPT, kernel)


_GUARD_EPILOGUE_SCRIPT = r"""
from mlpfast.kernels import gemm

gemm.set_c_kernel(sys.argv[1])
rng = np.random.default_rng(0)
# n cuts the last tile of every kernel (32, 16, 8 columns) at 5, 1 and 17 columns, m the last
# row tile; n = 10 with B transposed takes the narrow products
for m, n, k, tb in [(13, 37, 29, False), (5, 17, 3, False), (25, 49, 17, True), (7, 10, 40, True)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    product = a.astype(np.float64) @ (b.T if tb else b)
    bias, out = at_page_end((n,)), at_page_end((m, n))
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    bias[...], out[...] = rng.standard_normal(n), c0
    gemm.gemm_c_fused(a, b, out, False, tb, 1.0, 0.5, bias, 1)
    want = np.maximum(product + 0.5 * c0 + bias, 0)
    assert np.abs(out - want).max() < 1e-4 * max(1.0, np.abs(want).max()), ("gemm", m, n, k)
    if not tb:
        y, out = at_page_end((m, n)), at_page_end((m, n))
        y[...] = rng.random((m, n))
        gemm.gemm_c_dact(a, b, out, y, 2)
        want = product * y * (1 - y)
        assert np.abs(out - want).max() < 1e-4 * max(1.0, np.abs(want).max()), ("dact", m, n, k)
print("ok")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux mprotect")
def test_no_read_past_the_epilogue_operands(kernel):
    # bias (n values), C (read with beta != 0, and written) and the derivative's Y end right
    # before an unreadable page: an edge tile's loads of them that went past n (a mask or
    # a width that is the full tile's) crash the child
    run_guarded(_GUARD_EPILOGUE_SCRIPT, kernel)


DACT = {"relu": (1, lambda y: (y > 0).astype(np.float64)), "sigmoid": (2, lambda y: y * (1 - y)),
        "tanh": (3, lambda y: 1 - y * y)}


@pytest.mark.parametrize("name", list(DACT))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (13, 37, 29), (25, 65, 17), (131, 97, 601),
                                   (64, 784, 128)])
def test_derivative_epilogue_every_kernel(kernel, threads, name, dtype, m, n, k, rng):
    # mlpf_sgemm_dact / mlpf_dgemm_dact: C = (A @ B) * f'(Y), tiles and edge tiles alike
    code, derivative = DACT[name]
    a, b = operands(rng, m, n, k, False, False, dtype)
    y = rng.random((m, n)).astype(dtype) - (0.3 if name == "relu" else 0.0)
    if name == "relu":                       # relu's outputs: many exact zeros, [0 > 0] = 0
        y[1::4] = 0.0
        y[2::4, ::2] = -0.0
    out = np.full((m, n), np.nan, dtype)
    gemm.gemm_c_dact(a, b, out, y, code)
    want = reference(a, b, False, False) * derivative(y.astype(np.float64))
    assert_close(out, want, tol=tol(dtype, k), what=f"{kernel} {name}")
    wide_y = np.full((m, n + 7), np.nan, dtype)          # y with its own row stride
    wide_y[:, 3:3 + n] = y
    out[...] = np.nan
    gemm.gemm_c_dact(a, b, out, wide_y[:, 3:3 + n], code)
    assert_close(out, want, tol=tol(dtype, k), what=f"{kernel} {name}, y strided")
    if name == "relu":                                   # [y > 0] is 0 for y NaN
        y[::2, ::3] = np.nan
        gemm.gemm_c_dact(a, b, out, y, code)
        assert_close(out, np.where(np.isnan(y), 0.0, want), tol=tol(dtype, k),
                     what=f"{kernel} relu, y NaN")


def test_derivative_epilogue_k0_and_bad_arguments():
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    a, b = np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)
    y = np.full((3, 4), 0.5, np.float32)
    out = np.full((3, 4), np.nan, np.float32)
    gemm.gemm_c_dact(a, b, out, y, 2)                    # k = 0: dz = 0 * f'(y) = 0
    assert np.array_equal(out, np.zeros((3, 4), np.float32))
    p = lambda x: ffi.from_buffer("float[]", x)  # noqa: E731
    a = np.ones((3, 2), np.float32)
    b = np.ones((2, 4), np.float32)
    assert lib.mlpf_sgemm_dact(0, 0, 3, 4, 2, 1.0, p(a), 2, p(b), 4, p(out), 4, p(y), 4, 0) == -3
    assert lib.mlpf_sgemm_dact(0, 0, 3, 4, 2, 1.0, p(a), 2, p(b), 4, p(out), 4, p(y), 3, 1) == -2
    assert lib.mlpf_sgemm_dact(0, 0, 3, 4, 2, 1.0, p(a), 2, p(b), 4, p(out), 4, ffi.NULL, 4,
                               1) == -5
    assert np.array_equal(out, np.zeros((3, 4), np.float32))   # rejected calls wrote nothing


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 10, 17), (7, 16, 33), (256, 10, 1024),
                                   (13, 5, 1000), (64, 11, 128)])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_narrow_products_every_kernel(kernel, threads, m, n, k, trans_a, trans_b, rng):
    # n <= 16 with B transposed (a classifier's logits h @ W.T): dot products along k on
    # AVX-512; bias, relu, alpha and beta as in every other path
    a, b = operands(rng, m, n, k, trans_a, trans_b, np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for alpha, beta, relu in ((1.0, 0.0, True), (0.5, 2.0, False)):
        out = c0.copy()
        gemm.gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, int(relu))
        want = reference(a, b, trans_a, trans_b, alpha, beta, c0, bias, relu)
        assert_close(out, want, tol=tol(np.float32, k), what=f"{kernel} {m}x{n}x{k} relu={relu}")


def test_narrow_products_split_rows_between_threads(kernel, rng):
    # A of 1027 x 1030 passes the narrow products' threshold for threads (a pass over 2^20
    # values) even while the workers sleep: 2 and 3 threads take bands of rows, the last
    # band short
    m, n, k = 1027, 10, 1030
    a, b = operands(rng, m, n, k, False, True, np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    want = reference(a, b, False, True, bias=bias, relu=True)
    for threads in (1, 2, 3):
        mlpfast.set_num_threads(threads)
        out = np.full((m, n), np.nan, np.float32)
        gemm.gemm_c_fused(a, b, out, False, True, 1.0, 0.0, bias, 1)
        assert_close(out, want, tol=tol(np.float32, k), what=f"{kernel} {threads} threads")


def test_gather_rows_and_its_index_check(threads, rng):
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    src = rng.standard_normal((1000, 300)).astype(np.float32)
    index = rng.integers(0, 1000, 257)
    out = np.full((257, 300), np.nan, np.float32)
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    assert lib.mlpf_sgather(p(src), 1000, 300, 300, p(index, "int64_t[]"), 257, p(out)) == 0
    assert np.array_equal(out, src[index])
    index[100] = 1000
    out[...] = 0
    assert lib.mlpf_sgather(p(src), 1000, 300, 300, p(index, "int64_t[]"), 257, p(out)) == -1
    assert (out == 0).all()                              # refused before copying anything


def test_weight_gradient_bias_sums_against_the_reference_on_1_and_2_threads(kernel, rng):
    """mlpf_sgemm_weight_grad: dw as mlpf_sgemm gives dz^T h, bit for bit, and db (the
    column sums of dz, from its packed panels) against the float64 reference, the same
    bits on 1 and 2 threads (the GEMM splits rows, or columns with every thread packing
    all of dz^T)."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    before = lib.mlpf_get_num_threads()
    try:
        for m, n, k in SHAPES + [(10, 128, 256), (256, 784, 256), (1024, 64, 800)]:
            dz, h = operands(rng, m, n, k, True, False, np.float32)
            sums = {}
            for threads in (1, 2):
                lib.mlpf_set_num_threads(threads)
                dw, db = np.full((m, n), np.nan, np.float32), np.full(m, np.nan, np.float32)
                squares = np.zeros(1)
                assert lib.mlpf_sgemm_weight_grad(m, n, k, p(dz), m, p(h), n, ffi.NULL, p(dw),
                                                  n, p(db), p(squares, "double[]")) == 0
                plain = np.empty((m, n), np.float32)
                assert lib.mlpf_sgemm(1, 0, m, n, k, 1.0, p(dz), m, p(h), n, 0.0, p(plain), n,
                                      ffi.NULL, 0) == 0
                assert np.array_equal(dw, plain), f"{kernel} {m}x{n}x{k}, {threads} threads"
                sums[threads] = db
            assert_close(sums[1], dz.astype(np.float64).sum(0), tol=tol(np.float32, k),
                         what=f"{kernel} column sums of dz {m}x{n}x{k}")
            assert np.array_equal(sums[1], sums[2])
    finally:
        lib.mlpf_set_num_threads(before)


def aligned_floats(count, fill=np.nan):
    """``count`` float32 values at a 64-byte aligned address, as a packed matrix needs."""
    spare = np.full(count + 16, fill, np.float32)
    start = (-spare.ctypes.data % 64) // 4
    return spare[start:start + count]


# (rows, cols) of a packed matrix: one row, edges of every run width (32, 16, 8), rows
# across k blocks of the layout (1,601 -> 816 + 785 at kc = 1024, six blocks at kc =
# 256), the MNIST batch of the step.
PACKED_SHAPES = [(1, 1), (13, 33), (96, 784), (300, 100), (1601, 45)]


def test_packed_matrix_as_a_and_as_b_against_the_reference(kernel, threads, rng):
    """mlpf_sgather_packed packs the gathered rows as mlpf_spack_b does (from x and from
    x stored transposed); mlpf_sgemm_packed_a (x W^T + bias, relu) and
    mlpf_sgemm_weight_grad (dz^T x, the column sums of dz) read it and agree with the
    float64 reference, and bit for bit with mlpf_sgemm on the unpacked x, which blocks k
    the same way."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    for rows, cols in PACKED_SHAPES:
        src = rng.standard_normal((rows + 5, cols)).astype(np.float32)
        index = rng.integers(0, rows + 5, rows)
        x = src[index]
        floats = lib.mlpf_packed_b_floats(rows, cols)
        packed, from_x, from_xt = (aligned_floats(floats) for _ in range(3))
        assert lib.mlpf_sgather_packed(p(src), rows + 5, cols, cols, p(index, "int64_t[]"), rows,
                                       ffi.NULL, p(packed), floats) == 0
        assert lib.mlpf_spack_b(0, rows, cols, p(x), cols, p(from_x), floats) == 0
        xt = np.ascontiguousarray(x.T)
        assert lib.mlpf_spack_b(1, rows, cols, p(xt), rows, p(from_xt), floats) == 0
        assert np.array_equal(packed.view(np.uint32), from_x.view(np.uint32))
        assert np.array_equal(packed.view(np.uint32), from_xt.view(np.uint32))
        for n in (1, 37, 256):
            w = rng.standard_normal((n, cols)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            forward = np.full((rows, n), np.nan, np.float32)
            assert lib.mlpf_sgemm_packed_a(1, rows, n, cols, 1.0, p(packed), p(w), cols, 0.0,
                                           p(forward), n, p(bias), 1) == 0
            want = reference(x, w, False, True, bias=bias, relu=True)
            assert_close(forward, want, tol=tol(np.float32, cols),
                         what=f"{kernel} x W^T {rows}x{n}x{cols}")
            if n > 16:                   # narrower: mlpf_sgemm sums along k in dot products
                plain = np.empty((rows, n), np.float32)
                assert lib.mlpf_sgemm(0, 1, rows, n, cols, 1.0, p(x), cols, p(w), cols, 0.0,
                                      p(plain), n, p(bias), 1) == 0
                assert np.array_equal(forward, plain)
            wt, again = np.ascontiguousarray(w.T), np.empty((rows, n), np.float32)
            assert lib.mlpf_sgemm_packed_a(0, rows, n, cols, 1.0, p(packed), p(wt), n, 0.0,
                                           p(again), n, p(bias), 1) == 0
            assert np.array_equal(again, forward)
            dz = rng.standard_normal((rows, n)).astype(np.float32)
            grad, plain = np.full((n, cols), np.nan, np.float32), np.empty((n, cols), np.float32)
            sums, squares = np.full(n, np.nan, np.float32), np.zeros(1)
            assert lib.mlpf_sgemm_weight_grad(n, cols, rows, p(dz), n, ffi.NULL, cols, p(packed),
                                              p(grad), cols, p(sums), p(squares, "double[]")) == 0
            assert_close(sums, dz.astype(np.float64).sum(0), tol=tol(np.float32, rows),
                         what=f"{kernel} column sums of dz {rows}x{n}")
            assert_close(grad, reference(dz, x, True, False), tol=tol(np.float32, rows),
                         what=f"{kernel} dz^T x {n}x{cols}x{rows}")
            assert lib.mlpf_sgemm(1, 0, n, cols, rows, 1.0, p(dz), n, p(x), cols, 0.0, p(plain),
                                  cols, ffi.NULL, 0) == 0
            assert np.array_equal(grad, plain)


def test_weight_gradient_with_bias_gradient_and_sum_of_squares(kernel, threads, rng):
    """mlpf_sgemm_weight_grad, h in rows and packed: dw as mlpf_sgemm gives dz^T h, bit
    for bit, db the same bits either way and against the float64 column sums of dz;
    *squares against the float64 sum of their squares; db NULL leaves the bias out; k = 0
    and n = 0."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    for rows, cols in PACKED_SHAPES + [(256, 1024)]:
        h = rng.standard_normal((rows, cols)).astype(np.float32)
        floats = lib.mlpf_packed_b_floats(rows, cols)
        packed = aligned_floats(floats)
        assert lib.mlpf_spack_b(0, rows, cols, p(h), cols, p(packed), floats) == 0
        for n in (1, 10, 37, 256):
            dz = rng.standard_normal((rows, n)).astype(np.float32)
            want_dw, want_db = np.empty((n, cols), np.float32), None
            assert lib.mlpf_sgemm(1, 0, n, cols, rows, 1.0, p(dz), n, p(h), cols, 0.0,
                                  p(want_dw), cols, ffi.NULL, 0) == 0
            for packed_h in (ffi.NULL, p(packed)):
                dw, db = np.full((n, cols), np.nan, np.float32), np.full(n, np.nan, np.float32)
                squares = np.full(1, np.nan)
                assert lib.mlpf_sgemm_weight_grad(n, cols, rows, p(dz), n, p(h), cols, packed_h,
                                                  p(dw), cols, p(db), p(squares, "double[]")) == 0
                if want_db is None:
                    assert_close(db, dz.astype(np.float64).sum(0), tol=tol(np.float32, rows),
                                 what=f"column sums of dz {rows}x{n}")
                    want_db = db
                    exact = (want_dw.astype(np.float64) ** 2).sum() + (
                        db.astype(np.float64) ** 2).sum()
                assert np.array_equal(dw, want_dw) and np.array_equal(db, want_db)
                assert squares[0] == pytest.approx(exact, rel=1e-5), f"{rows}x{cols}, {n}"
            assert lib.mlpf_sgemm_weight_grad(n, cols, rows, p(dz), n, p(h), cols, ffi.NULL,
                                              p(dw), cols, ffi.NULL, p(squares, "double[]")) == 0
            assert squares[0] == pytest.approx((want_dw.astype(np.float64) ** 2).sum(), rel=1e-5)
    dz, h = rng.standard_normal((5, 7)).astype(np.float32), np.ones((5, 3), np.float32)
    dw, db, squares = np.ones((7, 3), np.float32), np.ones(7, np.float32), np.ones(1)
    assert lib.mlpf_sgemm_weight_grad(7, 3, 0, p(dz), 7, p(h), 3, ffi.NULL, p(dw), 3, p(db),
                                      p(squares, "double[]")) == 0
    assert not dw.any() and not db.any() and squares[0] == 0.0
    assert lib.mlpf_sgemm_weight_grad(7, 0, 5, p(dz), 7, p(h), 1, ffi.NULL, p(dw), 1, p(db),
                                      p(squares, "double[]")) == 0
    np.testing.assert_allclose(db, dz.sum(0), rtol=1e-6)
    assert squares[0] == pytest.approx((db.astype(np.float64) ** 2).sum(), rel=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e19])
def test_weight_gradient_squares_are_not_finite_when_a_gradient_is_not(bad, threads, rng):
    """One value of dz that is NaN, inf, or finite with a square beyond float32 (3e19)
    makes *squares NaN or inf, wherever it sits: in a full tile, an edge tile, or a row of
    dz that only the bias gradient sums (h zero there)."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    rows, n, cols = 40, 29, 70
    h = rng.standard_normal((rows, cols)).astype(np.float32)
    h[-1] = 0.0
    for at in ((0, 0), (17, 13), (39, 28), (rows - 1, 5)):
        dz = rng.standard_normal((rows, n)).astype(np.float32)
        dz[at] = bad
        dw, db, squares = np.empty((n, cols), np.float32), np.empty(n, np.float32), np.zeros(1)
        with np.errstate(all="ignore"):
            assert lib.mlpf_sgemm_weight_grad(n, cols, rows, p(dz), n, p(h), cols, ffi.NULL,
                                              p(dw), cols, p(db), p(squares, "double[]")) == 0
        assert not np.isfinite(squares[0]), at


def test_weight_gradient_refusals_write_nothing(rng):
    """mlpf_sgemm_weight_grad refuses a missing squares pointer, a packed h of another
    shape or misaligned, and bad strides, with dw, db and *squares untouched."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    dz = rng.standard_normal((20, 30)).astype(np.float32)
    h = rng.standard_normal((20, 40)).astype(np.float32)
    floats = lib.mlpf_packed_b_floats(20, 40)
    packed = aligned_floats(floats + 16)
    assert lib.mlpf_spack_b(0, 20, 40, p(h), 40, p(packed), floats) == 0
    dw, db, squares = np.zeros((30, 40), np.float32), np.zeros(30, np.float32), np.zeros(1)
    s = p(squares, "double[]")
    assert lib.mlpf_sgemm_weight_grad(30, 40, 20, p(dz), 30, p(h), 40, ffi.NULL, p(dw), 40,
                                      p(db), ffi.NULL) == lib.MLPF_ERR_NULL
    assert lib.mlpf_sgemm_weight_grad(30, 40, 21, p(dz), 30, p(h), 40, p(packed), p(dw), 40,
                                      p(db), s) == lib.MLPF_ERR_SHAPE
    assert lib.mlpf_sgemm_weight_grad(30, 40, 20, p(dz), 30, p(h), 40, p(packed[1:]), p(dw), 40,
                                      p(db), s) == lib.MLPF_ERR_ALIGN
    assert lib.mlpf_sgemm_weight_grad(30, 40, 20, p(dz), 29, p(h), 40, ffi.NULL, p(dw), 40,
                                      p(db), s) == lib.MLPF_ERR_STRIDE
    assert lib.mlpf_sgemm_weight_grad(30, 40, 20, p(dz), 30, p(h), 40, ffi.NULL, p(dw), 39,
                                      p(db), s) == lib.MLPF_ERR_STRIDE
    assert not dw.any() and not db.any() and squares[0] == 0.0


# rows x n x k: one row, rows not a multiple of the 8-row blocks, k below, at and not a
# multiple of 16 (the vector columns) and split unevenly between threads, n from 1 to 16
NARROW_BACKWARD_SHAPES = [(1, 1, 1), (1, 3, 16), (5, 1, 17), (9, 16, 33), (37, 7, 45),
                          (64, 10, 128), (256, 10, 1024), (255, 16, 1000), (8, 2, 200)]
DACT_CODES = {"relu": 1, "sigmoid": 2, "tanh": 3}


def narrow_backward(lib, ffi, dz, w, h, dact, lds=None, with_bias=True):
    """mlpf_snarrow_backward into fresh NaN-filled outputs: (status, dh, dw, db, squares);
    lds: (ldz, ldw, ldh, lddh, lddw) of wider buffers, the values in their first columns."""
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    rows, n = dz.shape
    k = w.shape[1]
    ldz, ldw, ldh, lddh, lddw = lds or (n, k, k, k, k)
    wide = lambda a, ld: np.pad(a, ((0, 0), (0, ld - a.shape[1])), constant_values=np.nan)  # noqa: E731
    dzb, wb, hb = wide(dz, ldz), wide(w, ldw), wide(h, ldh)
    dh, dw = np.full((rows, lddh), np.nan, np.float32), np.full((n, lddw), np.nan, np.float32)
    db, squares = np.full(n, np.nan, np.float32), np.full(1, np.nan)
    status = lib.mlpf_snarrow_backward(rows, n, k, p(dzb), ldz, p(wb), ldw, p(hb), ldh, p(dh),
                                       lddh, p(dw), lddw, p(db) if with_bias else ffi.NULL,
                                       dact, p(squares, "double[]"))
    assert np.isnan(dh[:, k:]).all() and np.isnan(dw[:, k:]).all(), "wrote past k"
    return status, dh[:, :k], dw[:, :k], db, squares[0]


def narrow_backward_reference(dz, w, h, dact):
    """(dh, dw, db) in float64: (dz w) f'(h), dz^T h, dz's column sums."""
    dz64, w64, h64 = dz.astype(np.float64), w.astype(np.float64), h.astype(np.float64)
    derivative = {"relu": h64 > 0, "sigmoid": h64 * (1 - h64), "tanh": 1 - h64 ** 2}[dact]
    return (dz64 @ w64) * derivative, dz64.T @ h64, dz64.sum(0)


@pytest.mark.parametrize("dact", DACT_CODES)
@pytest.mark.parametrize("rows,n,k", NARROW_BACKWARD_SHAPES)
def test_narrow_backward_against_the_reference(threads, rows, n, k, dact, rng):
    """mlpf_snarrow_backward: dh, dw, db against float64, *squares against the float64 sum
    of the squares of dw and db; strided buffers give the same bits; relu's f' is 0 where
    h is NaN, as the reference's [h > 0]."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    dz = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if dact == "relu":
        h = np.maximum(rng.standard_normal((rows, k)), 0).astype(np.float32)
        h[rows // 2, k // 2] = np.nan
    else:
        h = rng.uniform(-1, 1, (rows, k)).astype(np.float32)
    status, dh, dw, db, squares = narrow_backward(lib, ffi, dz, w, h, DACT_CODES[dact])
    assert status == 0
    want_dh, want_dw, want_db = narrow_backward_reference(dz, w, h, dact)
    if dact == "relu":
        want_dh[rows // 2, k // 2] = 0.0
        dw_rows = np.isnan(want_dw)                    # the NaN's column of dw is NaN too
        assert np.isnan(dw[dw_rows]).all() and not np.isfinite(squares)
        want_dw[dw_rows], dw = 0.0, np.where(dw_rows, 0.0, dw)
    assert_close(dh, want_dh, tol=tol(np.float32, n), what=f"dh {rows}x{n}x{k} {dact}")
    assert_close(dw, want_dw, tol=tol(np.float32, rows), what=f"dw {rows}x{n}x{k} {dact}")
    assert_close(db, want_db, tol=tol(np.float32, rows), what=f"db {rows}x{n}")
    if dact != "relu":
        exact = (want_dw ** 2).sum() + (want_db ** 2).sum()
        assert squares == pytest.approx(exact, rel=1e-5)
        strided = narrow_backward(lib, ffi, dz, w, h, DACT_CODES[dact],
                                  lds=(n + 3, k + 5, k + 17, k + 1, k + 16))
        assert strided[0] == 0
        for got, want in zip(strided[1:4], (dh, dw, db)):
            assert np.array_equal(got, want)


def test_narrow_backward_gives_the_same_bits_on_every_thread_count(rng):
    """Each column of dw is summed by one thread in row order: 1 and 2 threads (and the
    pool asleep or awake) give the same dh, dw and db; without db, *squares leaves it out."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    dz = rng.standard_normal((256, 10)).astype(np.float32)
    w = rng.standard_normal((10, 1000)).astype(np.float32)
    h = np.maximum(rng.standard_normal((256, 1000)), 0).astype(np.float32)
    results, before = [], mlpfast.get_num_threads()
    try:
        for count in (1, 2):
            mlpfast.set_num_threads(count)
            results.append(narrow_backward(lib, ffi, dz, w, h, 1))      # the pool asleep
            lib.mlpf_wake_threads(1e12)
            results.append(narrow_backward(lib, ffi, dz, w, h, 1))      # awake: 2 threads
    finally:
        mlpfast.set_num_threads(before)
    for got in results[1:]:
        for a, b in zip(got[1:4], results[0][1:4]):
            assert np.array_equal(a, b)
    status, _, dw, _, squares = narrow_backward(lib, ffi, dz, w, h, 1, with_bias=False)
    assert status == 0
    assert squares == pytest.approx((dw.astype(np.float64) ** 2).sum(), rel=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e19])
def test_narrow_backward_squares_are_not_finite_when_a_gradient_is_not(bad, threads, rng):
    """A NaN, an infinity or a value whose square overflows float32, in dz (reaching dw
    and db) or in h under sigmoid (reaching dw only), makes *squares NaN or inf."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    for where in ("dz", "h"):
        dz = rng.standard_normal((40, 10)).astype(np.float32)
        w = rng.standard_normal((10, 70)).astype(np.float32)
        h = rng.uniform(0, 1, (40, 70)).astype(np.float32)
        (dz if where == "dz" else h)[17, 3] = bad
        with np.errstate(all="ignore"):
            status, *_, squares = narrow_backward(lib, ffi, dz, w, h, 2)
        assert status == 0 and not np.isfinite(squares), where


def test_narrow_backward_refusals_write_nothing(rng):
    """Too many outputs, a negative size, short strides, an activation whose f' is not
    written from its output, NULL squares or operands: the error code, nothing written;
    no rows or no outputs give zeros."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    dz, w = np.ones((20, 17), np.float32), np.ones((17, 40), np.float32)
    h = np.ones((20, 40), np.float32)
    dh, dw, db, squares = (np.zeros((20, 40), np.float32), np.zeros((17, 40), np.float32),
                           np.zeros(17, np.float32), np.zeros(1))
    s = p(squares, "double[]")

    def call(rows=20, n=16, k=40, ldz=17, ldw=40, ldh=40, lddh=40, lddw=40, dact=1, sq=s,
             a=p(dz)):
        return lib.mlpf_snarrow_backward(rows, n, k, a, ldz, p(w), ldw, p(h), ldh, p(dh), lddh,
                                         p(dw), lddw, p(db), dact, sq)
    assert call(n=17) == lib.MLPF_ERR_SHAPE
    assert call(rows=-1) == lib.MLPF_ERR_SHAPE
    assert call(ldz=15) == lib.MLPF_ERR_STRIDE
    for short in ("ldw", "ldh", "lddh", "lddw"):
        assert call(**{short: 39}) == lib.MLPF_ERR_STRIDE, short
    for dact in (0, 4, 6):                     # identity, gelu, leaky relu
        assert call(dact=dact) == lib.MLPF_ERR_ACT
    assert call(sq=ffi.NULL) == lib.MLPF_ERR_NULL
    assert call(a=ffi.NULL) == lib.MLPF_ERR_NULL
    assert not dh.any() and not dw.any() and not db.any() and squares[0] == 0.0
    dh[:], dw[:], db[:] = 1.0, 1.0, 1.0
    assert call(rows=0) == 0
    assert not dw[:16].any() and dw[16].all() and not db[:16].any() and squares[0] == 0.0
    assert call(n=0) == 0
    assert not dh.any()


def test_packed_matrix_refuses_what_does_not_fit(rng):
    """Each refusal returns its code and writes nothing: too small a buffer, a misaligned
    or missing one, a row index outside the source; a GEMM on a packed matrix of another
    shape, another kernel's layout, or a buffer that holds none."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    src = rng.standard_normal((50, 40)).astype(np.float32)
    index = rng.integers(0, 50, 20)
    floats = lib.mlpf_packed_b_floats(20, 40)
    assert lib.mlpf_packed_b_floats(-1, 40) == lib.MLPF_ERR_SHAPE
    packed = aligned_floats(floats + 1)

    def gather(buffer, count, rows_index=index):
        return lib.mlpf_sgather_packed(p(src), 50, 40, 40, p(rows_index, "int64_t[]"), 20,
                                       ffi.NULL, buffer, count)
    assert gather(p(packed), floats - 1) == lib.MLPF_ERR_SHAPE
    assert gather(p(packed[1:]), floats) == lib.MLPF_ERR_ALIGN
    assert gather(ffi.NULL, floats) == lib.MLPF_ERR_NULL
    bad = index.copy()
    bad[7] = 50
    assert gather(p(packed), floats, bad) == lib.MLPF_ERR_SHAPE
    assert lib.mlpf_spack_b(0, 20, 40, p(src), 40, p(packed), floats - 1) == lib.MLPF_ERR_SHAPE
    assert lib.mlpf_spack_b(0, 20, 40, p(src), 40, p(packed[1:]), floats) == lib.MLPF_ERR_ALIGN
    assert np.isnan(packed).all()

    assert gather(p(packed), floats) == 0
    w, c = rng.standard_normal((30, 40)).astype(np.float32), np.zeros((20, 30), np.float32)

    def forward(m, k, buffer=packed):
        return lib.mlpf_sgemm_packed_a(1, m, 30, k, 1.0, p(buffer), p(w), k, 0.0, p(c), 30,
                                       ffi.NULL, 0)
    assert forward(19, 40) == lib.MLPF_ERR_SHAPE
    assert forward(20, 39) == lib.MLPF_ERR_SHAPE
    assert forward(20, 40, aligned_floats(floats, 0.0)) == lib.MLPF_ERR_KERNEL
    assert forward(20, 40, packed[1:]) == lib.MLPF_ERR_ALIGN
    others = [name for name in kernel_names() if name != gemm.c_kernel_name()]
    if others:                       # another family's micro-panels have another width
        before = gemm.c_kernel_name()
        gemm.set_c_kernel(others[-1])
        try:
            assert forward(20, 40) == lib.MLPF_ERR_KERNEL
        finally:
            gemm.set_c_kernel(before)
    assert not c.any()
    assert forward(20, 40) == 0 and c.any()


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="the flush mode is set on x86 only")
def test_c_kernels_flush_denormals_and_leave_the_callers_mode_alone(threads):
    # Adam's moment of a weight whose gradient stays 0 decays into denormals; the C
    # kernels flush them to zero (no 100-cycle assists), NumPy in this thread still sees them
    from mlpfast.kernels import optim
    n = 100_000
    param, grad = np.ones(n, np.float32), np.zeros(n, np.float32)
    exp_avg, exp_avg_sq = np.full(n, 1e-39, np.float32), np.full(n, 1e-30, np.float32)
    assert exp_avg[0] != 0                                   # a denormal float32
    optim.VARIANTS["c"]["adam"](param, grad, exp_avg, exp_avg_sq, step=900, lr=1e-3)
    assert (exp_avg == 0).all()
    tiny = np.float32(1e-39) * np.float32(0.5)               # denormal arithmetic in NumPy
    assert tiny != 0 and tiny < np.float32(1e-39)


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="the flush mode is set on x86 only")
def test_the_workers_shares_flush_denormals_too():
    # Every thread of a job flushes, not only the caller: on 2 threads, each product
    # 1e-20 * 1e-20 = 1e-40 of C = A A is denormal, so 0 (FTZ), and every C[i, j] is 0 in
    # the worker's rows too (unflushed: 256 of them sum to 2.56e-38); Adam's first moment
    # 0.9 * 1e-39 is 0 over a buffer long enough to split between the threads
    from mlpfast.benchmarks.pool_trace import PoolTrace
    from mlpfast.kernels import optim
    a, n = np.full((256, 256), 1e-20, np.float32), 3 << 20
    exp_avg = np.full(n, 1e-39, np.float32)
    previous = mlpfast.get_num_threads()
    mlpfast.set_num_threads(2)
    try:
        with PoolTrace() as trace:
            c = gemm.gemm_c(a, a)
            optim.VARIANTS["c"]["adam"](np.ones(n, np.float32), np.zeros(n, np.float32), exp_avg,
                                        np.full(n, 1e-30, np.float32), step=900, lr=1e-3)
    finally:
        mlpfast.set_num_threads(previous)
    assert {job.task: job.threads for job in trace.jobs} == {"sgemm_task": 2, "adam_task": 2}
    assert np.float32(1e-20) * np.float32(1e-20) != 0                # denormal in NumPy
    assert (c == 0).all(), np.unique(c)
    assert (exp_avg == 0).all(), np.unique(exp_avg)


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="the flush mode is set on x86 only")
@pytest.mark.parametrize("dtype,tiny", [(np.float32, 1e-39), (np.float64, 1e-310)])
@pytest.mark.parametrize("k,alpha", [(0, 1.0), (3, 0.0)])
def test_vanishing_product_path_flushes_denormals_too(dtype, tiny, k, alpha):
    # k == 0 or alpha == 0: C = act(beta C + bias) without a product, still flushed: a
    # denormal C read as 0 (DAZ), a denormal beta * C written as 0 (FTZ)
    tiny, normal = dtype(tiny), np.finfo(dtype).tiny          # denormal, smallest normal
    a, b = np.ones((2, k), dtype), np.ones((k, 3), dtype)
    for beta, c0 in ((1.0, np.full((2, 3), tiny)), (0.25, np.full((2, 3), normal))):
        assert 0 < beta * c0[0, 0] < normal                  # denormal in NumPy's arithmetic
        out = c0.astype(dtype)
        gemm.gemm_c_fused(a, b, out, False, False, alpha, beta, None, 0)
        assert np.array_equal(out, np.zeros((2, 3), dtype)), (beta, out)
        if dtype == np.float32:                              # the bf16 GEMM's path too
            out = c0.astype(dtype)
            gemm_bf16.VARIANTS["c"]["sbgemm"](a, b, out, alpha=alpha, beta=beta)
            assert np.array_equal(out, np.zeros((2, 3), dtype)), ("bf16", beta, out)


def check_sum_squares(ffi, lib, rng):
    """mlpf_ssum_squares (the compiled step's finiteness check of the gradients) against a
    float64 sum on lengths around its 64-float blocks, on 1 and 2 threads; NaN, inf and an
    |x| whose square overflows float32 make it non-finite wherever they sit."""
    previous = lib.mlpf_get_num_threads()
    try:
        for threads in (1, 2):
            lib.mlpf_set_num_threads(threads)
            for n in (0, 1, 15, 16, 63, 64, 65, 1000, 235_146, 1_100_000):
                x = rng.standard_normal(n).astype(np.float32)
                pointer = ffi.cast("float *", x.ctypes.data)
                want = float(np.sum(x.astype(np.float64) ** 2))
                assert lib.mlpf_ssum_squares(pointer, n) == pytest.approx(want, rel=1e-5), n
                for bad in (np.nan, np.inf, -np.inf, 2e19):
                    for where in {0, n // 2, n - 1} if n else ():
                        saved, x[where] = x[where], bad
                        assert not np.isfinite(lib.mlpf_ssum_squares(pointer, n)), (n, bad, where)
                        x[where] = saved
    finally:
        lib.mlpf_set_num_threads(previous)


def test_sum_of_squares_matches_float64_and_sees_every_non_finite(rng):
    from mlpfast.kernels._c_library import c_library
    check_sum_squares(c_library().ffi, c_library().lib, rng)


# --- The fixed thread grid and calls on more threads than the pool runs --------------------
# (sgemm_task's gm x gn grid, gemm_bf16.c's and passes.c's cap at MLPF_POOL_MAX_THREADS.)
# m x n x k past min_parallel_fmas, so that each thread count set runs, and choose_grid's
# grids (every kernel): the tall shape splits only rows (gm = threads: 3 to 6 x 1); 149
# rows 2 x 2 on 4 threads and 2 x 3 on 6 (columns alone on 3 and 5: the shared
# schedule); 151 rows 3 x 1, 2 x 2, 5 x 1 and 3 x 2. m and n not multiples of any row
# step (4, MR) or NR; k in two or more k blocks (kc: 1024 avx512, 256 the others).
GRID_SHAPES = [(1001, 70, 1600), (149, 601, 600), (151, 601, 600)]


@pytest.mark.parametrize("threads_used", [3, 4, 5, 6])
def test_the_thread_grid_computes_each_block_of_c_once(kernel, threads_used, rng):
    """More threads than this machine may have cores (only slower). With beta != 0 a
    block of C done by two threads would take beta twice, and one that no thread does
    would keep C's old values; bias and relu reach every grid column's panels. Against
    float64."""
    mlpfast.set_num_threads(threads_used)
    for m, n, k in GRID_SHAPES:
        a, b = operands(rng, m, n, k, False, True, np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        c0 = rng.standard_normal((m, n)).astype(np.float32)
        out = c0.copy()
        gemm.gemm_c_fused(a, b, out, False, True, 0.5, -1.5, bias, 1)
        assert_close(out, reference(a, b, False, True, 0.5, -1.5, c0, bias, True),
                     tol=tol(np.float32, k), what=f"{kernel} {threads_used} threads {m}x{n}x{k}")


@pytest.mark.parametrize("threads_used", [3, 4, 5, 6])
def test_weight_gradient_on_the_thread_grid_sums_each_row_and_square_once(kernel, threads_used,
                                                                          rng):
    """mlpf_sgemm_weight_grad on the grids above (m outputs, n inputs, a batch of k): db
    (each row's sum by the first thread of its grid row) and dw against float64, h in rows
    and packed (each grid column reading its panels in place from its first column on),
    and *squares (each thread's own block's, added once) against the float64 sum of the
    squares of dw and db."""
    lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
    p = lambda x, t="float[]": ffi.from_buffer(t, x)  # noqa: E731
    mlpfast.set_num_threads(threads_used)
    for m, n, k in GRID_SHAPES:
        dz, h = operands(rng, m, n, k, True, False, np.float32)
        floats = lib.mlpf_packed_b_floats(k, n)
        packed = aligned_floats(floats)
        assert lib.mlpf_spack_b(0, k, n, p(h), n, p(packed), floats) == 0
        want_dw = reference(dz, h, True, False)
        want_db = dz.astype(np.float64).sum(0)
        for packed_h in (ffi.NULL, p(packed)):
            what = f"{kernel} {threads_used} threads {m}x{n}x{k} packed={packed_h != ffi.NULL}"
            dw, db = np.full((m, n), np.nan, np.float32), np.full(m, np.nan, np.float32)
            squares = np.full(1, np.nan)
            assert lib.mlpf_sgemm_weight_grad(m, n, k, p(dz), m, p(h), n, packed_h, p(dw), n,
                                              p(db), p(squares, "double[]")) == 0
            assert_close(dw, want_dw, tol=tol(np.float32, k), what=what)
            assert_close(db, want_db, tol=tol(np.float32, k), what=what)
            exact = (dw.astype(np.float64) ** 2).sum() + (db.astype(np.float64) ** 2).sum()
            assert squares[0] == pytest.approx(exact, rel=1e-5), what


# mlpf_set_num_threads(300), past the pool's MLPF_POOL_MAX_THREADS (256) that gemm.h's C
# callers may ask for: the bf16 GEMM (300 items: 4800 columns of 300 one-panel chunks)
# and the passes over moving shares (2^20 + 37 items, a 1024 x 1024 dropout, a gather of
# 300 x 3500) size their per-thread counters for at most 256 threads, and give the values
# worked out by hand (products of ones; Adam and SGD steps on exact halves).
_THREAD_CAP_DRIVER = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "gemm.h"
enum { P = (1 << 20) + 37, BM = 8, BN = 16 * 300, BK = 128, ROWS = 300, COLS = 3500 };

static float *filled(int64_t n, float value)
{
    float *x;
    if (posix_memalign((void **)&x, 64, (size_t)n * sizeof *x)) abort();
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return x;
}

static int wrong(const char *what)
{
    printf("wrong: %s\n", what);
    return 1;
}

int main(void)
{
    mlpf_set_num_threads(300);
    int bad = 0;
    float *a = filled(BM * BK, 1), *b = filled(BK * BN, 1), *c = filled(BM * BN, 0);
    bad |= mlpf_sbgemm(0, 0, BM, BN, BK, 1, a, MLPF_TYPE_F32, BK, b, MLPF_TYPE_F32, BN, 0, c,
                       MLPF_TYPE_F32, BN, NULL, 0) != MLPF_OK;
    for (int64_t i = 0; i < BM * BN; i++)
        if (c[i] != BK) { bad |= wrong("sbgemm"); break; }
    float *p = filled(P, 2), *g = filled(P, 1), *m = filled(P, 0), *v = filled(P, 0);
    bad |= mlpf_sadam(p, g, m, v, P, 0.5f, 0.5, 0.75, 1, 0, 0, 1) != MLPF_OK;
    for (int64_t i = 0; i < P; i++)       /* m = 0.5, v = 0.25: p = 2 - 0.5 m / sqrt(v) */
        if (m[i] != 0.5f || v[i] != 0.25f || p[i] != 1.5f) { bad |= wrong("sadam"); break; }
    bad |= mlpf_ssgd(p, g, m, P, 0.5f, 0.5f, 0, 0, 1) != MLPF_OK;
    for (int64_t i = 0; i < P; i++)       /* first step: buf = g = 1, p = 1.5 - 0.5 */
        if (m[i] != 1 || p[i] != 1) { bad |= wrong("ssgd"); break; }
    if (mlpf_ssum_squares(g, P) != P) bad |= wrong("ssum_squares");
    bad |= mlpf_sdropout(p, v, NULL, 1024, 1024, 0, 1, 2, 3, 4, 0, 2) != MLPF_OK;
    for (int64_t i = 0; i < 1024 * 1024; i++)   /* threshold 0 keeps all, times 2 */
        if (v[i] != 2) { bad |= wrong("sdropout"); break; }
    int64_t index[ROWS];
    for (int i = 0; i < ROWS; i++) index[i] = ROWS - 1 - i;
    float *src = filled(ROWS * COLS, 0), *out = filled(ROWS * COLS, -1);
    for (int64_t i = 0; i < ROWS * COLS; i++) src[i] = (float)(i / COLS);
    bad |= mlpf_sgather(src, ROWS, COLS, COLS, index, ROWS, out) != MLPF_OK;
    for (int64_t i = 0; i < ROWS * COLS; i++)
        if (out[i] != (float)(ROWS - 1 - i / COLS)) { bad |= wrong("sgather"); break; }
    puts(bad ? "wrong" : "ok");
    return bad;
}
"""


def test_more_threads_than_the_pool_runs_stay_within_the_per_thread_counters(tmp_path):
    # csrc/ and _THREAD_CAP_DRIVER under AddressSanitizer: a counter written past its
    # array stops the driver
    run_sanitized_driver(tmp_path, _THREAD_CAP_DRIVER, "address",
                         {"ASAN_OPTIONS": "detect_leaks=0"}, timeout=300)


# gemm_bf16.c's items: thread t owns t, t + T, t + 2T, ... and takes them in order, then
# those of the owners after it in turn. A driver that includes gemm_bf16.c (its static
# next_item) runs one job's takers on one thread in drawn orders, as the moving shares'
# test does (tests/test_c_passes.py): a taker alone, or all with each but one stopping for
# good after a drawn count; 1 to 256 threads (the most it runs on), 0 to 3000 items.
_ITEM_OWNERS_DRIVER = r"""
#include "gemm_bf16.c"                /* for its static next_item */
#include <stdio.h>
#include <stdlib.h>

enum { MOST_ITEMS = 3000 };
static sbgemm_call call;
static int64_t taken_at[MOST_ITEMS + 1];
static int taker_at[MOST_ITEMS + 1], failures;

static int fail(const char *what, int64_t items, int threads)
{
    if (failures++ < 20)
        printf("wrong: %s (%lld items, %d threads)\n", what, (long long)items, threads);
    return -1;
}

""" + C_DRAW + r"""
/* One job's takers 0..threads-1 on one thread, in an order drawn from `seed`: `runner`
 * goes on until next_item says none is left; the others never start when `alone`, else
 * each stops for good after a drawn count (a thread the machine holds up). */
static int schedule(int64_t items, int threads, int runner, int alone, uint64_t seed)
{
    static int owner[MLPF_POOL_MAX_THREADS], going[MLPF_POOL_MAX_THREADS];
    static int step[MLPF_POOL_MAX_THREADS];
    static int64_t budget[MLPF_POOL_MAX_THREADS], last[MLPF_POOL_MAX_THREADS];
    static unsigned char seen[MOST_ITEMS];
    call.items = items;
    int active = 0;
    for (int t = 0; t < threads; t++) {
        atomic_init(&call.taken[t], 0);
        owner[t] = t, step[t] = 0, last[t] = -1;
        going[t] = !alone || t == runner;
        budget[t] = t == runner ? -1 : (int64_t)(draw(&seed) % 9);
        active += going[t];
    }
    int64_t count = 0;
    while (active) {
        int t = 0;
        for (int64_t pick = (int64_t)(draw(&seed) % (uint64_t)active);; t++)
            if (going[t] && pick-- == 0) break;
        const int64_t item = budget[t] == 0 ? -1 : next_item(&call, t, threads, &owner[t]);
        if (item < 0) {
            going[t] = 0, active--;
            continue;
        }
        budget[t]--;
        if (count == items) return fail("more items than there are", items, threads);
        taken_at[count] = item, taker_at[count++] = t;
    }
    /* every item once; owner o's items o, o + T, ... in order, whoever takes them; a taker
     * takes its own first, then those of the owners after it in turn (t + 1, ... mod T) */
    for (int64_t i = 0; i < items; i++) seen[i] = 0;
    for (int64_t i = 0; i < count; i++) {
        const int64_t item = taken_at[i];
        const int t = taker_at[i], o = (int)(item % threads), at = (o - t + threads) % threads;
        if (item < 0 || item >= items || seen[item]++)
            return fail("an item taken twice, or none such", items, threads);
        if (item < last[o]) return fail("an owner's items out of order", items, threads);
        if (at < step[t]) return fail("owners not taken own first, then in turn", items, threads);
        last[o] = item, step[t] = at;
    }
    if (count != items) return fail("items left over", items, threads);
    return 0;
}

int main(void)
{
    static const int64_t sizes[] = {0, 1, 2, 5, 17, 100, 255, 256, 257, 1000, MOST_ITEMS};
    static const int thread_counts[] = {1, 2, 3, 4, 5, 7, 8, 13, 64, 255, 256};
    enum { SIZES = sizeof sizes / sizeof *sizes };
    enum { COUNTS = sizeof thread_counts / sizeof *thread_counts };
    for (int a = 0; a < SIZES; a++)
        for (int b = 0; b < COUNTS; b++) {
            const int T = thread_counts[b];
            const int runners[] = {0, 1 % T, T / 2, T - 1};
            for (int r = 0; r < 4; r++)
                for (int seed = 0; seed < 4; seed++)
                    if (schedule(sizes[a], T, runners[r], seed == 0, (uint64_t)(seed * 7919 + a)))
                        r = 4, seed = 4;
        }
    puts(failures ? "wrong" : "ok");
    return failures != 0;
}
"""


def test_bf16_items_are_taken_once_own_first_then_the_other_owners_in_turn(tmp_path):
    run_portable_driver(tmp_path, _ITEM_OWNERS_DRIVER, includes="gemm_bf16.c")
