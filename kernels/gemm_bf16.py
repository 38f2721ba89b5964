"""bf16 mixed-precision GEMM: C = act(alpha * op(A) @ op(B) + beta * C + bias), with the
operands rounded to bf16, their products summed in float32 and C stored as float32 or bf16.

NumPy has no bf16 dtype: a bf16 array here is np.uint16 holding the upper 16 bits of a
float32 (the same bits as torch.bfloat16). ``round_to_bf16`` and ``bf16_to_float32``
convert; a and b may each be float32 (rounded while packed) or bf16.

Versions, in order of complexity:
    numpy   sbgemm_ref   reference: operands rounded to bf16, products summed in float64,
                         alpha, beta C, bias and act in float64, then rounded to float32,
                         and from there to bf16 when out is bf16
    c       sbgemm_c     csrc/gemm_bf16.c through cffi (mlpf_sbgemm): packed, cache-blocked,
                         threaded, float32 sums; AMX-BF16, AVX512-BF16 or a portable
                         float32 emulation chosen at run time (C_KERNELS)

``VARIANTS[variant]`` maps op names to functions:
    "sbgemm":       f(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
                      bias=None, activation="identity", out_dtype=np.float32) -> out
    "sbgemm_dact":  f(a, b, y, dact, out=None, *, trans_a=False, trans_b=False, alpha=1.0,
                      out_dtype=np.float32) -> out = (alpha op(a) @ op(b)) * f'(y)
with op(a) (m, k), op(b) (k, n); out, y (m, n) float32 or bf16; bias a float32 (n,) or None;
activation "identity" or "relu"; dact "relu" [y > 0], "sigmoid" y (1 - y), "tanh" 1 - y^2.
out_dtype is the dtype of a new out (out=None): np.float32 or BF16. When beta == 0, out
is never read.
"""
import numbers

import numpy as np

from ._checks import check_out
from ._c_library import c_available, c_library
from .activations import c_code
from .gemm import C_DERIVATIVE, C_EPILOGUE, _C_ERRORS, CKernelChoice, _c_layout, _c_readable

BF16 = np.dtype(np.uint16)      # bf16 storage: the upper half of a float32
F32 = np.dtype(np.float32)
_C_TYPES = {F32: 0, BF16: 1}    # MLPF_TYPE_F32, MLPF_TYPE_BF16 of csrc/gemm.h
_C_BF16_ERRORS = {**_C_ERRORS, -7: "unknown element type"}


def round_to_bf16(x):
    """float32 array -> bf16 (uint16) array: round to nearest, ties to even; a NaN stays a
    (quiet) NaN, infinities stay infinite, values past the largest bf16 round to inf."""
    if not isinstance(x, np.ndarray) or x.dtype != F32:
        raise TypeError(f"x must be a float32 array, got {getattr(x, 'dtype', type(x).__name__)}")
    bits = x.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    quiet_nan = ((bits >> 16) | 0x40).astype(np.uint16)
    return np.where(np.isnan(x), quiet_nan, rounded)


def bf16_to_float32(h):
    """bf16 (uint16) array -> float32 array (exact)."""
    if not isinstance(h, np.ndarray) or h.dtype != BF16:
        raise TypeError(f"h must be a bf16 (uint16) array, got "
                        f"{getattr(h, 'dtype', type(h).__name__)}")
    return (h.astype(np.uint32) << 16).view(np.float32)


def _check_operand(x, name, ndim):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in _C_TYPES:
        raise TypeError(f"{name} must be float32 or bf16 (uint16), got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")


def _check_scalar(value, name):
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def _check_args(a, b, out, trans_a, trans_b, alpha, beta, out_dtype, inputs=()):
    """(m, n, k, out) for out (m, n) = op(a) (m, k) @ op(b) (k, n); out is created when None.
    inputs: further (name, array) pairs that out must not overlap."""
    _check_operand(a, "a", 2)
    _check_operand(b, "b", 2)
    _check_scalar(alpha, "alpha")
    _check_scalar(beta, "beta")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k_b:
        raise ValueError(f"inner dimensions differ: op(a) is {m}x{k}, op(b) is {k_b}x{n} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    if out is None:
        if np.dtype(out_dtype) not in _C_TYPES:
            raise TypeError(f"out_dtype must be float32 or bf16 (uint16), got {out_dtype!r}")
        if beta != 0.0:
            raise ValueError("beta != 0 needs an out array to accumulate into")
        return m, n, k, np.empty((m, n), out_dtype)
    _check_operand(out, "out", 2)
    check_out(out, (m, n), out.dtype, inputs=(("a", a), ("b", b)) + tuple(inputs))
    return m, n, k, out


def _check_bias(bias, n):
    if bias is None:
        return
    if not isinstance(bias, np.ndarray) or bias.dtype != F32 or bias.shape != (n,):
        raise ValueError(f"bias must be a float32 array of shape ({n},), got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} "
                         f"{getattr(bias, 'shape', '')}")
    if not bias.flags.c_contiguous:
        raise ValueError("bias must be contiguous; pass np.ascontiguousarray(bias)")


def _check_y(y, dact, m, n):
    if dact not in C_DERIVATIVE:
        raise ValueError(f"dact must be one of {C_DERIVATIVE}, got {dact!r}")
    _check_operand(y, "y", 2)
    if y.shape != (m, n):
        raise ValueError(f"y must have shape {(m, n)}, got {y.shape}")


# --- the reference -------------------------------------------------------------------

def _bf16_values(x):
    """The values x holds as bf16 (float32 x rounded first), in float64."""
    return bf16_to_float32(x if x.dtype == BF16 else round_to_bf16(x)).astype(np.float64)


def _as_float64(x):
    return bf16_to_float32(x).astype(np.float64) if x.dtype == BF16 else x.astype(np.float64)


def _store(out, z):
    """out = z (float64), rounded to float32, then to bf16 when out is bf16."""
    z32 = z.astype(np.float32)
    out[...] = round_to_bf16(z32) if out.dtype == BF16 else z32
    return out


def _product_ref(a, b, trans_a, trans_b, alpha):
    op_a, op_b = _bf16_values(a), _bf16_values(b)
    return alpha * ((op_a.T if trans_a else op_a) @ (op_b.T if trans_b else op_b))


def sbgemm_ref(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
               bias=None, activation="identity", out_dtype=F32):
    """out = act(alpha * bf16(op(a)) @ bf16(op(b)) + beta * out + bias), in float64."""
    if activation not in C_EPILOGUE:
        raise ValueError(f"activation must be one of {C_EPILOGUE}, got {activation!r}")
    m, n, k, out = _check_args(a, b, out, trans_a, trans_b, alpha, beta, out_dtype,
                               (("bias", bias),))
    _check_bias(bias, n)
    z = _product_ref(a, b, trans_a, trans_b, alpha)
    if beta != 0.0:
        z += beta * _as_float64(out)
    if bias is not None:
        z += bias
    if activation == "relu":
        z = np.maximum(z, 0)
    return _store(out, z)


def activation_derivative_ref(y, dact):
    """f'(z) written with f's output y (float64): relu [y > 0], sigmoid y (1 - y), tanh 1 - y^2."""
    y = _as_float64(y)
    if dact == "relu":
        return (y > 0).astype(np.float64)
    return y * (1 - y) if dact == "sigmoid" else 1 - y * y


def sbgemm_dact_ref(a, b, y, dact, out=None, *, trans_a=False, trans_b=False, alpha=1.0,
                    out_dtype=F32):
    """out = (alpha * bf16(op(a)) @ bf16(op(b))) * f'(y), in float64."""
    m, n, k, out = _check_args(a, b, out, trans_a, trans_b, alpha, 0.0, out_dtype,
                               (("y", y),))
    _check_y(y, dact, m, n)
    return _store(out, _product_ref(a, b, trans_a, trans_b, alpha) *
                  activation_derivative_ref(y, dact))


# --- C through cffi --------------------------------------------------------------------

def _c_pointer(x, ctype="char"):
    """x (an array or None) as a `ctype *` for the C API."""
    ffi = c_library().ffi
    if x is None:
        return ffi.NULL
    if x.flags.c_contiguous:
        return ffi.from_buffer(ctype + "[]", x)
    return ffi.cast(ctype + " *", x.ctypes.data)


def _c_operand(x, name, trans):
    """(trans, pointer, type, ld) of operand x: a transposed (F-order) view flips trans; a
    view without a unit-stride axis is copied (gemm._c_readable)."""
    x, flip, ld = _c_readable(x)
    return int(bool(trans) != flip), _c_pointer(x), _C_TYPES[x.dtype], ld


def _c_rows(x, name):
    """(pointer, type, ld) of x (out, y), which the C side reads by rows."""
    layout = _c_layout(x)
    if layout is None or layout[0]:
        raise ValueError(f"{name} must have unit stride along its last axis (got shape "
                         f"{x.shape}, strides {x.strides}); pass a C-ordered array")
    return _c_pointer(x), _C_TYPES[x.dtype], layout[1]


def sbgemm_c(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
             bias=None, activation="identity", out_dtype=F32):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias) in one pass of the C bf16 GEMM.

    a and b may be row-strided or transposed (F-order) views; out must have unit stride
    along its rows."""
    if activation not in C_EPILOGUE:
        raise ValueError(f"activation must be one of {C_EPILOGUE}, got {activation!r}")
    m, n, k, out = _check_args(a, b, out, trans_a, trans_b, alpha, beta, out_dtype,
                               (("bias", bias),))
    _check_bias(bias, n)
    if m == 0 or n == 0:
        return out
    trans_a, a_ptr, a_type, lda = _c_operand(a, "a", trans_a)
    trans_b, b_ptr, b_type, ldb = _c_operand(b, "b", trans_b)
    rc = c_library().lib.mlpf_sbgemm(trans_a, trans_b, m, n, k, float(alpha), a_ptr, a_type, lda,
                                  b_ptr, b_type, ldb, float(beta), *_c_rows(out, "out"),
                                  _c_pointer(bias, "float"), c_code(activation))
    if rc != 0:   # the checks above should make this unreachable
        raise RuntimeError(f"mlpf_sbgemm failed: {_C_BF16_ERRORS.get(rc, rc)}")
    return out


def sbgemm_dact_c(a, b, y, dact, out=None, *, trans_a=False, trans_b=False, alpha=1.0,
                  out_dtype=F32):
    """out = (alpha * op(a) @ op(b)) * f'(y) in one pass of the C bf16 GEMM (f' applied to
    each tile of out while it is in cache)."""
    m, n, k, out = _check_args(a, b, out, trans_a, trans_b, alpha, 0.0, out_dtype,
                               (("y", y),))
    _check_y(y, dact, m, n)
    if m == 0 or n == 0:
        return out
    layout = _c_layout(y)
    if layout is None or layout[0]:         # the C side reads y by rows
        y = np.ascontiguousarray(y)
    trans_a, a_ptr, a_type, lda = _c_operand(a, "a", trans_a)
    trans_b, b_ptr, b_type, ldb = _c_operand(b, "b", trans_b)
    rc = c_library().lib.mlpf_sbgemm_dact(trans_a, trans_b, m, n, k, float(alpha), a_ptr, a_type,
                                       lda, b_ptr, b_type, ldb, *_c_rows(out, "out"),
                                       *_c_rows(y, "y"), c_code(dact))
    if rc != 0:
        raise RuntimeError(f"mlpf_sbgemm_dact failed: {_C_BF16_ERRORS.get(rc, rc)}")
    return out


# The C bf16 micro-kernel: C_KERNELS.name() (the one in use, e.g. "sbgemm_amx_32x32"),
# C_KERNELS.select(name) ("auto": the best this CPU runs, a family of .families or a full
# name), C_KERNELS.supported() (the families this CPU and OS run, best first).
C_KERNELS = CKernelChoice("mlpf_sbgemm_kernel_name", "mlpf_set_sbgemm_kernel",
                          ("amx", "avx512bf16", "portable"))


VARIANTS = {"numpy": {"sbgemm": sbgemm_ref, "sbgemm_dact": sbgemm_dact_ref}}
if c_available():
    VARIANTS["c"] = {"sbgemm": sbgemm_c, "sbgemm_dact": sbgemm_dact_c}
