"""GEMM: C = alpha * op(A) @ op(B) + beta * C.

Versions, in order of complexity:
    numpy   gemm_ref      reference; computes in the inputs' dtype with NumPy's matmul
    c       gemm_c        the C GEMM in csrc/ called through cffi (mlpfast._cgemm)

Every entry of ``VARIANTS`` is callable as

    f(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> out

with op(A) of shape (m, k), op(B) of shape (k, n) and out of shape (m, n).
When beta == 0, ``out`` is never read.
"""
import numpy as np

from ._checks import check_gemm_args


def gemm_ref(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out. a: (m,k) or (k,m); b: (k,n) or (n,k)."""
    m, n, _ = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    product = op_a @ op_b
    if alpha != 1.0:
        product *= a.dtype.type(alpha)
    if out is None:
        return product
    if beta == 0.0:
        out[...] = product
    else:
        out *= out.dtype.type(beta)
        out += product
    return out


# --- C GEMM through cffi ------------------------------------------------------------

def _c_lib():
    from .. import _cgemm  # compiled by `pip install -e .` from csrc/
    return _cgemm


def _row_stride(a, name):
    """Row stride in elements of a 2-D array whose rows are unit-stride."""
    item = a.itemsize
    if a.shape[1] > 1 and a.strides[1] != item:
        raise ValueError(f"{name} must have unit stride along its last axis "
                         f"(got strides {a.strides}); pass np.ascontiguousarray({name})")
    if a.strides[0] % item:
        raise ValueError(f"{name} row stride {a.strides[0]} is not a multiple of its itemsize")
    return max(a.strides[0] // item, a.shape[1], 1)


def gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, act):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias); act 0 = identity, 1 = relu."""
    lib = _c_lib()
    ffi, clib = lib.ffi, lib.lib
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    ctype = "float *" if a.dtype == np.float32 else "double *"
    fn = clib.mlpf_sgemm if a.dtype == np.float32 else clib.mlpf_dgemm
    lda, ldb, ldc = _row_stride(a, "a"), _row_stride(b, "b"), _row_stride(out, "out")
    bias_ptr = ffi.NULL if bias is None else ffi.cast(ctype, bias.ctypes.data)
    rc = fn(int(trans_a), int(trans_b), m, n, k, float(alpha),
            ffi.cast(ctype, a.ctypes.data), lda, ffi.cast(ctype, b.ctypes.data), ldb,
            float(beta), ffi.cast(ctype, out.ctypes.data), ldc, bias_ptr, act)
    if rc != 0:
        raise RuntimeError(f"mlpf gemm failed with code {rc}")
    return out


def gemm_c(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, in C (see csrc/gemm.h)."""
    return gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, None, 0)


def c_available():
    try:
        _c_lib()
        return True
    except ImportError:
        return False


VARIANTS = {"numpy": gemm_ref}
if c_available():
    VARIANTS["c"] = gemm_c
