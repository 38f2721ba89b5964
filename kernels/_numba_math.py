"""exp, tanh, sigmoid and the normal CDF for Numba kernels, fast in float32.

Recent Numba has no SVML, so ``math.exp`` in a loop is a scalar libm call per element
and the loop does not vectorize. For float32 these functions use approximations made
of +, *, min/max, a division and bit casts, which LLVM vectorizes into AVX-512; for
float64 they call libm (exact, scalar). Each is dispatched on the argument's type at
compile time. Fewer operations per element matter: the memory-bound kernels that use
them (activations, softmax, cross-entropy) keep up with memory only when the math of a
64-byte vector takes fewer cycles than moving it (bench/compare_bandwidth.py).

    exp(x)       float32: x clamped to [-87.3, 88.3] (the result is finite and at least
                 1.2e-38); x = n ln2 + r, |r| <= ln2/2, where n = round(x log2 e) comes
                 from adding 1.5 * 2^23 + 127 (its float bits then hold n + 127, the
                 exponent field of 2^n, in their low bits: one FMA, no floor, no
                 conversion; compiled without reassociation, which would cancel it);
                 exp(r) by a degree-5 polynomial fitted for relative error (1.1e-7),
                 r = x - n ln2 in one FMA; 11 vector operations per 16 values, relative
                 error < 5e-7 (measured over the whole range against float64).
    tanh(x)      sign(x) (1 - 2e / (1 + e)), e = exp(-2|x|): 1 - |tanh| keeps its relative
                 accuracy in the tails, which tanh' = 1 - tanh^2 needs (gelu_tanh's
                 derivative multiplies it by ~x^3), and reaches +-1 exactly; for |x| < 1/4,
                 where that form cancels (tanh(1e-10) was 0), -m / (1 + e) with m = e - 1
                 = (r s) 2^n + (2^n - 1) from exp's own reduction (exp(r) = 1 + r s),
                 relative error < 1e-6 there; one division for both. A rational
                 approximation (Eigen's) was no cheaper once made to reach +-1 exactly
    sigmoid(x)   1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, e = exp(-|x|)
    normal_cdf(x)  Phi(x) = 0.5 + 0.5 erf(x / sqrt 2), float32 erf by the rational
                 z P(z^2) / Q(z^2) of Eigen's fast erf (z clamped to +-4; P scaled by
                 1 + 3e-7 and the result clipped to [-1, 1], so Phi is exactly 0 and 1
                 far out), absolute error < 4e-7 (an absolute error: in the far left tail
                 Phi is 0, where the float64 reference has 1e-9)
    row_max(row)   the largest element of a 1-D array, vectorized (llvm.maxnum)
    exp_shifted_sum(row, top, e_row, ahead)   e_row = exp(row - top) and its sum, while
                 prefetching the array ahead (softmax and cross-entropy)
The tests check every kernel that uses them against the float64 NumPy references.
Fractions of copy bandwidth with these approximations and with the Taylor exp they
replaced: bench/README.md, "Float32 math".

The kernels that call these functions are compiled with their code inlined; an edit here
recompiles them all (the cache stamp of every kernel covers every kernels/*.py file:
_numba_config.py, "JIT cache").
"""
import math
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from . import _numba_config
from .cpu_config import THRESHOLDS

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
ROUNDING_BIAS = 12583039.0            # 1.5 * 2^23 + 127: adding it rounds to an integer
# exp(r) ~ 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3) on |r| <= ln2/2, fitted for the least
# largest relative error (Lawson's iteration on Chebyshev nodes): 1.1e-7, where Taylor's
# 1/2, 1/6, 1/24, 1/120 give 3.2e-6
EXP_C = (0.49999232, 0.16667114, 0.04189011, 0.00831253)
# erf(x) ~ x P(x^2) / Q(x^2) on |x| <= 4: Eigen's generic_fast_erf_float
# (Eigen/src/Core/SpecialFunctionsImpl.h), absolute error 6.5e-8
ERF_CLAMP = 4.0
ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
         -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
         -2.72614225801306e-10)
ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
         -2.13374055278905e-04, -1.45660718464996e-05)
# P scaled by 1 + 3e-7, so that the result clipped to [-1, 1] is exactly +-1 at the clamp:
# Phi(x) is then exactly 0 far left, and gelu(x) = x Phi(x) is 0 there, not x * 3e-8
ERF_P_WIDE = tuple(c * (1 + 3e-7) for c in ERF_P)
SQRT_HALF = 0.7071067811865476
NO_REASSOC = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}   # fastmath minus reassoc
# fastmath minus reassoc and contract: the vector and the scalar version of a loop (LLVM
# picks one at run time, by how near its arrays lie) then round alike
IN_ORDER = {"nnan", "ninf", "nsz", "arcp", "afn"}


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """The float32 whose IEEE-754 bits are the int32 ``bits``."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _float32_bits_as_int32(typingctx, value):
    """The IEEE-754 bits of the float32 ``value``, as an int32."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def _exp32_parts(x):
    """(s, r, 2^n) for float32 x in [-87.3, 88.3]: x = n ln2 + r and exp(r) = 1 + r s, so
    exp(x) = (1 + r s) 2^n and exp(x) - 1 = (r s) 2^n + (2^n - 1), without cancellation
    (see the module docstring)."""


@overload(_exp32_parts, jit_options={"fastmath": NO_REASSOC})
def _exp32_parts_impl(x):
    def exp32_parts(x):
        shifted = x * np.float32(LOG2E) + np.float32(ROUNDING_BIAS)     # n + bias, rounded
        n = shifted - np.float32(ROUNDING_BIAS)
        r = x - n * np.float32(LN2)
        s = np.float32(EXP_C[3])
        s = s * r + np.float32(EXP_C[2])
        s = s * r + np.float32(EXP_C[1])
        s = s * r + np.float32(EXP_C[0])
        s = s * r + np.float32(1)
        two_n = _int32_bits_as_float32(_float32_bits_as_int32(shifted) << np.int32(23))
        return s, r, two_n
    return exp32_parts


def _exp32_in_range(x):
    """exp(x) for float32 x in [-87.3, 88.3] (see the module docstring)."""


@overload(_exp32_in_range, jit_options={"fastmath": NO_REASSOC})
def _exp32_in_range_impl(x):
    def exp32(x):
        s, r, two_n = _exp32_parts(x)
        return (s * r + np.float32(1)) * two_n
    return exp32


def exp(x):
    return math.exp(x)


@overload(exp, jit_options={"fastmath": True})
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp32_in_range(min(max(x, np.float32(-87.3)), np.float32(88.3)))
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)


def exp_nonpositive(x):
    """exp(x) for x <= 0 (softmax, cross-entropy, Gaussians): in float32 one clamp fewer."""
    return math.exp(x)


@overload(exp_nonpositive, jit_options={"fastmath": True})
def _exp_nonpositive_impl(x):
    if x == types.float32:
        return lambda x: _exp32_in_range(max(x, np.float32(-87.3)))
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)


def _odd_rational32(x, p, q):
    """x P(x^2) / Q(x^2) in float32, P and Q given by their coefficients, lowest first."""


@overload(_odd_rational32, jit_options={"fastmath": True})
def _odd_rational32_impl(x, p, q):
    def rational(x, p, q):
        x2 = x * x
        num = np.float32(p[-1])
        for c in p[-2::-1]:
            num = num * x2 + np.float32(c)
        den = np.float32(q[-1])
        for c in q[-2::-1]:
            den = den * x2 + np.float32(c)
        return x * num / den
    return rational


def tanh(x):
    return math.tanh(x)


@overload(tanh, jit_options={"fastmath": True})
def _tanh_impl(x):
    if x == types.float32:
        def tanh32(x):
            a = abs(x)
            s, r, two_n = _exp32_parts(max(np.float32(-2) * a, np.float32(-87.3)))
            e = (s * r + np.float32(1)) * two_n                       # exp(-2a)
            m = (s * r) * two_n + (two_n - np.float32(1))             # exp(-2a) - 1
            q = np.float32(1) / (np.float32(1) + e)
            t = -m * q if a < np.float32(0.25) else np.float32(1) - np.float32(2) * e * q
            return math.copysign(t, x)
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
            e = exp_nonpositive(-abs(x))
            r = one / (one + e)
            return r if x >= 0 else e * r
        return sigmoid_impl


def normal_cdf(x):
    return 0.5 * math.erfc(-x * SQRT_HALF)


@overload(normal_cdf, jit_options={"fastmath": True})
def _normal_cdf_impl(x):
    if x == types.float32:
        def normal_cdf32(x):
            z = min(max(x * np.float32(SQRT_HALF), np.float32(-ERF_CLAMP)), np.float32(ERF_CLAMP))
            erf = min(max(_odd_rational32(z, ERF_P_WIDE, ERF_Q), np.float32(-1)), np.float32(1))
            return np.float32(0.5) + np.float32(0.5) * erf
        return normal_cdf32
    if isinstance(x, types.Float):
        return lambda x: 0.5 * math.erfc(-x * SQRT_HALF)


@intrinsic
def _maxnum(typingctx, a, b):
    """max(a, b) as LLVM's llvm.maxnum (a NaN operand is ignored); a, b the same float type."""
    if not isinstance(a, types.Float) or a != b:
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]),
                                            f"llvm.maxnum.f{a.bitwidth}")
        return builder.call(fn, args)

    return sig, codegen


@njit(fastmath=True, cache=True, inline="always")
def row_max(row):
    """max of a 1-D array. LLVM vectorizes the llvm.maxnum chain as a reduction; it does
    not vectorize max() or a compare-and-select chain (Numba puts no fast-math flags on
    comparisons)."""
    top = row[0]
    for j in range(1, row.shape[0]):
        top = _maxnum(top, row[j])
    return top


# --- prefetching ------------------------------------------------------------------------
#
# Softmax and cross-entropy pass over each row three times (max, then exp and its sum, then
# the scaling); while the core computes the exps of one row, the hardware prefetcher does not
# fetch the next rows, so each row's first pass waits for memory. On large arrays (when they
# stream their output) they prefetch the row PREFETCH_BYTES ahead during the exp pass, one
# prefetch per 64-byte line, in bursts of BURST values. On 2 threads it pays only with the
# scratch row at the row's page offset (same_page_offset). Measurements, and the distances
# and forms that were no better: bench/README.md, "Prefetching in softmax and cross-entropy".

PREFETCH_BYTES = 8 << 10
PREFETCH_MIN_BYTES = THRESHOLDS["prefetch_min_bytes"]
LINE_BYTES = 64
BURST = 256


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask the CPU to bring the cache line of arr[index] (1-D array) into L1: llvm.prefetch
    (read, high locality, data). A hint: it never faults and changes no value."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1
            and isinstance(index, types.Integer)):
        return None
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = cgutils.get_item_pointer(context, builder, signature.args[0], array,
                                           [args[1]])
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(address, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def row_ahead(x, i, end):
    """The row of the 2-D x about PREFETCH_BYTES after row i (at least the next one), or
    an empty row if that row is not before row end."""
    lead = max(1, PREFETCH_BYTES // max(1, x.shape[1] * x.itemsize))
    return x[i + lead] if i + lead < end else x[i, :0]


@njit(cache=True, inline="always")
def prefetch_burst(ahead, start):
    """Prefetch ahead[start:start + BURST] (1-D; nothing where ahead ends), one line per
    64 bytes."""
    for j in range(start, min(start + BURST, ahead.shape[0]), LINE_BYTES // ahead.itemsize):
        prefetch(ahead, j)


@njit(cache=True, inline="always")
def burst(start, n):
    """range(start, min(start + BURST, n)) as uint64: the loop over it vectorizes. With
    signed indices it does not (Numba wraps negative indices, and a loop that starts
    anywhere but 0 may reach them)."""
    return range(np.uint64(start), np.uint64(min(start + BURST, n)))


PAGE_BYTES = 4096


def scratch_rows(bands, cols, dtype):
    """Scratch rows, one per band (thread), for same_page_offset: PAGE_BYTES + LINE_BYTES
    longer than cols, so that the slices of two bands never share a cache line (cols 0:
    rows of 0, for a kernel that needs none)."""
    pad = (PAGE_BYTES + LINE_BYTES) // np.dtype(dtype).itemsize if cols else 0
    return np.empty((bands, cols + pad), dtype)


@njit(cache=True, inline="always")
def same_page_offset(scratch_row, row):
    """The row.shape[0] values of scratch_row (from scratch_rows) that start at the same
    offset within a 4 KiB page as row. The exp pass loads row ahead of its stores to the
    scratch; a store whose low 12 address bits match a later load's makes the CPU wait
    for a false dependency ("4K aliasing"; bench/README.md, "4K aliasing")."""
    shift = ((row.ctypes.data - scratch_row.ctypes.data) % PAGE_BYTES) // row.itemsize
    return scratch_row[shift:shift + row.shape[0]]


@njit(fastmath=True, cache=True, inline="always")
def exp_shifted_sum(row, top, e_row, ahead):
    """e_row[j] = exp(row[j] - top) for top >= max(row); returns the sum of e_row. Prefetches
    the 1-D array ahead (empty: nothing) meanwhile, in bursts."""
    if ahead.shape[0] == 0:
        return _exp_shifted_sum(row, top, e_row)
    full = row.shape[0] - row.shape[0] % BURST
    total = row.dtype.type(0)
    for start in range(0, full, BURST):
        prefetch_burst(ahead, start)
        src, dst = row[start:start + BURST], e_row[start:start + BURST]
        for j in range(BURST):    # a constant trip count: faster than a slice's
            dst[j] = exp_nonpositive(src[j] - top)
        total += _sum(dst)
    prefetch_burst(ahead, full)
    return total + _exp_shifted_sum(row[full:], top, e_row[full:])


@njit(fastmath=True, cache=True, inline="always")
def _exp_shifted_sum(row, top, e_row):
    """exp_shifted_sum without prefetching. The loops start at 0: a loop from a start that
    may be negative does not vectorize (Numba wraps negative indices).

    The sum is a loop of its own over e_row. Summed in the loop that writes e_row, it
    depended on where e_row lay: LLVM vectorizes that loop behind a run-time check that
    e_row starts at least a vector's width past row, else runs it one element at a time,
    and the two add in different orders (fastmath). An output allocated right after its
    input then changed the last bits of a softmax or cross-entropy gradient."""
    for j in range(row.shape[0]):
        e_row[j] = exp_nonpositive(row[j] - top)
    return _sum(e_row)


@njit(fastmath=True, cache=True, inline="always")
def _sum(x):
    """The sum of a 1-D array, vectorized (its order depends only on its length)."""
    total = x.dtype.type(0)
    for j in range(x.shape[0]):
        total += x[j]
    return total


# --- streaming stores -------------------------------------------------------------------
#
# A plain store first reads the line it writes ("read for ownership"), so a kernel that
# writes a large output moves its bytes twice, and memcpy, which the copy bandwidth is
# measured with, does not. Streaming (non-temporal) stores write whole 64-byte lines
# without reading them and without keeping them in cache: softmax and cross-entropy use
# them for outputs of at least STREAM_MIN_BYTES (bench/README.md, "Streaming stores").
# Small outputs, which the next layer reads from cache, keep plain stores.

STREAM_MIN_BYTES = THRESHOLDS["stream_min_bytes"]
STREAM_BYTES = 64                     # one AVX-512 store


@intrinsic
def _stream_scaled(typingctx, dst, dst_start, src, src_start, scale):
    """dst[dst_start:+L] = src[src_start:+L] * scale, L = 64 / itemsize, by one streaming
    store; &dst[dst_start] must be 64-byte aligned; dst, src 1-D contiguous."""
    dtype = dst.dtype
    lanes = STREAM_BYTES * 8 // dtype.bitwidth
    sig = types.void(dst, types.intp, src, types.intp, dtype)

    def codegen(context, builder, signature, args):
        dst_arr, d0, src_arr, s0, factor = args
        vec = ir.VectorType(context.get_value_type(dtype), lanes)
        dst_ptr = context.make_array(signature.args[0])(context, builder, dst_arr).data
        src_ptr = context.make_array(signature.args[2])(context, builder, src_arr).data
        value = builder.load(builder.bitcast(builder.gep(src_ptr, [s0]), vec.as_pointer()),
                             align=dtype.bitwidth // 8)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        factors = builder.insert_element(ir.Constant(vec, ir.Undefined), factor,
                                         ir.Constant(ir.IntType(32), 0))
        value = builder.fmul(value, builder.shuffle_vector(factors, factors, splat))
        store = builder.store(value, builder.bitcast(builder.gep(dst_ptr, [d0]),
                                                     vec.as_pointer()), align=STREAM_BYTES)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def stream_fence(typingctx):
    """sfence on x86 (the fence Intel documents for streaming stores), a full fence
    elsewhere: streaming stores before it are visible to other threads after it."""
    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(fastmath=True, cache=True, inline="always")
def scale_row(dst, src, scale, stream):
    """dst[j] = src[j] * scale (dst may be src); with stream, the 64-byte aligned middle of
    dst by streaming stores (call stream_fence() before other threads read dst)."""
    n = dst.shape[0]
    if not stream:
        for j in range(n):
            dst[j] = src[j] * scale
        return
    lanes = STREAM_BYTES // dst.itemsize
    head = min(n, (-dst.ctypes.data % STREAM_BYTES) // dst.itemsize)
    for j in range(head):
        dst[j] = src[j] * scale
    j = head
    while j + lanes <= n:     # as a range loop LLVM unrolls it 8 times, which is slower
        _stream_scaled(dst, j, src, j, scale)
        j += lanes
    for k in range(j, n):
        dst[k] = src[k] * scale

_numba_config.stamp_kernel_caches(globals())
