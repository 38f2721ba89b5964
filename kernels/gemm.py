"""GEMM: C = alpha * op(A) @ op(B) + beta * C.

Versions, in order of complexity:
    numpy   gemm_ref      reference; computes in the inputs' dtype with NumPy's matmul
    numba   gemm_numba    Numba: packed op(B) panels, rank-4 updates vectorized by LLVM,
                          prange over blocks of C; A @ B.T as 4x4 blocks of dot products
                          (see "Numba GEMM" below); gemm_numba_fused adds bias + relu
    c       gemm_c        the C GEMM in csrc/ called through cffi (mlpfast._cgemm): packed,
                          cache-blocked, threaded, AVX-512 / AVX2 / portable micro-kernel
                          chosen at run time (c_kernel_name(), set_c_kernel(),
                          MLPFAST_GEMM_KERNEL); gemm_c_fused adds bias + relu in the epilogue

Every entry of ``VARIANTS`` is callable as

    f(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> out

with op(A) of shape (m, k), op(B) of shape (k, n) and out of shape (m, n).
When beta == 0, ``out`` is never read.
"""
import os
import threading

import numpy as np
from numba import njit, prange

from . import _numba_config
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

_CGEMM = []     # the loaded mlpfast._cgemm, once imported


def _c_lib():
    if not _CGEMM:
        from .. import _cgemm  # compiled by `pip install -e .` from csrc/
        _CGEMM.append(_cgemm)
    return _CGEMM[0]


def _c_layout(a, name):
    """(transposed, ld) of 2-D ``a`` for the C API, which reads row-major matrices.

    Rows unit-stride (C order, row-strided views): (False, row stride in elements).
    Columns unit-stride (F order, e.g. ``x.T``): a is the transpose of a row-major
    matrix, so the caller flips its trans flag: (True, column stride in elements).
    """
    rows, cols = a.shape
    item = a.itemsize
    if a.size == 0:
        return False, max(cols, 1)
    if not a.flags.aligned or a.strides[0] % item or a.strides[1] % item:
        raise ValueError(f"{name} must be aligned to its itemsize, got strides {a.strides}")
    row_step, col_step = a.strides[0] // item, a.strides[1] // item
    if cols == 1 or col_step == 1:
        ld = row_step if rows > 1 else cols
        if ld >= cols:
            return False, ld
    if rows == 1 or row_step == 1:
        ld = col_step if cols > 1 else rows
        if ld >= rows:
            return True, ld
    raise ValueError(f"{name} must have unit stride along one axis and non-overlapping, "
                     f"increasing rows (got shape {a.shape}, strides {a.strides}); "
                     f"pass np.ascontiguousarray({name})")


_C_ERRORS = {-1: "negative size", -2: "row stride too small", -3: "unknown activation",
             -4: "out of memory for packing buffers", -5: "NULL pointer", -6: "bad kernel"}


def gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, act):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias) in one pass of the C GEMM.

    op(a) is (m, k), op(b) is (k, n); bias is None or a contiguous (n,) vector added to
    every row; act is 0 (identity) or 1 (relu), applied while each tile is in registers.
    a and b may be row-strided or transposed (F-order) views; out must have unit stride
    along its rows and may not overlap a, b or bias. When beta == 0, out is never read.
    """
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    if act not in (0, 1):
        raise ValueError(f"act must be 0 (identity) or 1 (relu), got {act!r}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != a.dtype or bias.shape != (n,):
            raise ValueError(f"bias must be a {a.dtype} array of shape ({n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} "
                             f"{getattr(bias, 'shape', '')}")
        if not bias.flags.c_contiguous:
            raise ValueError("bias must be contiguous; pass np.ascontiguousarray(bias)")
        if out is not None and np.shares_memory(out, bias):
            raise ValueError("out must not overlap input bias")
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    fn, pointer, ta, tb, lda, ldb, ldc = _c_operands(a, b, out, trans_a, trans_b, "gemm")
    rc = fn(ta, tb, m, n, k, float(alpha), pointer(a), lda, pointer(b), ldb, float(beta),
            pointer(out), ldc, pointer(bias), act)
    if rc != 0:   # the checks above should make this unreachable
        raise RuntimeError(f"mlpf gemm failed: {_C_ERRORS.get(rc, rc)}")
    return out


def _c_operands(a, b, out, trans_a, trans_b, entry):
    """(C function, pointer(array), trans_a, trans_b, lda, ldb, ldc) for a C call on a, b,
    out: entry "gemm" is mlpf_sgemm/mlpf_dgemm, "gemm_dact" mlpf_sgemm_dact/..._dact."""
    flip_a, lda = _c_layout(a, "a")
    flip_b, ldb = _c_layout(b, "b")
    out_transposed, ldc = _c_layout(out, "out")
    if out_transposed:
        raise ValueError(f"out must have unit stride along its last axis (got shape "
                         f"{out.shape}, strides {out.strides}); pass a C-ordered array")
    lib = _c_lib()
    ffi, clib = lib.ffi, lib.lib
    single = a.dtype == np.float32
    fn = getattr(clib, f"mlpf_{'s' if single else 'd'}{entry}")
    ctype = "float" if single else "double"

    def pointer(x):      # from_buffer is the fast path for C-contiguous arrays
        if x is None:
            return ffi.NULL
        if x.flags.c_contiguous:
            return ffi.from_buffer(ctype + "[]", x)
        return ffi.cast(ctype + " *", x.ctypes.data)

    return (fn, pointer, int(bool(trans_a) != flip_a), int(bool(trans_b) != flip_b), lda, ldb,
            ldc)


def gemm_c_dact(a, b, out, y, dact):
    """out = (a @ b) * f'(y) in one pass of the C GEMM (csrc/gemm.h, mlpf_sgemm_dact):
    dact 1 relu [y > 0], 2 sigmoid y (1 - y), 3 tanh 1 - y^2. a (m, k), b (k, n), y and
    out (m, n); out must not overlap a, b or y. The caller checks shapes and dtypes."""
    m, n = out.shape
    if m == 0 or n == 0:
        return out
    fn, pointer, ta, tb, lda, ldb, ldc = _c_operands(a, b, out, False, False, "gemm_dact")
    y_transposed, ldy = _c_layout(y, "y")
    if y_transposed:                        # the C side reads y by rows
        y, ldy = np.ascontiguousarray(y), n
    rc = fn(ta, tb, m, n, a.shape[1], 1.0, pointer(a), lda, pointer(b), ldb, pointer(out), ldc,
            pointer(y), ldy, dact)
    if rc != 0:
        raise RuntimeError(f"mlpf gemm_dact failed: {_C_ERRORS.get(rc, rc)}")
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


C_KERNEL_FAMILIES = ("avx512", "avx2", "portable")   # best first


def c_kernel_name():
    """The C sgemm micro-kernel in use, e.g. "sgemm_avx512_12x32"."""
    lib = _c_lib()
    return lib.ffi.string(lib.lib.mlpf_kernel_name()).decode()


def set_c_kernel(name):
    """Selects the C sgemm micro-kernel: "auto" (the best this CPU runs), a family from
    C_KERNEL_FAMILIES or a full kernel name as c_kernel_name() returns it."""
    if not isinstance(name, str) or _c_lib().lib.mlpf_set_kernel(name.encode()) != 0:
        raise ValueError(f"kernel must be 'auto' or one of {c_kernels()} (the families this "
                         f"CPU supports, or their full names), got {name!r}")


def c_kernels():
    """The kernel families this CPU can run, best first."""
    lib = _c_lib().lib
    current = c_kernel_name().encode()
    supported = [name for name in C_KERNEL_FAMILIES if lib.mlpf_set_kernel(name.encode()) == 0]
    lib.mlpf_set_kernel(current)
    return supported


VARIANTS = {"numpy": gemm_ref}
if c_available():
    VARIANTS["c"] = gemm_c
    if os.environ.get("MLPFAST_GEMM_KERNEL"):     # e.g. "portable", to test a fallback
        try:
            set_c_kernel(os.environ["MLPFAST_GEMM_KERNEL"])
        except ValueError as err:
            raise ValueError(f"MLPFAST_GEMM_KERNEL: {err}") from None


# --- Numba GEMM ----------------------------------------------------------------------
#
# gemm_numba: C (m, n) = act(alpha * op(A) (m, k) @ op(B) (k, n) + beta * C + bias).
#
# Blocking. C is cut into blocks of GEMM_MC rows x nc columns, handed out in contiguous
# runs to the threads (prange over threads). For its block's columns a thread packs the
# panel op(B)[:, j0:j0+nc] once into its workspace as a contiguous (k4, nc) array
# (k4 = k rounded up to 4, zero rows below k), sized so that it stays in L2.
# Then, for each group of GEMM_MR rows, it accumulates into a (GEMM_MR, nc) tile of
# its workspace (in L1) by rank-4 updates:
#     tile[r, :] += sum_{q<4} op(A)[i+r, p+q] * panel[p+q, :]      for p = 0, 4, 8, ...
# Why this form: Numba has no vector variables, but LLVM vectorizes the loop over the
# tile's columns into AVX-512 FMAs, keeping the 16 op(A) scalars of a 4x4 block in
# registers and loading/storing each tile element once per 4 k-steps (4 FMAs). The
# inner-product form (k-loop innermost, 16 scalar accumulators) needs a horizontal sum
# per accumulator, which costs as much as the loop itself when k is a batch of 128.
# Last, C[i+r, j0:j0+nc] = act(alpha * tile[r] + beta * C[i+r] + bias) (C not read when
# beta == 0), so the linear layer's bias and ReLU cost no extra pass.
#
# A @ B.T with k >= DOT_MIN_K (the linear forward x @ W.T) skips the packing: both
# operands are k-contiguous, so 4x4 blocks of C are 16 dot products over the whole k
# (_dot_4x4: the k loop vectorized, 16 scalar accumulators, one horizontal sum each).
#
# Speed (bench/compare_gemm_numba.py, 1 thread, shared 2-core machine): 0.41-0.56x
# OpenBLAS (SkylakeX) at the MLP shapes and 256^3, 0.42x at 1024^3, 0.27x at 2048^3;
# the C GEMM (a register-blocked assembly-level micro-kernel) is at 1.0x. Tried and
# dropped: outer-product micro-kernels on scalar accumulators (LLVM vectorizes the k
# loop instead and spills), a stack-allocated tile (not promoted to registers), rank-8
# updates and 1024-wide blocks (no gain).

GEMM_MC = 64            # rows of C per parallel block
GEMM_MR = 8             # rows of C accumulated together (two 4-row updates per panel load)
GEMM_NC_MAX = 512       # columns of C per block (long rows amortize each update's setup)
GEMM_PANEL_BYTES = 3 << 19   # packed op(B) panel budget: 1.5 MiB of the 2 MiB L2
DOT_MIN_K = 256         # A @ B.T with k >= this: dot-product form, no packing (see below)
DOT_NC = 64             # columns of C per block in the dot-product form
ACT_CODES = {"identity": 0, "relu": 1}
# Rows of the panel and of the tile are ld elements apart, with ld * itemsize = 1 KiB
# (mod 4 KiB), and the tile starts 512 bytes (mod 4 KiB) after a panel row: the 4 panel
# rows and 4 tile rows of an update then sit 512 bytes apart modulo 4 KiB, so the
# loads never falsely depend on the tile stores in flight ("4K aliasing"); with
# ld * itemsize a multiple of 4 KiB an update runs at a third of the speed.
_ROW_BYTES_MOD_4K = 1024
_TILE_OFFSET_BYTES = 512


@njit(fastmath=True, cache=True)
def _op_a(a, trans_a, row, col, m, k):
    """op(A)[row, col], or 0 outside the (m, k) matrix."""
    if row >= m or col >= k:
        return a.dtype.type(0)
    return a[col, row] if trans_a else a[row, col]


@njit(fastmath=True, cache=True)
def _rank4_update(tile, r0, panel, p, nc, a, trans_a, i, m, k):
    """tile[r0:r0+4, :nc] += op(A)[i:i+4, p:p+4] @ panel[p:p+4, :nc] (rows >= m, k-steps >= k
    of op(A) read as 0)."""
    a00 = _op_a(a, trans_a, i, p, m, k); a01 = _op_a(a, trans_a, i, p + 1, m, k)
    a02 = _op_a(a, trans_a, i, p + 2, m, k); a03 = _op_a(a, trans_a, i, p + 3, m, k)
    a10 = _op_a(a, trans_a, i + 1, p, m, k); a11 = _op_a(a, trans_a, i + 1, p + 1, m, k)
    a12 = _op_a(a, trans_a, i + 1, p + 2, m, k); a13 = _op_a(a, trans_a, i + 1, p + 3, m, k)
    a20 = _op_a(a, trans_a, i + 2, p, m, k); a21 = _op_a(a, trans_a, i + 2, p + 1, m, k)
    a22 = _op_a(a, trans_a, i + 2, p + 2, m, k); a23 = _op_a(a, trans_a, i + 2, p + 3, m, k)
    a30 = _op_a(a, trans_a, i + 3, p, m, k); a31 = _op_a(a, trans_a, i + 3, p + 1, m, k)
    a32 = _op_a(a, trans_a, i + 3, p + 2, m, k); a33 = _op_a(a, trans_a, i + 3, p + 3, m, k)
    c0 = tile[r0]; c1 = tile[r0 + 1]; c2 = tile[r0 + 2]; c3 = tile[r0 + 3]
    b0 = panel[p]; b1 = panel[p + 1]; b2 = panel[p + 2]; b3 = panel[p + 3]
    for s in range(nc):
        x0 = b0[s]; x1 = b1[s]; x2 = b2[s]; x3 = b3[s]
        c0[s] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
        c1[s] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
        c2[s] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
        c3[s] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3


@njit(fastmath=True, cache=True)
def _pack_panel(b, trans_b, j0, nc, k, panel):
    """panel[p, s] = op(B)[p, j0 + s] for p < k, 0 for k <= p < k4; panel is (k4, >= nc)."""
    zero = panel.dtype.type(0)
    if trans_b:                   # B is (n, k): 16 rows of B at a time become 16 columns
        for s0 in range(0, nc, 16):
            for p in range(k):
                for s in range(s0, min(s0 + 16, nc)):
                    panel[p, s] = b[j0 + s, p]
    else:                                             # B is (k, n): copy row segments
        for p in range(k):
            src = b[p]
            dst = panel[p]
            for s in range(nc):
                dst[s] = src[j0 + s]
    for p in range(k, panel.shape[0]):
        for s in range(nc):
            panel[p, s] = zero


@njit(fastmath=True, cache=True)
def _gemm_numba_thread(t, a, trans_a, b, trans_b, c, alpha, beta, bias, act, nc_max, ld,
                       workspace):
    """Thread t's share of C = act(alpha op(A) op(B) + beta C + bias), act 1 = relu.

    workspace is (threads, size): per thread a (k4, ld) panel, then at an offset of
    _TILE_OFFSET_BYTES a (GEMM_MR, ld) tile. C is cut into GEMM_MC x nc_max blocks,
    ordered column-block-major, and thread t takes a contiguous run of them, so it
    packs each panel op(B)[:, j0:j0+nc] once.
    """
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    k4 = (k + 3) // 4 * 4
    zero = c.dtype.type(0)
    tile_start = k4 * ld + _TILE_OFFSET_BYTES // c.itemsize
    panel = workspace[t, :k4 * ld].reshape((k4, ld))
    tile = workspace[t, tile_start:tile_start + GEMM_MR * ld].reshape((GEMM_MR, ld))
    row_blocks = (m + GEMM_MC - 1) // GEMM_MC
    blocks = row_blocks * ((n + nc_max - 1) // nc_max)
    threads = workspace.shape[0]
    packed_col_block = -1
    for blk in range(t * blocks // threads, (t + 1) * blocks // threads):
        col_block, row_block = blk // row_blocks, blk % row_blocks
        j0 = col_block * nc_max
        nc = min(nc_max, n - j0)
        if col_block != packed_col_block:
            _pack_panel(b, trans_b, j0, nc, k, panel)
            packed_col_block = col_block
        for i in range(row_block * GEMM_MC, min(m, (row_block + 1) * GEMM_MC), GEMM_MR):
            for r in range(GEMM_MR):
                tile_row = tile[r]
                for s in range(nc):
                    tile_row[s] = zero
            for p in range(0, k4, 4):
                for r0 in range(0, GEMM_MR, 4):
                    if i + r0 < m:
                        _rank4_update(tile, r0, panel, p, nc, a, trans_a, i + r0, m, k)
            for r in range(min(GEMM_MR, m - i)):          # epilogue: C rows from the tile
                out_row = c[i + r]
                acc = tile[r]
                for s in range(nc):
                    v = alpha * acc[s]
                    if beta != zero:
                        v += beta * out_row[j0 + s]
                    if bias.shape[0] > 0:
                        v += bias[j0 + s]
                    if act == 1 and v < zero:
                        v = zero
                    out_row[j0 + s] = v


@njit(parallel=True, cache=True)
def _gemm_numba_kernel(a, trans_a, b, trans_b, c, alpha, beta, bias, act, nc_max, ld, workspace):
    for t in prange(workspace.shape[0]):
        _gemm_numba_thread(t, a, trans_a, b, trans_b, c, alpha, beta, bias, act, nc_max, ld,
                           workspace)


@njit(fastmath=True, cache=True)
def _dot_4x4(a, i, b, j, k, out):
    """out[r, q] = sum_p a[i+r, p] * b[j+q, p] (rows past the ends count as row i / j):
    16 scalar accumulators, the p loop vectorized by LLVM."""
    m, n = a.shape[0], b.shape[0]
    a0 = a[i]; a1 = a[min(i + 1, m - 1)]; a2 = a[min(i + 2, m - 1)]; a3 = a[min(i + 3, m - 1)]
    b0 = b[j]; b1 = b[min(j + 1, n - 1)]; b2 = b[min(j + 2, n - 1)]; b3 = b[min(j + 3, n - 1)]
    zero = out.dtype.type(0)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
    for p in range(k):
        x0 = a0[p]; x1 = a1[p]; x2 = a2[p]; x3 = a3[p]
        y0 = b0[p]; y1 = b1[p]; y2 = b2[p]; y3 = b3[p]
        c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3
        c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3
        c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3
        c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3
    out[0, 0] = c00; out[0, 1] = c01; out[0, 2] = c02; out[0, 3] = c03
    out[1, 0] = c10; out[1, 1] = c11; out[1, 2] = c12; out[1, 3] = c13
    out[2, 0] = c20; out[2, 1] = c21; out[2, 2] = c22; out[2, 3] = c23
    out[3, 0] = c30; out[3, 1] = c31; out[3, 2] = c32; out[3, 3] = c33


@njit(fastmath=True, cache=True)
def _gemm_dot_thread(t, threads, a, b, c, alpha, beta, bias, act, tile):
    """Thread t's share of C = act(alpha A @ B.T + beta C + bias), A (m, k), B (n, k):
    blocks of GEMM_MC x DOT_NC, 4x4 dot products over the whole k."""
    m, n = c.shape
    k = a.shape[1]
    zero = c.dtype.type(0)
    row_blocks = (m + GEMM_MC - 1) // GEMM_MC
    blocks = row_blocks * ((n + DOT_NC - 1) // DOT_NC)
    for blk in range(t * blocks // threads, (t + 1) * blocks // threads):
        col_block, row_block = blk // row_blocks, blk % row_blocks
        for i in range(row_block * GEMM_MC, min(m, (row_block + 1) * GEMM_MC), 4):
            for j in range(col_block * DOT_NC, min(n, (col_block + 1) * DOT_NC), 4):
                _dot_4x4(a, i, b, j, k, tile)
                for r in range(min(4, m - i)):
                    for q in range(min(4, n - j)):
                        v = alpha * tile[r, q]
                        if beta != zero:
                            v += beta * c[i + r, j + q]
                        if bias.shape[0] > 0:
                            v += bias[j + q]
                        if act == 1 and v < zero:
                            v = zero
                        c[i + r, j + q] = v


@njit(parallel=True, cache=True)
def _gemm_dot_kernel(a, b, c, alpha, beta, bias, act, workspace):
    for t in prange(workspace.shape[0]):
        _gemm_dot_thread(t, workspace.shape[0], a, b, c, alpha, beta, bias, act,
                         workspace[t, :16].reshape((4, 4)))


class _Workspace(threading.local):
    """Per Python thread, per dtype: gemm_numba's packing buffers, 4 KiB aligned, reused."""

    def get(self, dtype, threads, size):
        buffers = self.__dict__.setdefault("buffers", {})
        row = -(-size * dtype.itemsize // 4096) * 4096 // dtype.itemsize   # whole 4 KiB pages
        buf = buffers.get(dtype)
        if buf is None or buf.shape[0] < threads or buf.shape[1] < row:
            rows = threads
            if buf is not None:                       # grow both ways: no churn between calls
                rows, row = max(rows, buf.shape[0]), max(row, buf.shape[1])
            raw = np.empty(rows * row + 4096 // dtype.itemsize, dtype=dtype)
            skip = (-raw.ctypes.data % 4096) // dtype.itemsize
            buf = raw[skip:skip + rows * row].reshape(rows, row)
            buffers[dtype] = buf
        return buf[:threads]


_WORKSPACE = _Workspace()
_NO_BIAS = {np.dtype(np.float32): np.empty(0, np.float32),
            np.dtype(np.float64): np.empty(0, np.float64)}


def _gemm_numba_blocks(k, n, itemsize):
    """(nc, ld, workspace elements per thread) for op(B) with k rows and n columns."""
    k4 = (k + 3) // 4 * 4
    row_step = 4096 // itemsize                       # ld = 1 KiB worth, plus 4 KiB steps
    nc = min(GEMM_NC_MAX, (n + 15) // 16 * 16)
    while nc > 64 and k4 * nc * itemsize > GEMM_PANEL_BYTES:
        nc //= 2
    ld = _ROW_BYTES_MOD_4K // itemsize
    while ld < nc:
        ld += row_step
    size = k4 * ld + _TILE_OFFSET_BYTES // itemsize + GEMM_MR * ld
    return nc, ld, size


def gemm_numba_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, activation):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias); act is "identity" or "relu"."""
    if activation not in ACT_CODES:
        raise ValueError(f"activation must be one of {tuple(ACT_CODES)}, got {activation!r}")
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    if bias is not None and (bias.shape != (n,) or bias.dtype != a.dtype
                             or not bias.flags.c_contiguous):
        raise ValueError(f"bias must be a contiguous {a.dtype} array of shape ({n},), got "
                         f"{bias.dtype} {bias.shape}")
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    dtype = a.dtype.type
    if bias is None:
        bias = _NO_BIAS[a.dtype]
    if trans_b and not trans_a and k >= DOT_MIN_K and a.strides[1] == b.strides[1] == a.itemsize:
        blocks = -(-m // GEMM_MC) * -(-n // DOT_NC)
        tiles = _WORKSPACE.get(a.dtype, min(_numba_config.get_threads(), blocks), 16)
        _numba_config.parallel_call(_gemm_dot_kernel, a, b, out, dtype(alpha), dtype(beta), bias,
                                    ACT_CODES[activation], tiles, work=m * n * k)
        return out
    nc, ld, size = _gemm_numba_blocks(k, n, a.itemsize)
    blocks = -(-m // GEMM_MC) * -(-n // nc)
    workspace = _WORKSPACE.get(a.dtype, min(_numba_config.get_threads(), blocks), size)
    _numba_config.parallel_call(_gemm_numba_kernel, a, trans_a, b, trans_b, out, dtype(alpha),
                                dtype(beta), bias, ACT_CODES[activation], nc, ld, workspace,
                                work=m * n * k)
    return out


def gemm_numba(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, in Numba (see the block comment above)."""
    return gemm_numba_fused(a, b, out, trans_a, trans_b, alpha, beta, None, "identity")


VARIANTS["numba"] = gemm_numba
