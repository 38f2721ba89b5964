"""The C GEMM (csrc/gemm.h) called from Numba-compiled code, by address.

Numba can call a cffi function only through a constant address baked into the machine
code, which its on-disk cache refuses. Here the address is an ordinary int64 argument
and an intrinsic emits the call, so a kernel that calls the C GEMM is cached like any
other. ``c_addresses()`` gives the addresses to pass, from the loaded mlpfast._cgemm.

    sgemm(address, a, b, c, trans_b, bias, act)       c = act(a @ op(b) + bias)
    sgemm_at(address, a, b, c)                         c = a.T @ b
    sgemm_dact(address, a, b, c, y, dact)              c = (a @ b) * f'(y)
    sum_squares(address, x)                            sum of x^2 (NaN/inf if any x is)
    gather(address, src, index, out)                   out[i] = src[index[i]]
All arrays float32, C-contiguous; the caller has checked the shapes.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_I32, _I64, _F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_PTR = ir.PointerType(_F32)
# int mlpf_sgemm(int, int, int64 m, n, k, float alpha, const float *a, int64 lda,
#                const float *b, int64 ldb, float beta, float *c, int64 ldc,
#                const float *bias, int act)
_SGEMM = ir.FunctionType(_I32, [_I32, _I32, _I64, _I64, _I64, _F32, _PTR, _I64, _PTR, _I64,
                                _F32, _PTR, _I64, _PTR, _I32])
# int mlpf_sgemm_dact(int, int, int64 m, n, k, float alpha, const float *a, int64 lda,
#                     const float *b, int64 ldb, float *c, int64 ldc, const float *y,
#                     int64 ldy, int dact)
# int mlpf_sgather(const float *src, int64 src_rows, int64 ld, int64 cols,
#                  const int64 *index, int64 rows, float *out)
_GATHER = ir.FunctionType(_I32, [_PTR, _I64, _I64, _I64, ir.PointerType(_I64), _I64, _PTR])
# double mlpf_ssum_squares(const float *x, int64 n)
_SUM_SQUARES = ir.FunctionType(ir.DoubleType(), [_PTR, _I64])
_SGEMM_DACT = ir.FunctionType(_I32, [_I32, _I32, _I64, _I64, _I64, _F32, _PTR, _I64, _PTR,
                                     _I64, _PTR, _I64, _PTR, _I64, _I32])


def _codegen(fnty):
    """Lowering of a call through the address in the first argument: every other
    argument is cast to its C parameter type (pointers arrive as integers)."""
    def codegen(context, builder, signature, values):
        c_args = []
        for value, numba_type, want in zip(values[1:], signature.args[1:], fnty.args):
            if isinstance(want, ir.PointerType):
                value = context.cast(builder, value, numba_type, types.intp)
                c_args.append(builder.inttoptr(value, want))
            elif want == _F32:
                c_args.append(context.cast(builder, value, numba_type, types.float32))
            else:
                c_args.append(context.cast(builder, value, numba_type,
                                           types.int32 if want == _I32 else types.int64))
        address = context.cast(builder, values[0], signature.args[0], types.intp)
        return builder.call(builder.inttoptr(address, fnty.as_pointer()), c_args)
    return codegen


@intrinsic
def _call_sgemm(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc, bias, act):
    sig = types.int32(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                      bias, act)
    return sig, _codegen(_SGEMM)


@intrinsic
def _call_sgemm_dact(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, c,
                     ldc, y, ldy, dact):
    sig = types.int32(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, c, ldc, y,
                      ldy, dact)
    return sig, _codegen(_SGEMM_DACT)


@intrinsic
def _call_sum_squares(typingctx, address, x, n):
    return types.float64(address, x, n), _codegen(_SUM_SQUARES)


@intrinsic
def _call_gather(typingctx, address, src, src_rows, ld, cols, index, rows, out):
    return types.int32(address, src, src_rows, ld, cols, index, rows, out), _codegen(_GATHER)


@njit(cache=True)
def sgemm(address, a, b, c, trans_b, bias, act):
    """c (m, n) = act(a (m, k) @ op(b) + bias): op(b) = b (k, n), or b.T for b (n, k) when
    trans_b; bias (n,) or empty for none; act 0 identity, 1 relu. Returns the C status."""
    m, k = a.shape
    n = c.shape[1]
    bias_address = bias.ctypes.data if bias.shape[0] else 0
    return _call_sgemm(address, 0, 1 if trans_b else 0, m, n, k, 1.0, a.ctypes.data, k,
                       b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n, bias_address, act)


@njit(cache=True)
def sgemm_at(address, a, b, c):
    """c (m, n) = a.T @ b for a (k, m), b (k, n). Returns the C status."""
    k, m = a.shape
    n = b.shape[1]
    return _call_sgemm(address, 1, 0, m, n, k, 1.0, a.ctypes.data, m, b.ctypes.data, n, 0.0,
                       c.ctypes.data, n, 0, 0)


@njit(cache=True)
def sgemm_dact(address, a, b, c, y, dact):
    """c (m, n) = (a (m, k) @ b (k, n)) * f'(y), y (m, n); dact 1 relu, 2 sigmoid, 3 tanh."""
    m, k = a.shape
    n = b.shape[1]
    return _call_sgemm_dact(address, 0, 0, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n,
                            c.ctypes.data, n, y.ctypes.data, n, dact)


@njit(cache=True)
def sum_squares(address, x):
    """sum of x^2 over the 1-D x, on the C GEMM's threads (mlpf_ssum_squares)."""
    return _call_sum_squares(address, x.ctypes.data, x.shape[0])


@njit(cache=True)
def gather(address, src, index, out):
    """out (B, D) = src[index] for src (N, D) float32, index (B,) int64, on the C GEMM's
    threads (mlpf_sgather). Returns the C status (nonzero: an index outside [0, N))."""
    return _call_gather(address, src.ctypes.data, src.shape[0], src.shape[1], src.shape[1],
                        index.ctypes.data, index.shape[0], out.ctypes.data)


NAMES = ("mlpf_sgemm", "mlpf_sgemm_dact", "mlpf_ssum_squares", "mlpf_sgather")


def c_addresses():
    """The addresses of the C functions in NAMES, as ints, from the loaded C extension."""
    from .gemm import _c_lib
    lib = _c_lib()
    ffi = lib.ffi
    return tuple(int(ffi.cast("intptr_t", ffi.addressof(lib.lib, name))) for name in NAMES)
