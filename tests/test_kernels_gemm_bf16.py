"""The bf16 GEMM (kernels/gemm_bf16.py, csrc/gemm_bf16.c): bf16 rounding against hand-written
bit patterns and an independent nearest-value search; every C micro-kernel this CPU runs
(AMX, AVX512-BF16, portable), forced one by one, on 1 and 2 threads, against the NumPy
reference: awkward shapes and edge tiles, odd k, k across several k blocks, all transposes,
strided and transposed views, float32 and bf16 operands and outputs, alpha/beta, bias +
relu, the f'(Y) epilogue, exact rounding of inputs and outputs, NaN, denormals, the
vanishing product; bad arguments; which kernels this CPU runs; the portable-only build;
no read past the operands.

Error bound of the C result against sbgemm_ref (which rounds the operands to bf16 and sums
their products in float64):
    |C - ref| <= k 2^-24 |alpha| (|A||B|)               float32 sums of k exact products
               + 2^-22 (|alpha| (|A||B|) + |beta C| + |bias|)   the epilogue's float32 roundings
               + 2^-7 |ref|                              when C is bf16: one bf16 ulp
with |A||B| the product of the magnitudes of the bf16 operands, all times |f'(y)| for the
f'(Y) epilogue. Against the exact product of the unrounded float32 operands, rounding
them costs up to 2^-7 |A||B| more (test_error_against_unrounded_operands), within the
k 2^-8 |A||B| that issue 20 allows.
"""
import ctypes
import os

import numpy as np
import pytest
from conftest import run_guarded

import mlpfast as mf
from mlpfast.kernels import gemm_bf16 as bf

pytestmark = pytest.mark.skipif(not bf.c_available(), reason="C GEMM not built")

F32, BF16 = bf.F32, bf.BF16
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
# m x n x k: 1, primes, odd k (the k pairs and the 32-deep blocks are padded), non-multiples
# of every tile (32x32, 12x32, 4x16), exact tiles, tall and wide, k across several k blocks
# (kc 256 / 768 / 256), n across several column chunks (also narrowed for a deep k: 7 x 200
# x 3000), m split among threads (2000 x 40).
SHAPES = [(1, 1, 1), (1, 33, 7), (29, 1, 13), (13, 37, 29), (12, 32, 32), (32, 32, 64),
          (33, 33, 33), (25, 65, 17), (300, 3, 50), (3, 300, 50), (97, 101, 103),
          (37, 50, 800), (40, 1000, 40), (131, 97, 601), (65, 64, 1537), (200, 300, 100),
          (2000, 40, 64), (7, 200, 3000)]
# (a, b, out) element types
TYPES = [(F32, F32, F32), (BF16, BF16, BF16), (F32, BF16, BF16), (BF16, F32, F32)]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split()[2:])
    except (OSError, StopIteration):
        return set()


@pytest.fixture
def kernel(bf16_kernel):
    """Each C bf16 micro-kernel family this CPU runs (conftest.bf16_kernel)."""
    return bf16_kernel


def as_type(x, dtype):
    """float32 x as an array of dtype (F32, or BF16 rounded)."""
    return x if dtype == F32 else bf.round_to_bf16(x)


def nan_array(shape, dtype):
    """An out array full of NaN (which a call with beta == 0 must never read)."""
    return np.full(shape, 0x7FC0 if dtype == BF16 else np.nan, dtype)


def values(x):
    """The values of a float32 or bf16 array, in float64."""
    return bf._as_float64(x)


def operands(rng, m, n, k, trans_a, trans_b, a_type=F32, b_type=F32):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return as_type(a, a_type), as_type(b, b_type)


def magnitude(a, b, trans_a, trans_b):
    """|A||B|: the product of the magnitudes of the bf16 operands, in float64."""
    op_a, op_b = np.abs(bf._bf16_values(a)), np.abs(bf._bf16_values(b))
    return (op_a.T if trans_a else op_a) @ (op_b.T if trans_b else op_b)


def assert_within_bound(out, ref, a, b, trans_a, trans_b, alpha=1.0, extra=0.0, factor=1.0,
                        what=""):
    """out against ref within the bound of the module docstring; extra = |beta C| + |bias|."""
    k = a.shape[0] if trans_a else a.shape[1]
    ab = abs(alpha) * magnitude(a, b, trans_a, trans_b)
    got, want = values(out), values(ref)
    bound = (k * 2.0 ** -24 * ab + 2.0 ** -22 * (ab + extra)) * factor
    if out.dtype == BF16:
        bound = bound + 2.0 ** -7 * np.abs(want)
    assert got.shape == want.shape, what
    excess = np.abs(got - want) - bound
    if excess.size and not (excess <= 0).all():
        i = np.unravel_index(np.argmax(np.where(np.isnan(excess), np.inf, excess)), excess.shape)
        raise AssertionError(f"{what}: at {i} got {got[i]!r}, expected {want[i]!r} "
                             f"(bound {np.broadcast_to(bound, want.shape)[i]:.3g})")


# --- bf16 rounding -----------------------------------------------------------------------

def test_round_to_bf16_hand_values():
    one_ulp, half = 2.0 ** -7, 2.0 ** -8
    cases = [(1.0, 0x3F80), (1 + half, 0x3F80),            # tie: to the even 1.0
             (1 + 3 * half, 0x3F82),                        # tie: to the even 1 + 2^-6
             (1 + half + 2.0 ** -20, 0x3F81),               # past the tie: up
             (1 + one_ulp, 0x3F81), (-(1 + half + 2.0 ** -20), 0xBF81),
             (3.3895314e38, 0x7F7F),                        # the largest bf16
             (3.4028235e38, 0x7F80),                        # past it: inf
             (np.inf, 0x7F80), (-np.inf, 0xFF80), (0.0, 0x0000), (-0.0, 0x8000),
             (2.0 ** -133, 0x0001)]                         # a bf16 denormal
    x = np.array([c[0] for c in cases], np.float32)
    assert [hex(v) for v in bf.round_to_bf16(x)] == [hex(c[1]) for c in cases]
    # NaN stays NaN, also one whose payload is in the low half only (truncation: inf)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001], np.uint32).view(np.float32)
    assert np.isnan(bf.bf16_to_float32(bf.round_to_bf16(nans))).all()


def test_round_to_bf16_is_the_nearest_bf16_ties_to_even(rng):
    # independent of the bit trick: the nearer of the two bf16 neighbours, in float64
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) < 3.38e38)]
    below = (x.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    above_bits = (x.view(np.uint32) & 0xFFFF0000) + np.uint32(0x10000)
    above = above_bits.view(np.float32).astype(np.float64)
    x64 = x.astype(np.float64)
    d_below, d_above = np.abs(x64 - below), np.abs(above - x64)
    even_below = ((x.view(np.uint32) >> 16) & 1) == 0
    pick_above = (d_above < d_below) | ((d_above == d_below) & ~even_below)
    expected = np.where(pick_above, above, below)
    assert (bf.bf16_to_float32(bf.round_to_bf16(x)).astype(np.float64) == expected).all()


def test_conversions_refuse_other_dtypes():
    # round_to_bf16 takes float32 only (a float64 viewed as uint32 would give twice the
    # values, all wrong), bf16_to_float32 uint16 only
    for x in (np.ones(3, np.float64), np.ones(3, np.uint16), [1.0]):
        with pytest.raises(TypeError, match="x must be a float32 array"):
            bf.round_to_bf16(x)
    for h in (np.ones(3, np.int32), np.ones(3, np.float32), [0x3F80]):
        with pytest.raises(TypeError, match="h must be a bf16 \\(uint16\\) array"):
            bf.bf16_to_float32(h)


def test_bf16_to_float32_round_trips_every_bf16():
    h = np.arange(2 ** 16, dtype=np.uint16)
    x = bf.bf16_to_float32(h)
    assert x.dtype == F32
    finite = ~np.isnan(x)
    assert (bf.round_to_bf16(x)[finite] == h[finite]).all()
    assert np.isnan(x[(h & 0x7FFF) > 0x7F80]).all() and finite.sum() == 2 ** 16 - 254
    assert x[0x3F80] == 1.0 and x[0xC040] == -3.0


# --- the C kernels against the reference --------------------------------------------------

@pytest.mark.parametrize("a_type,b_type,out_type", TYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_every_kernel_and_thread_count(kernel, threads, m, n, k, a_type, b_type, out_type, rng):
    for trans_a, trans_b in TRANSPOSES:
        a, b = operands(rng, m, n, k, trans_a, trans_b, a_type, b_type)
        out = nan_array((m, n), out_type)
        bf.sbgemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b)
        ref = bf.sbgemm_ref(a, b, trans_a=trans_a, trans_b=trans_b, out_dtype=out_type)
        assert_within_bound(out, ref, a, b, trans_a, trans_b,
                            what=f"{kernel} {threads} threads {trans_a},{trans_b}")


@pytest.mark.parametrize("out_type", [F32, BF16])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-1.5, 0.25), (0.5, 1.0)])
def test_alpha_beta_bias_relu_across_k_blocks(kernel, threads, out_type, alpha, beta, rng):
    # k = 1700 spans 2-7 k blocks of every kernel: beta applied once, bias and relu at the end
    m, n, k = 53, 70, 1700
    for trans_a, trans_b in TRANSPOSES:
        a, b = operands(rng, m, n, k, trans_a, trans_b, F32, BF16)
        c0 = as_type(rng.standard_normal((m, n)).astype(np.float32) * 30, out_type)
        bias = (rng.standard_normal(n) * 30).astype(np.float32)
        for activation in ("identity", "relu"):
            out = c0.copy()
            bf.sbgemm_c(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                        bias=bias, activation=activation)
            ref = bf.sbgemm_ref(a, b, c0.copy(), trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                                beta=beta, bias=bias, activation=activation)
            assert_within_bound(out, ref, a, b, trans_a, trans_b, alpha,
                                extra=np.abs(beta * values(c0)) + np.abs(bias),
                                what=f"{kernel} {trans_a},{trans_b} {activation}")
            if activation == "relu":
                assert (values(out) == 0).sum() > m * n // 4      # the relu really cut


@pytest.mark.parametrize("threads_used", [3, 7])
def test_items_taken_by_other_threads_are_done_once(kernel, threads_used, rng):
    """More threads than this machine's CPUs, so the OS deschedules some and others take
    their items (each thread owns items t, t + T, ...; gemm_bf16.c). With beta != 0 an item
    done twice would apply beta twice, and one skipped would leave C as it was."""
    before = mf.get_num_threads()
    mf.set_num_threads(threads_used)
    try:
        for m, n, k in [(40, 1000, 60), (300, 90, 70), (64, 784, 256)]:
            a, b = operands(rng, m, n, k, False, False, F32, BF16)
            c0 = rng.standard_normal((m, n)).astype(np.float32)
            for _ in range(5):
                out = c0.copy()
                bf.sbgemm_c(a, b, out, alpha=0.5, beta=-1.0)
                ref = bf.sbgemm_ref(a, b, c0.copy(), alpha=0.5, beta=-1.0)
                assert_within_bound(out, ref, a, b, False, False, 0.5, extra=np.abs(values(c0)),
                                    what=f"{kernel} {threads_used} threads {m}x{n}x{k}")
    finally:
        mf.set_num_threads(before)


DACT_OUTPUTS = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
                "tanh": np.tanh}


@pytest.mark.parametrize("dact", list(DACT_OUTPUTS))
@pytest.mark.parametrize("y_type,out_type", [(F32, F32), (BF16, BF16), (BF16, F32)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (13, 37, 29), (131, 97, 601), (64, 784, 128)])
def test_derivative_epilogue(kernel, threads, dact, y_type, out_type, m, n, k, rng):
    for trans_a, trans_b in TRANSPOSES:
        a, b = operands(rng, m, n, k, trans_a, trans_b, BF16, F32)
        y = as_type(DACT_OUTPUTS[dact](rng.standard_normal((m, n))).astype(np.float32), y_type)
        out = nan_array((m, n), out_type)
        bf.sbgemm_dact_c(a, b, y, dact, out, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
        ref = bf.sbgemm_dact_ref(a, b, y, dact, trans_a=trans_a, trans_b=trans_b, alpha=0.5,
                                 out_dtype=out_type)
        assert_within_bound(out, ref, a, b, trans_a, trans_b, 0.5,
                            factor=np.abs(bf.activation_derivative_ref(y, dact)),
                            what=f"{kernel} {dact} {trans_a},{trans_b}")
        if dact == "relu":
            assert (values(out)[values(y) <= 0] == 0).all()


@pytest.mark.parametrize("a_type", [F32, BF16])
def test_strided_and_transposed_views(kernel, threads, a_type, rng):
    big_a = as_type(rng.standard_normal((40, 50)).astype(np.float32), a_type)
    big_b = rng.standard_normal((60, 70)).astype(np.float32)
    big_c = np.zeros((30, 90), BF16)
    views = [(big_a[3:20, 5:16], big_b[2:13, 1:9]),                # row-strided
             (big_a[5:16, 3:20].T, big_b[1:9, 2:13].T),            # transposed (F-order)
             (big_a[3:20, 5:16], big_b[1:9, 2:13].T)]
    for a, b in views:
        out = big_c[4:21, 10:18]
        bf.sbgemm_c(a, b, out)
        assert_within_bound(out, bf.sbgemm_ref(a, b, out_dtype=BF16), a, b, False, False)
        assert not big_c[:4].any() and not big_c[21:].any() and not big_c[:, :10].any()
        assert not big_c[:, 18:].any()


@pytest.mark.parametrize("y_type,out_type", [(F32, F32), (BF16, F32), (F32, BF16)])
def test_derivative_epilogue_reads_y_and_writes_out_by_their_own_strides(kernel, threads, y_type,
                                                                        out_type, rng):
    # y and out are row-strided views with different row strides (y's 64 + 19 elements,
    # out's 64 + 30), and then y is a transposed view (copied to rows): f'(y[i][j]) must
    # come from y's own row i, out must stay inside its view
    m, n, k = 37, 64, 40
    a, b = operands(rng, m, n, k, False, False, BF16, F32)
    big_y, big_yt = (as_type(np.tanh(2 * rng.standard_normal(shape)).astype(np.float32), y_type)
                     for shape in ((m + 3, n + 19), (n + 5, m + 7)))
    big_out = np.zeros((m + 4, n + 30), out_type)
    for y in (big_y[3:, 11:11 + n], big_yt[2:2 + n, 3:3 + m].T):
        out = big_out[2:2 + m, 5:5 + n]
        bf.sbgemm_dact_c(a, b, y, "tanh", out, alpha=0.5)
        ref = bf.sbgemm_dact_ref(a, b, np.ascontiguousarray(y), "tanh", alpha=0.5,
                                 out_dtype=out_type)
        assert_within_bound(out, ref, a, b, False, False, 0.5,
                            factor=np.abs(bf.activation_derivative_ref(y, "tanh")),
                            what=f"{kernel} y strides {y.strides}")
        assert not big_out[:2].any() and not big_out[2 + m:].any()
        assert not big_out[:, :5].any() and not big_out[:, 5 + n:].any()


# --- exact rounding ----------------------------------------------------------------------

HALF = 2.0 ** -8
# float32 values and their bf16 roundings, written by hand
ROUNDED = [(1 + HALF, 1.0), (1 + 3 * HALF, 1 + 2 * 2.0 ** -7),
           (1 + HALF + 2.0 ** -20, 1 + 2.0 ** -7),
           (-(1 + HALF + 2.0 ** -20), -(1 + 2.0 ** -7)), (0.75 + 2.0 ** -10, 0.75),
           (3.0 + 2.0 ** -7, 3.0), (3.0 + 3 * 2.0 ** -7, 3.0 + 2.0 ** -5), (-2.0, -2.0)]


def test_float32_operands_rounded_to_nearest_even_while_packed(kernel):
    # C = op(A) op(B) with k = 1: each value a product of two bf16, exact in float32
    x = np.array([v for v, _ in ROUNDED], np.float32)
    want_x = np.array([r for _, r in ROUNDED])
    a_col, b_row = np.tile(x, 5)[:, None], np.tile(x[::-1], 6)[None, :]       # 35 x 1, 1 x 42
    want = np.outer(np.tile(want_x, 5), np.tile(want_x[::-1], 6))
    for trans_a, trans_b in TRANSPOSES:
        a = np.ascontiguousarray(a_col.T) if trans_a else a_col
        b = np.ascontiguousarray(b_row.T) if trans_b else b_row
        out = bf.sbgemm_c(a, b, trans_a=trans_a, trans_b=trans_b)
        assert (out.astype(np.float64) == want).all(), f"{kernel} {trans_a},{trans_b}"


def test_output_rounded_to_nearest_even_once(kernel):
    # A = 0, so C = bias exactly in float32, and the store rounds it to bf16
    pattern = [(v, r) for v, r in ROUNDED] + [(3.4028235e38, np.inf), (-np.inf, -np.inf)]
    bias = np.array([v for v, _ in pattern] * 6, np.float32)              # 54 columns
    a, b = np.zeros((35, 3), BF16), np.zeros((3, bias.size), np.float32)
    out = bf.sbgemm_c(a, b, bias=bias, out_dtype=BF16)
    want = np.array([r for _, r in pattern] * 6)
    assert (values(out) == want).all(), kernel
    bias[5] = np.nan                                                     # NaN stays NaN
    assert np.isnan(values(bf.sbgemm_c(a, b, bias=bias, out_dtype=BF16))[:, 5]).all()


def test_nan_operand_and_denormals(kernel, rng):
    a, b = operands(rng, 20, 40, 33, False, False)
    a[3, 7] = np.uint32(0x7F800001).view(np.float32)         # a NaN that truncation makes inf
    for out_type in (F32, BF16):
        for activation in ("identity", "relu"):         # relu keeps NaN, as np.maximum
            out = values(bf.sbgemm_c(a, b, out_dtype=out_type, activation=activation))
            assert np.isnan(out[3]).all() and not np.isnan(np.delete(out, 3, axis=0)).any()
    # products below the float32 range are flushed to zero, as in mlpf_sgemm
    tiny = np.full((13, 5), 2.0 ** -70, np.float32)
    assert (bf.sbgemm_c(tiny, tiny.T.copy()) == 0).all()


def test_relu_derivative_of_a_nan_y_is_zero(kernel, rng):
    # f' = [y > 0] is false for a NaN y, as in activation_derivative_ref: relu's epilogue
    # writes 0 there; tanh's f' of a NaN y is NaN
    m, n, k = 19, 40, 9
    a, b = operands(rng, m, n, k, False, False)
    nan = rng.random((m, n)) < 0.2
    for y_type in (F32, BF16):
        y = as_type(np.maximum(rng.standard_normal((m, n)), 0).astype(np.float32), y_type)
        y[nan] = 0x7FC0 if y_type == BF16 else np.nan
        for dact in ("relu", "tanh"):
            out = values(bf.sbgemm_dact_c(a, b, y, dact))
            assert (np.isnan(out) == np.isnan(values(bf.sbgemm_dact_ref(a, b, y, dact)))).all()
            assert (out[nan] == 0).all() if dact == "relu" else np.isnan(out[nan]).all()


# --- the vanishing product, bad arguments ---------------------------------------------------

def test_k0_and_alpha0_read_neither_operand(kernel, rng):
    bias = rng.standard_normal(40).astype(np.float32)
    for out_type in (F32, BF16):
        c0 = as_type(rng.standard_normal((5, 40)).astype(np.float32), out_type)
        out = c0.copy()
        bf.sbgemm_c(np.zeros((5, 0), BF16), np.zeros((0, 40), F32), out, beta=0.5, bias=bias,
                    activation="relu")
        want = bf.sbgemm_ref(np.zeros((5, 0), BF16), np.zeros((0, 40), F32), c0.copy(), beta=0.5,
                             bias=bias, activation="relu")
        assert (out == want).all()
        nan_a, nan_b = np.full((5, 3), np.nan, np.float32), np.full((3, 40), np.nan, np.float32)
        out = bf.sbgemm_c(nan_a, nan_b, alpha=0.0, bias=bias, out_dtype=out_type)
        want = as_type(np.broadcast_to(bias, (5, 40)).copy(), out_type)
        assert (values(out) == values(want)).all()
        y = as_type(rng.standard_normal((5, 40)).astype(np.float32), out_type)
        out = bf.sbgemm_dact_c(nan_a, nan_b, y, "tanh", alpha=0.0, out_dtype=out_type)
        assert (values(out) == 0).all()


@pytest.mark.parametrize("variant", list(bf.VARIANTS))
def test_bad_arguments_name_the_argument_and_change_nothing(variant, rng):
    f, f_dact = bf.VARIANTS[variant]["sbgemm"], bf.VARIANTS[variant]["sbgemm_dact"]
    a, b = rng.standard_normal((4, 5)).astype(np.float32), bf.round_to_bf16(np.ones((5, 3), F32))
    out = np.full((4, 3), 7.0, np.float32)
    cases = [
        (TypeError, "a must be float32 or bf16", lambda: f(a.astype(np.float64), b, out)),
        (TypeError, "b must be a NumPy array", lambda: f(a, [[1.0]], out)),
        (ValueError, "a must be 2-D", lambda: f(a[None], b, out)),
        (ValueError, "inner dimensions", lambda: f(a, np.zeros((6, 3), F32), out)),
        (ValueError, "out must have shape", lambda: f(a, b, np.zeros((3, 3), F32))),
        (TypeError, "out must be float32 or bf16", lambda: f(a, b, np.zeros((4, 3), np.int32))),
        (ValueError, "beta", lambda: f(a, b, beta=1.0)),
        (TypeError, "out_dtype", lambda: f(a, b, out_dtype=np.float64)),
        (ValueError, "bias must be a float32 array of shape \\(3,\\)",
         lambda: f(a, b, out, bias=np.zeros(4, F32))),
        (ValueError, "bias must be contiguous",
         lambda: f(a, b, out, bias=np.arange(6, dtype=F32)[::2])),
        (ValueError, "activation must be one of", lambda: f(a, b, out, activation="tanh")),
        (TypeError, "alpha must be a real number", lambda: f(a, b, out, alpha="2")),
        (TypeError, "beta must be a real number", lambda: f(a, b, out, beta="2")),
        (ValueError, "bias must be a float32 array",                  # float64, right shape
         lambda: f(a, b, out, bias=np.zeros(3, np.float64))),
        (ValueError, "dact must be one of", lambda: f_dact(a, b, out.copy(), "gelu", out)),
        (ValueError, "y must have shape",
         lambda: f_dact(a, b, np.zeros((3, 4), F32), "relu", out)),
        (TypeError, "y must be float32 or bf16",
         lambda: f_dact(a, b, np.ones((4, 3), np.float64), "relu", out)),
        (ValueError, "out must not overlap input y", lambda: f_dact(a, b, out, "relu", out)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
        assert (out == 7.0).all(), message


def test_out_without_unit_stride_along_rows_is_refused(rng):
    # the C side writes out by rows: a transposed (F-order) out is refused, not written
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(F32)
    y = np.ones((4, 3), F32)
    for f in (lambda out: bf.sbgemm_c(a, b, out),
              lambda out: bf.sbgemm_dact_c(a, b, y, "sigmoid", out)):
        out = np.full((3, 4), 7.0, F32).T
        with pytest.raises(ValueError, match="out must have unit stride along its last axis"):
            f(out)
        assert (out == 7.0).all()


def test_the_c_functions_refuse_unknown_element_types(rng):
    # MLPF_ERR_TYPE (-7) for a type code other than MLPF_TYPE_F32 (0) or MLPF_TYPE_BF16 (1),
    # for each of A, B, C and Y, and C left as it was
    ffi, lib = bf.c_library().ffi, bf.c_library().lib
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(F32)
    c, y = np.full((4, 3), 7.0, F32), np.ones((4, 3), F32)
    pa, pb, pc, py = (ffi.from_buffer(x) for x in (a, b, c, y))
    for at, bt, ct, yt in [(2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 2, 0), (0, 0, 0, 2)]:
        if yt == 0:
            assert lib.mlpf_sbgemm(0, 0, 4, 3, 5, 1.0, pa, at, 5, pb, bt, 3, 0.0, pc, ct, 3,
                                   ffi.NULL, 0) == -7
        assert lib.mlpf_sbgemm_dact(0, 0, 4, 3, 5, 1.0, pa, at, 5, pb, bt, 3, pc, ct, 3, py, yt,
                                    3, 2) == -7
        assert (c == 7.0).all()


def test_overlapping_out_is_refused(rng):
    # out may overlap none of a, b, bias (a row of out) or y, and is left as it was
    square = rng.standard_normal((5, 5)).astype(np.float32)
    before = square.copy()
    for variant in bf.VARIANTS.values():
        f, f_dact = variant["sbgemm"], variant["sbgemm_dact"]
        for name, call in [("a", lambda: f(square, square.copy(), square)),
                           ("b", lambda: f(square.copy(), square, square)),
                           ("bias", lambda: f(before, before, square, bias=square[2])),
                           ("y", lambda: f_dact(before, before, square, "tanh", square))]:
            with pytest.raises(ValueError, match=f"out must not overlap input {name}$"):
                call()
            assert np.array_equal(square, before), name


# --- which kernels run here --------------------------------------------------------------

def amx_permission_granted():
    """Asks Linux for the AMX tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM, feature
    18), independently of the C library: True when granted."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(158, 0x1023, 18) == 0                 # SYS_arch_prctl on x86-64


@pytest.mark.skipif(not {"avx512_bf16", "avx512bw", "avx512vl"} <= cpu_flags(),
                    reason="this CPU has no AVX512-BF16")
def test_avx512bf16_kernel_runs_here():
    assert "avx512bf16" in bf.C_KERNELS.supported()


@pytest.mark.skipif(not {"amx_bf16", "amx_tile", "avx512_bf16"} <= cpu_flags(),
                    reason="this CPU has no AMX-BF16")
def test_amx_kernel_runs_here():
    if not amx_permission_granted():
        pytest.skip("the OS refuses the AMX tile permission (the kernel falls back)")
    assert bf.C_KERNELS.supported()[0] == "amx"
    bf.C_KERNELS.select("auto")
    assert bf.C_KERNELS.name() == "sbgemm_amx_32x32"


# A process whose thread has an alternate signal stack too small for the AMX tile state:
# Linux then refuses it the tile permission (arch_prctl ARCH_REQ_XCOMP_PERM: ENOSPC), as a
# kernel without AMX support or a sandbox would. The library must fall back to the next
# kernel, refuse "amx" when asked for it, and compute right on 1 and 2 threads; a kernel
# that ran AMX instructions without the permission would die of SIGILL.
_AMX_REFUSED_SCRIPT = r"""
import ctypes
import numpy as np

class stack_t(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]
libc = ctypes.CDLL(None, use_errno=True)
alt = ctypes.create_string_buffer(4096)                 # room for AVX-512, not for AMX
assert libc.sigaltstack(ctypes.byref(stack_t(ctypes.addressof(alt), 0, 4096)), None) == 0
import mlpfast as mf
from mlpfast.kernels import gemm_bf16 as bf

supported = bf.C_KERNELS.supported()
assert "amx" not in supported and bf.C_KERNELS.name() != "sbgemm_amx_32x32", supported
bf.C_KERNELS.select("auto")
assert bf.C_KERNELS.name().split("_")[1] == supported[0], bf.C_KERNELS.name()
try:
    bf.C_KERNELS.select("amx")
except ValueError:
    pass
else:
    raise AssertionError("amx selected without the tile permission")
assert bf.C_KERNELS.name().split("_")[1] == supported[0]
rng = np.random.default_rng(0)
a = bf.round_to_bf16(rng.standard_normal((197, 300)).astype(np.float32))
b = bf.round_to_bf16(rng.standard_normal((300, 250)).astype(np.float32))
a64, b64 = bf._as_float64(a), bf._as_float64(b)
want, bound = a64 @ b64, 300 * 2.0 ** -23 * (np.abs(a64) @ np.abs(b64))
for threads in (1, 2):
    mf.set_num_threads(threads)
    assert (np.abs(bf.sbgemm_c(a, b) - want) <= bound).all(), threads
print("ok")
"""


def test_a_process_refused_the_amx_permission_falls_back():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _AMX_REFUSED_SCRIPT], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


def test_kernel_selection():
    families = bf.C_KERNELS.supported()
    assert families[-1] == "portable" and set(families) <= set(bf.C_KERNELS.families)
    before = bf.C_KERNELS.name()
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        bf.C_KERNELS.select("sse")
    assert bf.C_KERNELS.name() == before
    bf.C_KERNELS.select("sbgemm_portable_4x16")
    assert bf.C_KERNELS.name() == "sbgemm_portable_4x16"
    bf.C_KERNELS.select("auto")
    assert bf.C_KERNELS.name().split("_")[1] == families[0]


def test_portable_only_build_as_on_other_cpus(tmp_path, rng):
    # csrc/ compiled with -DMLPF_PORTABLE_ONLY: no AMX or AVX512-BF16 kernel exists
    import importlib.util
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    spec = importlib.util.spec_from_file_location("build_cgemm",
                                                  os.path.join(csrc, "build_cgemm.py"))
    build_cgemm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_cgemm)
    builder = build_cgemm.make_builder("_cgemm_bf16_portable", [("MLPF_PORTABLE_ONLY", "1")])
    spec = importlib.util.spec_from_file_location("_cgemm_bf16_portable",
                                                  builder.compile(tmpdir=str(tmp_path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ffi, lib = module.ffi, module.lib
    assert ffi.string(lib.mlpf_sbgemm_kernel_name()) == b"sbgemm_portable_4x16"
    assert lib.mlpf_set_sbgemm_kernel(b"amx") != 0
    a, b = operands(rng, 37, 50, 301, False, True, BF16, F32)
    out = np.empty((37, 50), np.float32)
    assert lib.mlpf_sbgemm(0, 1, 37, 50, 301, 1.0, ffi.from_buffer(a), 1, 301, ffi.from_buffer(b),
                           0, 301, 0.0, ffi.from_buffer(out), 0, 50, ffi.NULL, 0) == 0
    assert_within_bound(out, bf.sbgemm_ref(a, b, trans_b=True), a, b, False, True)
    assert lib.mlpf_sbgemm(0, 1, 37, 50, 301, 1.0, ffi.from_buffer(a), 2, 301, ffi.from_buffer(b),
                           0, 301, 0.0, ffi.from_buffer(out), 0, 50, ffi.NULL, 0) == -7
    # tanh's f' = 1 - y^2 near y = 1, compiled here for baseline x86-64 (no FMA to fuse
    # 1 - y*y into, as in the AVX2 clone that CPUs without AVX512-BF16 run): within the
    # bound all the same (positive operands, short k: the bound is tight, |ref| = |A||B|)
    a, b = (np.abs(x[:, :3]).copy() for x in (a, b))
    y = np.tanh(rng.uniform(2.0, 6.0, (37, 50))).astype(np.float32)
    assert lib.mlpf_sbgemm_dact(0, 1, 37, 50, 3, 1.0, ffi.from_buffer(a), 1, 3, ffi.from_buffer(b),
                                0, 3, ffi.from_buffer(out), 0, 50, ffi.from_buffer(y), 0, 50,
                                3) == 0
    assert_within_bound(out, bf.sbgemm_dact_ref(a, b, y, "tanh", trans_b=True), a, b, False, True,
                        factor=np.abs(bf.activation_derivative_ref(y, "tanh")), what="tanh")


_GUARD_SCRIPT = r"""
from mlpfast.kernels import gemm_bf16 as bf

bf.C_KERNELS.select(sys.argv[1])
for m, n, k in [(5, 3, 7), (13, 37, 29), (1, 1, 1), (17, 20, 33)]:
    for dtype in (np.float32, np.uint16):
        for ta in (False, True):
            for tb in (False, True):
                a = at_page_end((k, m) if ta else (m, k), dtype)
                b = at_page_end((n, k) if tb else (k, n), dtype)
                a[...], b[...] = 1, 1                     # 1.0 as float32, a denormal as bf16
                y = at_page_end((m, n), dtype)
                out = at_page_end((m, n), dtype)
                bf.sbgemm_c(a, b, out, trans_a=ta, trans_b=tb, bias=at_page_end((n,), np.float32))
                bf.sbgemm_dact_c(a, b, y, "relu", out, trans_a=ta, trans_b=tb)
print("ok")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux mprotect")
def test_no_read_past_the_operands(kernel):
    # A, B, bias, Y and C end right before an unreadable page: a read past them crashes
    run_guarded(_GUARD_SCRIPT, kernel)


def test_error_against_unrounded_operands(kernel, rng):
    # the cost of bf16 itself: each product of rounded operands is within 2^-7 (+ 2^-16) of
    # the exact one, so |C - A B| <= (2^-7 + 2^-16 + k 2^-24) |A||B| + 2^-22 |A||B|
    m, n, k = 64, 96, 1024
    a, b = operands(rng, m, n, k, False, True)
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    mag = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T
    err = np.abs(bf.sbgemm_c(a, b, trans_b=True) - exact)
    assert (err <= (2.0 ** -7 + 2.0 ** -16 + k * 2.0 ** -24 + 2.0 ** -22) * mag).all()
    assert (err <= k * 2.0 ** -8 * mag).all()                         # issue 20's bound
    assert err.max() > 2.0 ** -16 * mag.max()                         # bf16, not float32
