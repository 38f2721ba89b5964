"""exp, tanh, sigmoid and the normal CDF for Numba kernels, fast in float32.

Recent Numba has no SVML, so ``math.exp`` in a loop is a scalar libm call per element
and the loop does not vectorize. For float32 these functions use approximations made
of +, *, floor and a bit cast, which LLVM vectorizes into AVX-512; for float64 they call
libm (exact, scalar). Each is dispatched on the argument's type at compile time.

    exp(x)       float32: x = n ln2 + r, |r| <= ln2/2 (Cody-Waite, two-part ln2);
                 exp(r) by its degree-6 Taylor polynomial (error < r^7/7! < 2e-7
                 relative); 2^n built from its exponent bits. x is clamped to
                 [-87.3, 88.3], so the result is finite and at least 1.2e-38.
    tanh(x)      sign(x) (1 - 2e / (1 + e)), e = exp(-2|x|)
    sigmoid(x)   1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, e = exp(-|x|)
    normal_cdf(x)  Phi(x) = erfc(-x/sqrt 2) / 2, with erfc(z) = q(t) exp(-z^2),
                 t = 1 / (1 + p z) for z >= 0 (Abramowitz & Stegun 7.1.26, absolute
                 error < 1.5e-7), and erfc(-z) = 2 - erfc(z): no cancellation in
                 either tail
    row_max(row)   the largest element of a 1-D array, vectorized
The tests check every kernel that uses them against the float64 NumPy references.

Numba's on-disk cache keys a kernel on its own source file only: after editing this
file, delete the kernels' cache (kernels/__pycache__/*.nbi, *.nbc) or the kernels that
call these functions keep the old machine code.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125            # ln 2 = LN2_HI + LN2_LO, LN2_HI exact in 16 bits
LN2_LO = 1.428606765330187e-06
SQRT_HALF = 0.7071067811865476
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """The float32 whose IEEE-754 bits are the int32 ``bits``."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp(x):
    return math.exp(x)


@overload(exp, jit_options={"fastmath": True})
def _exp_impl(x):
    if x == types.float32:
        def exp32(x):
            x = min(max(x, np.float32(-87.3)), np.float32(88.3))
            n = np.floor(x * np.float32(LOG2E) + np.float32(0.5))     # a float, not an int
            r = x - n * np.float32(LN2_HI) - n * np.float32(LN2_LO)
            p = np.float32(1 / 720)
            p = p * r + np.float32(1 / 120)
            p = p * r + np.float32(1 / 24)
            p = p * r + np.float32(1 / 6)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1)
            p = p * r + np.float32(1)
            return p * _int32_bits_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))
        return exp32
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)


def tanh(x):
    return math.tanh(x)


@overload(tanh, jit_options={"fastmath": True})
def _tanh_impl(x):
    if x == types.float32:
        def tanh32(x):
            e = exp(np.float32(-2) * abs(x))
            t = np.float32(1) - np.float32(2) * e / (np.float32(1) + e)   # exactly 1 for tiny e
            return t if x >= np.float32(0) else -t
        return tanh32
    if isinstance(x, types.Float):
        return lambda x: math.tanh(x)


def sigmoid(x):
    return 0.5 * (1.0 + math.tanh(0.5 * x))


@overload(sigmoid, jit_options={"fastmath": True})
def _sigmoid_impl(x):
    if isinstance(x, types.Float):
        one = as_dtype(x).type(1)

        def sigmoid_impl(x):
            e = exp(-abs(x))
            return one / (one + e) if x >= 0 else e / (one + e)
        return sigmoid_impl


def normal_cdf(x):
    return 0.5 * math.erfc(-x * SQRT_HALF)


@overload(normal_cdf, jit_options={"fastmath": True})
def _normal_cdf_impl(x):
    if x == types.float32:
        def normal_cdf32(x):
            z = abs(x) * np.float32(SQRT_HALF)
            t = np.float32(1) / (np.float32(1) + np.float32(ERFC_P) * z)
            q = np.float32(ERFC_A[4])
            q = q * t + np.float32(ERFC_A[3])
            q = q * t + np.float32(ERFC_A[2])
            q = q * t + np.float32(ERFC_A[1])
            q = q * t + np.float32(ERFC_A[0])
            tail = np.float32(0.5) * q * t * exp(-z * z)      # Phi(-|x|)
            return np.float32(1) - tail if x >= np.float32(0) else tail
        return normal_cdf32
    if isinstance(x, types.Float):
        return lambda x: 0.5 * math.erfc(-x * SQRT_HALF)


@njit(fastmath=True, cache=True)
def row_max(row):
    """max of a 1-D array, as 8 interleaved running maxima: LLVM does not vectorize a
    single max(top, x) chain (measured 18x slower on rows of 1024 float32)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    n8 = row.shape[0] // 8 * 8
    for j in range(0, n8, 8):
        m0 = max(m0, row[j]); m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2]); m3 = max(m3, row[j + 3])
        m4 = max(m4, row[j + 4]); m5 = max(m5, row[j + 5])
        m6 = max(m6, row[j + 6]); m7 = max(m7, row[j + 7])
    top = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(n8, row.shape[0]):
        top = max(top, row[j])
    return top
