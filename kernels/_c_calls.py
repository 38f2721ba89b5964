"""The C library (csrc/gemm.h) called from Numba-compiled code, by address.

Numba can call a cffi function only through a constant address baked into the machine
code, which its on-disk cache refuses. Here the address is an ordinary int64 argument
and an intrinsic emits the call, so a kernel that calls C is cached like any other. The
intrinsic's LLVM prototype is built from the function's cffi type, so gemm.h stays the one
declaration of the C API. ``c_addresses()`` gives the addresses to pass.

    sgemm(address, a, b, c, trans_b, bias, act)       c = act(a @ op(b) + bias)
    sgemm_dact(address, a, b, c, y, dact)              c = (a @ b) * f'(y)
    sum_squares(address, x)                            sum of x^2 (NaN/inf if any x is)
    gather(address, src, index, out)                   out[i] = src[index[i]]
    gather_packed(address, src, index, packed)         the rows src[index], packed (mlpf_spack_b)
    sgemm_packed_a(address, packed_a, b, c, bias, act) c = act(a @ b.T + bias), a packed
    weight_grad(address, dz, h, packed_h, dw, db, squares)
                                                       dw = dz.T @ h (h in rows or packed),
                                                       db = dz.sum(0), squares[0] = their
                                                       sum of squares (NaN/inf if any is)
    narrow_backward(address, dz, w, h, dh, dw, db, dact, squares)
                                                       a narrow layer's dw = dz.T @ h, db,
                                                       dh = (dz @ w) * f'(h) in one pass
    dropout(address, x, out, keep, drop, step, scale)  out = keep x scale, Philox's keep
    sbgemm, sbgemm_at, sbgemm_dact                     the same in bf16 products (mlpf_sbgemm)
    adam(address, p, g, m, v, step_size, beta1, beta2, inv_bc2_sqrt, eps, wd, decay)
    sgd(address, p, g, buf, lr, momentum, nesterov, weight_decay, first_step)
    wake_threads(address, fmas)                        before a step: its largest GEMM's size
All arrays float32 (bf16 operands: uint16 bits; index int64; keep uint8), C-contiguous; the
caller has checked the shapes.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _numba_config
from ._c_library import c_library

NAMES = ("mlpf_sgemm", "mlpf_sgemm_dact", "mlpf_ssum_squares", "mlpf_sgather", "mlpf_sadam",
         "mlpf_ssgd", "mlpf_sbgemm", "mlpf_sbgemm_dact", "mlpf_sdropout", "mlpf_wake_threads",
         "mlpf_sgather_packed", "mlpf_sgemm_packed_a", "mlpf_sgemm_weight_grad",
         "mlpf_snarrow_backward")
_LLVM = {"int": ir.IntType(32), "int64_t": ir.IntType(64), "float": ir.FloatType(),
         "double": ir.DoubleType(), "void": ir.VoidType()}
_NUMBA = {"int": types.int32, "int64_t": types.int64, "float": types.float32,
          "double": types.float64, "void": types.void}


def _prototype(name):
    """(LLVM function type, Numba parameter types, Numba return type) of the C function
    ``name``, from its cffi type; pointers are passed as intp."""
    ctype = c_library().ffi.typeof(getattr(c_library().lib, name))
    pointer = ir.IntType(8).as_pointer()
    address = [t.kind in ("pointer", "function") for t in ctype.args]   # data or code
    fnty = ir.FunctionType(_LLVM[ctype.result.cname],
                           [pointer if a else _LLVM[t.cname] for a, t in zip(address, ctype.args)])
    params = [types.intp if a else _NUMBA[t.cname] for a, t in zip(address, ctype.args)]
    return fnty, params, _NUMBA[ctype.result.cname]


def _caller(name):
    """An intrinsic f(address, args) that calls the C function ``name`` at ``address``
    with the tuple ``args``: integers and floats are cast to the C parameter types,
    pointers arrive as integers (array.ctypes.data)."""
    @intrinsic
    def call(typingctx, address, args):
        fnty, params, restype = _prototype(name)
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")

        def codegen(context, builder, signature, values):
            items = cgutils.unpack_tuple(builder, values[1], len(params))
            c_args = []
            for value, given, param, want in zip(items, signature.args[1], params, fnty.args):
                value = context.cast(builder, value, given, param)
                c_args.append(builder.inttoptr(value, want)
                              if isinstance(want, ir.PointerType) else value)
            target = context.cast(builder, values[0], signature.args[0], types.intp)
            result = builder.call(builder.inttoptr(target, fnty.as_pointer()), c_args)
            return context.get_dummy_value() if restype == types.void else result
        return restype(address, args), codegen
    return call


(_sgemm_call, _sgemm_dact_call, _sum_squares_call, _gather_call, _adam_call, _sgd_call,
 _sbgemm_call, _sbgemm_dact_call, _dropout_call, _wake_threads_call, _gather_packed_call,
 _sgemm_packed_a_call, _weight_grad_call, _narrow_backward_call) = (
    _caller(name) for name in NAMES)


def element_type(a):
    """MLPF_TYPE_F32 (0) for a float32 array, MLPF_TYPE_BF16 (1) for bf16 bits (uint16)."""


@overload(element_type, jit_options={"cache": True})
def _element_type_impl(a):
    code = 1 if a.dtype == types.uint16 else 0
    return lambda a: code


@njit(cache=True)
def sgemm(address, a, b, c, trans_b, bias, act):
    """c (m, n) = act(a (m, k) @ op(b) + bias): op(b) = b (k, n), or b.T for b (n, k) when
    trans_b; bias (n,) or empty for none; act an MLPF_ACT_* code of mlpf_sgemm's epilogue.
    Returns the C status."""
    m, k = a.shape
    n = c.shape[1]
    bias_address = bias.ctypes.data if bias.shape[0] else 0
    return _sgemm_call(address, (0, 1 if trans_b else 0, m, n, k, 1.0, a.ctypes.data, k,
                                 b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n,
                                 bias_address, act))


@njit(cache=True)
def sgemm_dact(address, a, b, c, y, dact):
    """c (m, n) = (a (m, k) @ b (k, n)) * f'(y), y (m, n); dact an MLPF_ACT_* code of
    mlpf_sgemm_dact (relu, sigmoid, tanh)."""
    m, k = a.shape
    n = b.shape[1]
    return _sgemm_dact_call(address, (0, 0, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n,
                                      c.ctypes.data, n, y.ctypes.data, n, dact))


@njit(cache=True)
def sbgemm(address, a, b, c, trans_b, bias, act):
    """As ``sgemm`` in bf16 products with float32 sums (mlpf_sbgemm): a, b, c each float32
    or bf16 (uint16 bits); float32 operands are rounded to bf16 while packed, a bf16 c is
    rounded once when stored."""
    m, k = a.shape
    n = c.shape[1]
    bias_address = bias.ctypes.data if bias.shape[0] else 0
    return _sbgemm_call(address, (0, 1 if trans_b else 0, m, n, k, 1.0, a.ctypes.data,
                                  element_type(a), k, b.ctypes.data, element_type(b),
                                  b.shape[1], 0.0, c.ctypes.data, element_type(c), n,
                                  bias_address, act))


@njit(cache=True)
def sbgemm_at(address, a, b, c):
    """c (m, n) = a.T @ b in bf16 products (as ``sgemm_at``; types as ``sbgemm``)."""
    k, m = a.shape
    n = b.shape[1]
    return _sbgemm_call(address, (1, 0, m, n, k, 1.0, a.ctypes.data, element_type(a), m,
                                  b.ctypes.data, element_type(b), n, 0.0, c.ctypes.data,
                                  element_type(c), n, 0, 0))


@njit(cache=True)
def sbgemm_dact(address, a, b, c, y, dact):
    """c = (a @ b) * f'(y) in bf16 products (as ``sgemm_dact``; y float32 or bf16)."""
    m, k = a.shape
    n = b.shape[1]
    return _sbgemm_dact_call(address, (0, 0, m, n, k, 1.0, a.ctypes.data, element_type(a), k,
                                       b.ctypes.data, element_type(b), n, c.ctypes.data,
                                       element_type(c), n, y.ctypes.data, element_type(y), n,
                                       dact))


@njit(cache=True)
def sum_squares(address, x):
    """sum of x^2 over the 1-D x, on the C GEMM's threads (mlpf_ssum_squares)."""
    return _sum_squares_call(address, (x.ctypes.data, x.shape[0]))


@njit(cache=True)
def gather(address, src, index, out):
    """out (B, D) = src[index] for src (N, D) float32, index (B,) int64, on the C GEMM's
    threads (mlpf_sgather). Returns the C status (nonzero: an index outside [0, N))."""
    return _gather_call(address, (src.ctypes.data, src.shape[0], src.shape[1], src.shape[1],
                                  index.ctypes.data, index.shape[0], out.ctypes.data))


@njit(cache=True)
def gather_packed(address, src, index, packed):
    """The rows src[index] (B, D) written into ``packed`` (1-D float32, 64-byte aligned, at
    least mlpf_packed_b_floats(B, D) values) as a packed matrix (mlpf_spack_b's layout),
    which ``sgemm_packed_a`` and ``weight_grad`` read (mlpf_sgather_packed, no
    unpacked copy). Returns the C status."""
    return _gather_packed_call(address, (src.ctypes.data, src.shape[0], src.shape[1],
                                         src.shape[1], index.ctypes.data, index.shape[0], 0,
                                         packed.ctypes.data, packed.shape[0]))


@njit(cache=True)
def sgemm_packed_a(address, packed_a, rows, b, c, bias, act):
    """c (rows, n) = act(a @ b.T + bias) for b (n, k) and a (rows, k) packed in
    ``packed_a`` (mlpf_sgemm_packed_a); bias (n,) or empty. Returns the C status
    (MLPF_ERR_SHAPE when a was packed with another shape)."""
    n, k = b.shape
    bias_address = bias.ctypes.data if bias.shape[0] else 0
    return _sgemm_packed_a_call(address, (1, rows, n, k, 1.0, packed_a.ctypes.data,
                                          b.ctypes.data, k, 0.0, c.ctypes.data, n,
                                          bias_address, act))


@njit(cache=True)
def weight_grad(address, dz, h, packed_h, dw, db, squares):
    """dw (m, n) = dz.T @ h for dz (k, m) and h (k, n), h in rows or, when packed_h is not
    empty, packed there (by ``gather_packed``; h is then not read); db (m,) = dz.sum(0)
    unless db is empty; squares[0] (float64) = the sum of the squares of dw and db, NaN or
    inf when any of them is (mlpf_sgemm_weight_grad). Returns the C status."""
    k, m = dz.shape
    n = dw.shape[1]
    packed_address = packed_h.ctypes.data if packed_h.shape[0] else 0
    db_address = db.ctypes.data if db.shape[0] else 0
    return _weight_grad_call(address, (m, n, k, dz.ctypes.data, m, h.ctypes.data, h.shape[1],
                                       packed_address, dw.ctypes.data, n, db_address,
                                       squares.ctypes.data))


@njit(cache=True)
def narrow_backward(address, dz, w, h, dh, dw, db, dact, squares):
    """The backward pass of a layer with at most MLPF_NARROW_N outputs, reading h once:
    for dz (B, n), w (n, k) and h (B, k) the output of the activation of code dact (relu,
    sigmoid, tanh), dw (n, k) = dz.T @ h, db (n,) = dz.sum(0) unless db is empty, dh (B,
    k) = (dz @ w) * f'(h), squares[0] (float64) the sum of the squares of dw and db
    (mlpf_snarrow_backward). Returns the C status."""
    rows, n = dz.shape
    k = w.shape[1]
    db_address = db.ctypes.data if db.shape[0] else 0
    return _narrow_backward_call(address, (rows, n, k, dz.ctypes.data, n, w.ctypes.data, k,
                                           h.ctypes.data, k, dh.ctypes.data, k,
                                           dw.ctypes.data, k, db_address, dact,
                                           squares.ctypes.data))


@njit(cache=True)
def dropout(address, x, out, keep, drop, step, scale):
    """out (B, F) = keep x scale on the C GEMM's threads (mlpf_sdropout; out may be x): the
    mask of kernels/dropout.py at dropout step ``step`` (uint64), drop = (threshold, key
    lo, key hi, layer, ...) as uint64 words; keep (B, F) uint8 receives the mask, or has no
    columns for none. Returns the C status."""
    keep_address = keep.ctypes.data if keep.shape[1] else 0
    return _dropout_call(address, (x.ctypes.data, out.ctypes.data, keep_address, x.shape[0],
                                   x.shape[1], drop[0], drop[1], drop[2], drop[3],
                                   step & np.uint64(0xFFFFFFFF), step >> np.uint64(32), scale))


@njit(cache=True)
def adam(address, p, g, m, v, step_size, beta1, beta2, inv_bc2_sqrt, eps, weight_decay, decay):
    """One Adam/AdamW step over the 1-D p, g, m, v (mlpf_sadam). Returns the C status."""
    return _adam_call(address, (p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data,
                                p.shape[0], step_size, beta1, beta2, inv_bc2_sqrt, eps,
                                weight_decay, decay))


@njit(cache=True)
def sgd(address, p, g, buf, lr, momentum, nesterov, weight_decay, first_step):
    """One SGD step over the 1-D p, g, buf (mlpf_ssgd; buf unread without momentum)."""
    return _sgd_call(address, (p.ctypes.data, g.ctypes.data, buf.ctypes.data, p.shape[0], lr,
                               momentum, 1 if nesterov else 0, weight_decay,
                               1 if first_step else 0))


@njit(cache=True)
def wake_threads(address, fmas):
    """Wakes the C pool's sleeping workers when a GEMM of ``fmas`` multiply-adds would use
    them awake but not wake them itself (mlpf_wake_threads). Returns 1 when it woke them."""
    return _wake_threads_call(address, (np.float64(fmas),))


def c_addresses():
    """{name: address} of the C functions in NAMES, as ints, from the loaded C library."""
    lib = c_library()
    return {name: int(lib.ffi.cast("intptr_t", lib.ffi.addressof(lib.lib, name)))
            for name in NAMES}


_numba_config.stamp_kernel_caches(globals())
