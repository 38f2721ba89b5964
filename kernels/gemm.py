"""GEMM: C = alpha * op(A) @ op(B) + beta * C.

Versions, in order of complexity:
    numpy   gemm_ref      reference; computes in the inputs' dtype with NumPy's matmul
    numba   gemm_numba    Numba: the C GEMM's packing and cache blocking around a 12 x NR
                          register-blocked micro-kernel written as LLVM IR through a Numba
                          intrinsic (see "Numba GEMM" below); gemm_numba_fused adds bias +
                          relu in the epilogue
    c       gemm_c        the C GEMM in csrc/ called through cffi (mlpfast._cgemm): packed,
                          cache-blocked, threaded, AVX-512 / AVX2 / portable micro-kernel
                          chosen at run time (c_kernel_name(), set_c_kernel(),
                          MLPFAST_GEMM_KERNEL); gemm_c_fused adds bias + relu in the epilogue

Every entry of ``VARIANTS`` is callable as

    f(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> out

with op(A) of shape (m, k), op(B) of shape (k, n) and out of shape (m, n).
When beta == 0, ``out`` is never read.
"""
import threading

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import env
from . import _numba_config, cpu_config
from ._c_library import c_available, c_library
from ._checks import check_gemm_args
from ._numba_math import IN_ORDER
from .activations import ELEMENTWISE, c_code


def gemm_ref(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out. a: (m,k) or (k,m); b: (k,n) or (n,k)."""
    m, n, _ = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    if out is not None and beta == 0.0:
        np.matmul(op_a, op_b, out=out)             # BLAS writes into out: no temporary
        if alpha != 1.0:
            out *= out.dtype.type(alpha)
        return out
    product = op_a @ op_b
    if alpha != 1.0:
        product *= a.dtype.type(alpha)
    if out is None:
        return product
    out *= out.dtype.type(beta)
    out += product
    return out


# --- C GEMM through cffi ------------------------------------------------------------

def _c_layout(a):
    """(transposed, ld) of 2-D ``a`` for the C API, which reads row-major matrices, or None
    when it cannot read ``a`` in place (no unit-stride axis, overlapping or decreasing
    rows, misaligned strides).

    Rows unit-stride (C order, row-strided views): (False, row stride in elements).
    Columns unit-stride (F order, e.g. ``x.T``): a is the transpose of a row-major
    matrix, so the caller flips its trans flag: (True, column stride in elements).
    """
    rows, cols = a.shape
    item = a.itemsize
    if a.size == 0:
        return False, max(cols, 1)
    if not a.flags.aligned or a.strides[0] % item or a.strides[1] % item:
        return None
    row_step, col_step = a.strides[0] // item, a.strides[1] // item
    if cols == 1 or col_step == 1:
        ld = row_step if rows > 1 else cols
        if ld >= cols:
            return False, ld
    if rows == 1 or row_step == 1:
        ld = col_step if cols > 1 else rows
        if ld >= rows:
            return True, ld
    return None


def _c_readable(a):
    """(a, transposed, ld): ``a`` itself when the C API reads it in place, else a C-ordered
    copy (a strided or reversed view)."""
    layout = _c_layout(a)
    if layout is None:
        a = np.ascontiguousarray(a)
        layout = _c_layout(a)
    return (a, *layout)


def _c_writable(out, beta):
    """``out`` when the C API writes it in place (unit stride along its rows), else a
    C-ordered array to compute into (holding out's values when beta != 0 reads them);
    the caller copies that result back into ``out``."""
    layout = _c_layout(out)
    if layout is not None and not layout[0]:
        return out
    return np.ascontiguousarray(out) if beta != 0 else np.empty(out.shape, out.dtype)


_C_ERRORS = {-1: "negative size", -2: "row stride too small", -3: "unknown activation",
             -4: "out of memory for packing buffers", -5: "NULL pointer", -6: "bad kernel",
             -8: "packed matrix not 64-byte aligned"}


def gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, act):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias) in one pass of the C GEMM.

    op(a) is (m, k), op(b) is (k, n); bias is None or an (n,) vector added to every row;
    act is the MLPF_ACT_* code of an activation in C_EPILOGUE, applied while each tile is
    in registers. Any view works: a, b and bias are read in place when the C API can
    (row-strided or transposed views) and copied otherwise; out is written in place when
    its rows have unit stride, else computed in a C-ordered array and copied back. out may
    not overlap a, b or bias. When beta == 0, out is never read.
    """
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    if act not in _C_EPILOGUE_CODES.values():
        raise ValueError(f"act must be the code of one of {C_EPILOGUE} "
                         f"({_C_EPILOGUE_CODES}), got {act!r}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != a.dtype or bias.shape != (n,):
            raise ValueError(f"bias must be a {a.dtype} array of shape ({n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} "
                             f"{getattr(bias, 'shape', '')}")
        if out is not None and np.shares_memory(out, bias):
            raise ValueError("out must not overlap input bias")
        bias = np.ascontiguousarray(bias)
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    c = _c_writable(out, beta)
    fn, pointer, a, b, ta, tb, lda, ldb, ldc = _c_operands(a, b, c, trans_a, trans_b, "gemm")
    rc = fn(ta, tb, m, n, k, float(alpha), pointer(a), lda, pointer(b), ldb, float(beta),
            pointer(c), ldc, pointer(bias), act)
    if rc != 0:   # the checks above should make this unreachable
        raise RuntimeError(f"mlpf gemm failed: {_C_ERRORS.get(rc, rc)}")
    if c is not out:
        out[...] = c
    return out


def _c_operands(a, b, c, trans_a, trans_b, entry):
    """(C function, pointer(array), a, b, trans_a, trans_b, lda, ldb, ldc) for a C call on
    a, b (copied when the C API cannot read them in place) and c (unit stride along its
    rows): entry "gemm" is mlpf_sgemm/mlpf_dgemm, "gemm_dact" mlpf_sgemm_dact/..._dact."""
    a, flip_a, lda = _c_readable(a)
    b, flip_b, ldb = _c_readable(b)
    ldc = _c_layout(c)[1]
    lib = c_library()
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

    return (fn, pointer, a, b, int(bool(trans_a) != flip_a), int(bool(trans_b) != flip_b),
            lda, ldb, ldc)


def gemm_c_dact(a, b, out, y, dact):
    """out = (a @ b) * f'(y) in one pass of the C GEMM (csrc/gemm.h, mlpf_sgemm_dact):
    dact the code of an activation in C_DERIVATIVE (relu [y > 0], sigmoid y (1 - y), tanh
    1 - y^2). a (m, k), b (k, n), y and out (m, n); any views, as in gemm_c_fused; out
    must not overlap a, b or y. The caller checks shapes and dtypes."""
    m, n = out.shape
    if m == 0 or n == 0:
        return out
    c = _c_writable(out, 0.0)
    fn, pointer, a, b, ta, tb, lda, ldb, ldc = _c_operands(a, b, c, False, False, "gemm_dact")
    y, y_transposed, ldy = _c_readable(y)
    if y_transposed:                        # the C side reads y by rows
        y, ldy = np.ascontiguousarray(y), n
    rc = fn(ta, tb, m, n, a.shape[1], 1.0, pointer(a), lda, pointer(b), ldb, pointer(c), ldc,
            pointer(y), ldy, dact)
    if rc != 0:
        raise RuntimeError(f"mlpf gemm_dact failed: {_C_ERRORS.get(rc, rc)}")
    if c is not out:
        out[...] = c
    return out


def gemm_c(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, in C (see csrc/gemm.h)."""
    return gemm_c_fused(a, b, out, trans_a, trans_b, alpha, beta, None, 0)


class CKernelChoice:
    """The run-time choice of one C micro-kernel family among `families` (best first),
    through the C library's functions named `name_fn` (the kernel in use) and
    `select_fn` ("auto", a family or a full name; nonzero when this CPU cannot run it)."""

    def __init__(self, name_fn, select_fn, families):
        self.name_fn, self.select_fn, self.families = name_fn, select_fn, families

    def name(self):
        lib = c_library()
        return lib.ffi.string(getattr(lib.lib, self.name_fn)()).decode()

    def _select(self, name):
        return getattr(c_library().lib, self.select_fn)(name.encode())

    def select(self, name):
        if not isinstance(name, str) or self._select(name) != 0:
            raise ValueError(f"kernel must be 'auto' or one of {self.supported()} (the families "
                             f"this CPU supports, or their full names), got {name!r}")

    def supported(self):
        current = self.name()
        families = [family for family in self.families if self._select(family) == 0]
        self._select(current)
        return families


C_KERNEL_FAMILIES = ("avx512", "avx2", "portable")   # best first
_SGEMM_KERNELS = CKernelChoice("mlpf_kernel_name", "mlpf_set_kernel", C_KERNEL_FAMILIES)


def c_kernel_name():
    """The C sgemm micro-kernel in use, e.g. "sgemm_avx512_12x32"."""
    return _SGEMM_KERNELS.name()


def set_c_kernel(name):
    """Selects the C sgemm micro-kernel: "auto" (the best this CPU runs), a family from
    C_KERNEL_FAMILIES or a full kernel name as c_kernel_name() returns it."""
    _SGEMM_KERNELS.select(name)


def c_kernels():
    """The kernel families this CPU can run, best first."""
    return _SGEMM_KERNELS.supported()


def _c_accepts(entry, code):
    """Whether the C entry point mlpf_sgemm ("epilogue") or mlpf_sgemm_dact ("derivative")
    takes activation ``code``: asked with an empty product, as the library checks the code
    before the sizes (csrc/gemm.h is the one statement of what each entry point applies)."""
    lib = c_library()
    null = lib.ffi.NULL
    if entry == "epilogue":
        rc = lib.lib.mlpf_sgemm(0, 0, 0, 0, 0, 1.0, null, 1, null, 1, 0.0, null, 1, null, code)
    else:
        rc = lib.lib.mlpf_sgemm_dact(0, 0, 0, 0, 0, 1.0, null, 1, null, 1, null, 1, null, 1, code)
    return rc != lib.lib.MLPF_ERR_ACT


VARIANTS = {"numpy": gemm_ref}
C_EPILOGUE = C_DERIVATIVE = ()     # activations mlpf_sgemm applies / mlpf_sgemm_dact multiplies by
if c_available():
    _C_EPILOGUE_CODES = {name: c_code(name) for name in ELEMENTWISE
                         if _c_accepts("epilogue", c_code(name))}
    C_EPILOGUE = tuple(_C_EPILOGUE_CODES)
    C_DERIVATIVE = tuple(name for name in ELEMENTWISE
                         if _c_accepts("derivative", c_code(name)))
    VARIANTS["c"] = gemm_c
    if env.gemm_kernel():                         # e.g. "portable", to test a fallback
        try:
            set_c_kernel(env.gemm_kernel())
        except ValueError as err:
            raise ValueError(f"MLPFAST_GEMM_KERNEL: {err}") from None


# --- Numba GEMM ----------------------------------------------------------------------
#
# gemm_numba: C (m, n) = act(alpha * op(A) (m, k) @ op(B) (k, n) + beta * C + bias).
#
# The C GEMM's algorithm (csrc/gemm.c, after BLIS) with the same config (GEMM_CONFIG, the
# host's family in kernels/cpu_config.py, which the C build compiles in too):
#
#   for ic in m by mc:            A block  op(A)[ic:ic+mc, pc:pc+kc] packed (L2/L3)
#     for pc in k by kc:          kc near the config's kc, k split evenly
#       for jc in n by nc:        B block  op(B)[pc:pc+kc, jc:jc+nc] packed (L2: nc is
#                                 lowered where the block would pass b_block_bytes)
#         for ir in mc by MR:     A micro-panel (kc x MR) stays in L1 (L2 at a deep kc)
#           for jr in nc by NR:   B micro-panel (kc x NR) streams from L2
#             tile (MR x NR) = A micro-panel . B micro-panel     (the micro-kernel)
#             C[ic+ir:+MR, jc+jr:+NR] = act(alpha tile + beta C + bias)   (the epilogue)
#
# Packing copies each micro-panel into the contiguous, zero-padded order in which the
# micro-kernel reads it (A: MR values of a column of op(A) per k-step; B: NR values of a
# row of op(B)), so all four transpose cases, strided views and edge tiles reduce to one
# kernel. The first k block applies beta (C is not read when beta == 0), later ones add
# to C, the last adds the bias and applies relu, so a linear layer costs one pass.
#
# The micro-kernel (_microkernel_MRxNR) keeps the MR x NR tile in 2 * MR vector registers
# (NR = two vectors of the config's vector_bytes: 32 float32 or 16 float64 on AVX-512) and
# per k-step does 2 vector loads of B, MR broadcasts of A and 2 * MR FMAs. Numba has no
# vector type and LLVM's auto-vectorizer never chooses this register blocking from scalar
# loops, so the kernel is written as LLVM IR through a Numba @intrinsic: vectors and
# llvm.fma, which LLVM compiles to vfmadd231ps with embedded broadcasts. Everything around
# it (packing, blocking, epilogue, threads) is plain Numba.
#
# Threads: when the threads split only columns (m <= mc and op(A) packed for all of k fits
# in max_shared_a_bytes), they take column chunks from a shared atomic counter
# (_take_item), so that a thread the OS deschedules on a busy machine does not hold up the
# call; each packs op(A) once for all its chunks. Otherwise C is cut into a gm x gn grid,
# one block per thread, chosen as in the C GEMM to re-pack least (each extra grid column
# re-packs A, each row B). Speed against OpenBLAS: README.md, "Benchmarks"
# (bench/compare_gemm_numba.py).


def _host_family():
    """The cpu_config family of this CPU as LLVM sees it (what Numba compiles for)."""
    import llvmlite.binding as ll
    features = set(ll.get_host_cpu_features().flatten().split(","))
    if "+avx512f" in features:
        return "avx512"
    return "avx2" if {"+avx2", "+fma"} <= features else "portable"


GEMM_FAMILY = _host_family()
GEMM_CONFIG = cpu_config.CONFIGS[GEMM_FAMILY]
GEMM_MR = GEMM_CONFIG["mr"]                     # rows of the micro-kernel's tile
GEMM_VECTOR_BYTES = GEMM_CONFIG["vector_bytes"]  # the tile is 2 vectors wide
GEMM_MC, GEMM_KC, GEMM_NC = GEMM_CONFIG["mc"], GEMM_CONFIG["kc"], GEMM_CONFIG["nc"]
GEMM_B_BLOCK_BYTES = GEMM_CONFIG["b_block_bytes"]
NUMBA_EPILOGUE = ("identity", "relu")           # activations gemm_numba_fused applies per tile


@intrinsic
def _microkernel_MRxNR(typingctx, a_panel, a_start, b_panel, b_start, kc, tile):
    """tile[r * NR + s] = sum_{p < kc} a_panel[a_start + p MR + r] b_panel[b_start + p NR + s]
    for r < MR = GEMM_MR, s < NR = 2 GEMM_VECTOR_BYTES / itemsize; a_panel, b_panel, tile
    1-D contiguous."""
    dtype = a_panel.dtype
    lanes = GEMM_VECTOR_BYTES * 8 // dtype.bitwidth
    sig = types.void(a_panel, types.intp, b_panel, types.intp, types.intp, tile)

    def codegen(context, builder, signature, args):
        a_arr, a0, b_arr, b0, depth, tile_arr = args
        vec = llvm_ir.VectorType(context.get_value_type(dtype), lanes)
        intp = context.get_value_type(types.intp)
        align = dtype.bitwidth // 8
        a_ptr = context.make_array(signature.args[0])(context, builder, a_arr).data
        b_ptr = context.make_array(signature.args[2])(context, builder, b_arr).data
        t_ptr = context.make_array(signature.args[5])(context, builder, tile_arr).data
        fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.v{lanes}f{dtype.bitwidth}")
        zero, undef = llvm_ir.Constant(vec, None), llvm_ir.Constant(vec, llvm_ir.Undefined)
        splat = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), lanes), [0] * lanes)
        lane0 = llvm_ir.Constant(llvm_ir.IntType(32), 0)

        def index(i):
            return llvm_ir.Constant(intp, i)

        def vector_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        # for p in range(kc): acc[2r + q] += broadcast(a[p, r]) * b[p, q-th vector]
        entry = builder.basic_block
        loop = builder.append_basic_block("ukernel.loop")
        done = builder.append_basic_block("ukernel.done")
        builder.cbranch(builder.icmp_signed(">", depth, index(0)), loop, done)
        builder.position_at_end(loop)
        p = builder.phi(intp)
        acc = [builder.phi(vec) for _ in range(2 * GEMM_MR)]
        a_step = builder.add(a0, builder.mul(p, index(GEMM_MR)))
        b_step = builder.add(b0, builder.mul(p, index(2 * lanes)))
        b = [builder.load(vector_at(b_ptr, builder.add(b_step, index(q * lanes))), align=align)
             for q in range(2)]
        updated = []
        for r in range(GEMM_MR):
            a = builder.load(builder.gep(a_ptr, [builder.add(a_step, index(r))]))
            a_vec = builder.shuffle_vector(builder.insert_element(undef, a, lane0), undef, splat)
            updated += [builder.call(fma, [a_vec, b[q], acc[2 * r + q]]) for q in range(2)]
        p_next = builder.add(p, index(1))
        loop_end = builder.basic_block
        builder.cbranch(builder.icmp_signed("<", p_next, depth), loop, done)
        p.add_incoming(index(0), entry)
        p.add_incoming(p_next, loop_end)
        for phi, value in zip(acc, updated):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop_end)
        builder.position_at_end(done)         # store the tile (zeros when kc == 0)
        results = []
        for value in updated:
            result = builder.phi(vec)
            result.add_incoming(zero, entry)
            result.add_incoming(value, loop_end)
            results.append(result)
        for i, result in enumerate(results):
            builder.store(result, vector_at(t_ptr, index(i * lanes)), align=align)
        return context.get_dummy_value()

    return sig, codegen


def _make_packer(width_of, transpose):
    """An intrinsic f(src, row, col, dst, start) that packs L = 64 / itemsize k-steps of a
    micro-panel of width W = width_of(L) (MR or NR) with vector loads and stores:
        transpose: dst[start + p W + r] = src[row + r, col + p]     (r < W, p < L)
        copy:      dst[start + p W + r] = src[row + p, col + r]
    src is 2-D with unit stride along its rows (the caller checks), dst 1-D contiguous.
    The transpose loads W rows of L values and swaps the bits of the row and column
    indices one at a time (log2 L rounds of L two-vector shuffles)."""
    @intrinsic
    def packer(typingctx, src, row, col, dst, start):
        dtype = src.dtype
        lanes = GEMM_VECTOR_BYTES * 8 // dtype.bitwidth
        width = width_of(lanes)
        sig = types.void(src, types.intp, types.intp, dst, types.intp)

        def codegen(context, builder, signature, args):
            src_arr, row0, col0, dst_arr, start0 = args
            fty = context.get_value_type(dtype)
            intp = context.get_value_type(types.intp)
            align = dtype.bitwidth // 8
            src_ary = context.make_array(signature.args[0])(context, builder, src_arr)
            row_bytes = cgutils.unpack_tuple(builder, src_ary.strides)[0]
            src_bytes = builder.bitcast(src_ary.data, llvm_ir.IntType(8).as_pointer())
            dst_ptr = context.make_array(signature.args[3])(context, builder, dst_arr).data

            def const(i):
                return llvm_ir.Constant(intp, i)

            def vector(count):
                return llvm_ir.VectorType(fty, count)

            def src_at(i, j, count):          # &src[row0 + i, col0 + j] as <count x T>*
                offset = builder.add(builder.mul(builder.add(row0, const(i)), row_bytes),
                                     builder.mul(builder.add(col0, const(j)), const(align)))
                return builder.bitcast(builder.gep(src_bytes, [offset]),
                                       vector(count).as_pointer())

            def dst_at(offset, count):        # &dst[start0 + offset] as <count x T>*
                return builder.bitcast(builder.gep(dst_ptr, [builder.add(start0, const(offset))]),
                                       vector(count).as_pointer())

            def mask(values):
                lanes_type = llvm_ir.VectorType(llvm_ir.IntType(32), len(values))
                return llvm_ir.Constant(lanes_type, values)

            for r0 in range(0, width, lanes):
                count = min(lanes, width - r0)
                if not transpose:
                    for p in range(lanes):
                        value = builder.load(src_at(p, r0, count), align=align)
                        builder.store(value, dst_at(p * width + r0, count), align=align)
                    continue
                v = [builder.load(src_at(r0 + i, 0, lanes), align=align) if i < count
                     else llvm_ir.Constant(vector(lanes), None) for i in range(lanes)]
                bit = 1
                while bit < lanes:            # v[i][e] <-> v[i ^ bit][e ^ bit] where they differ
                    for i in range(lanes):
                        if not i & bit:
                            lo = [e if not e & bit else lanes + e - bit for e in range(lanes)]
                            hi = [e + bit if not e & bit else lanes + e for e in range(lanes)]
                            v[i], v[i + bit] = (builder.shuffle_vector(v[i], v[i + bit], mask(lo)),
                                                builder.shuffle_vector(v[i], v[i + bit], mask(hi)))
                    bit *= 2
                for p in range(lanes):        # v[p] = column p of the block: store its rows
                    value = v[p]
                    if count < lanes:
                        value = builder.shuffle_vector(value, value, mask(list(range(count))))
                    builder.store(value, dst_at(p * width + r0, count), align=align)
            return context.get_dummy_value()

        return sig, codegen
    return packer


_pack_transposed_mr = _make_packer(lambda lanes: GEMM_MR, transpose=True)
_pack_copied_mr = _make_packer(lambda lanes: GEMM_MR, transpose=False)
_pack_transposed_nr = _make_packer(lambda lanes: 2 * lanes, transpose=True)
_pack_copied_nr = _make_packer(lambda lanes: 2 * lanes, transpose=False)


@njit(fastmath=True, cache=True)
def _pack(x, k_major, i0, count, p0, kc, width, dst):
    """dst[ir kc + p W + r] = X[i0 + ir + r, p0 + p] for micro-panels ir = 0, W, ... of
    count rows of X (zeros past the last), p < kc; X = x.T if k_major else x, W = width.
    op(A) is X = a (k_major = trans_a), W = MR; op(B) is X.T with X = b (k_major = not
    trans_b), W = NR. Whole panels go L k-steps at a time through the vector packers,
    the rest element by element."""
    lanes = GEMM_VECTOR_BYTES // dst.itemsize
    zero = dst.dtype.type(0)
    unit_stride = x.strides[1] == x.itemsize
    for ir in range(0, count, width):
        base = ir * kc
        live = min(width, count - ir)
        fast = kc // lanes * lanes if unit_stride and live == width else 0
        for p in range(0, fast, lanes):
            if width == GEMM_MR:
                if k_major:
                    _pack_copied_mr(x, p0 + p, i0 + ir, dst, base + p * width)
                else:
                    _pack_transposed_mr(x, i0 + ir, p0 + p, dst, base + p * width)
            elif k_major:
                _pack_copied_nr(x, p0 + p, i0 + ir, dst, base + p * width)
            else:
                _pack_transposed_nr(x, i0 + ir, p0 + p, dst, base + p * width)
        for p in range(fast, kc):
            for r in range(width):
                v = zero
                if r < live:
                    v = x[p0 + p, i0 + ir + r] if k_major else x[i0 + ir + r, p0 + p]
                dst[base + p * width + r] = v


@njit(fastmath=IN_ORDER, cache=True)
def _multiply_blocks(c, ic, mcb, jc, ncb, kcb, a_buf, b_buf, tile, alpha, beta, bias, relu):
    """C[ic:ic+mcb, jc:jc+ncb] = act(alpha A block . B block + beta C + bias): the two
    loops over micro-panels, a micro-kernel call per tile, then its epilogue.
    beta is 0 (C not read) or the first block's beta or 1 (later k blocks); bias is empty
    except in the last k block, where relu may be set. The epilogue rounds in the order
    written (IN_ORDER): with contractions, its loop's vector and scalar versions fused
    different pairs, and C's bits depended on how near C lay to bias."""
    nr = tile.shape[0] // GEMM_MR
    zero = c.dtype.type(0)
    for ir in range(0, mcb, GEMM_MR):
        rows = min(GEMM_MR, mcb - ir)
        for jr in range(0, ncb, nr):
            cols = min(nr, ncb - jr)
            _microkernel_MRxNR(a_buf, ir * kcb, b_buf, jr * kcb, kcb, tile)
            j = jc + jr
            for r in range(rows):
                out = c[ic + ir + r, j:j + cols]
                acc = tile[r * nr:r * nr + cols]
                for s in range(cols):
                    v = alpha * acc[s]
                    if beta != zero:
                        v += beta * out[s]
                    if bias.shape[0] > 0:
                        v += bias[j + s]
                    if relu:
                        v = max(v, zero)        # NaN stays NaN, as in the relu kernel
                    out[s] = v


@njit(fastmath=True, cache=True)
def _block_len(total, max_block, multiple):
    """The fewest blocks of at most max_block covering total, evened out, rounded up."""
    blocks = max(1, (total + max_block - 1) // max_block)
    return ((total + blocks - 1) // blocks + multiple - 1) // multiple * multiple


@njit(fastmath=True, cache=True)
def _b_block_cols(kc, nr, itemsize):
    """Columns of a packed B block of depth kc: GEMM_NC, or fewer where kc x GEMM_NC values
    would pass GEMM_B_BLOCK_BYTES, as csrc/gemm.c's b_block_cols."""
    fit = GEMM_B_BLOCK_BYTES // (itemsize * kc) // nr * nr
    return max(nr, min(GEMM_NC, fit))


@njit(fastmath=True, cache=True)
def _gemm_numba_block(a, trans_a, b, trans_b, c, alpha, beta, bias, relu, kc, m0, m1, n0, n1,
                      a_buf, b_buf, tile):
    """The loop nest of the block comment over C[m0:m1, n0:n1]."""
    k = a.shape[0] if trans_a else a.shape[1]
    nr = tile.shape[0] // GEMM_MR
    mc = _block_len(m1 - m0, GEMM_MC, GEMM_MR)
    nc = _block_len(n1 - n0, _b_block_cols(kc, nr, c.itemsize), nr)
    no_bias = bias[:0]
    for ic in range(m0, m1, mc):
        mcb = min(mc, m1 - ic)
        for pc in range(0, k, kc):
            kcb = min(kc, k - pc)
            last = pc + kcb == k
            _pack(a, trans_a, ic, mcb, pc, kcb, GEMM_MR, a_buf)
            for jc in range(n0, n1, nc):
                ncb = min(nc, n1 - jc)
                _pack(b, not trans_b, jc, ncb, pc, kcb, nr, b_buf)
                _multiply_blocks(c, ic, mcb, jc, ncb, kcb, a_buf, b_buf, tile, alpha,
                                 beta if pc == 0 else c.dtype.type(1),
                                 bias if last else no_bias, relu and last)


@njit(parallel=True, cache=True)
def _gemm_numba_kernel(a, trans_a, b, trans_b, c, alpha, beta, bias, relu, kc, grid_m, grid_n,
                       a_size, b_size, workspace):
    """Thread t computes block (t // grid_n, t % grid_n) of the grid_m x grid_n grid of C,
    with workspace[t] as [B block (b_size) | A block (a_size) | tile (MR x NR)]."""
    m, n = c.shape
    nr = GEMM_VECTOR_BYTES * 2 // c.itemsize
    for t in prange(grid_m * grid_n):
        row, col = t // grid_n, t % grid_n
        ws = workspace[t]
        _gemm_numba_block(a, trans_a, b, trans_b, c, alpha, beta, bias, relu, kc,
                          _split(m, GEMM_MR, grid_m, row), _split(m, GEMM_MR, grid_m, row + 1),
                          _split(n, nr, grid_n, col), _split(n, nr, grid_n, col + 1),
                          ws[b_size:b_size + a_size], ws[:b_size],
                          ws[b_size + a_size:b_size + a_size + GEMM_MR * nr])


@intrinsic
def _take_item(typingctx, counter):
    """counter[0] += 1 as one atomic step; returns the value before (counter: int64[1])."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        one = llvm_ir.Constant(llvm_ir.IntType(64), 1)
        return builder.atomic_rmw("add", ptr, one, "monotonic")

    return sig, codegen


@njit(parallel=True, cache=True)
def _gemm_numba_shared_kernel(a, trans_a, b, trans_b, c, alpha, beta, bias, relu, kc, mc,
                              chunks, a_size, b_size, workspace, counter):
    """The threads take items (A block of mc rows, column chunk) from a shared counter, so
    that a thread the OS deschedules leaves its share to the others. The n columns' nr-wide
    panels spread evenly over the ``chunks`` chunks (_split).
    A thread packs an A block for every k block once, when its first item in that block
    comes, into workspace[t][b_size:]: the k block at depth pc starts at pc * mcb rounded
    up to MR."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    nr = GEMM_VECTOR_BYTES * 2 // c.itemsize
    items = (m + mc - 1) // mc * chunks
    no_bias = bias[:0]
    for t in prange(workspace.shape[0]):
        ws = workspace[t]
        b_buf, a_full = ws[:b_size], ws[b_size:b_size + a_size]
        tile = ws[b_size + a_size:b_size + a_size + GEMM_MR * nr]
        packed = -1
        item = _take_item(counter)
        while item < items:
            block = item // chunks
            ic, jc = block * mc, _split(n, nr, chunks, item % chunks)
            mcb, ncb = min(mc, m - ic), _split(n, nr, chunks, item % chunks + 1) - jc
            mcb_pad = (mcb + GEMM_MR - 1) // GEMM_MR * GEMM_MR
            if block != packed:
                for pc in range(0, k, kc):
                    _pack(a, trans_a, ic, mcb, pc, min(kc, k - pc), GEMM_MR,
                          a_full[pc * mcb_pad:])
                packed = block
            for pc in range(0, k, kc):
                kcb = min(kc, k - pc)
                last = pc + kcb == k
                _pack(b, not trans_b, jc, ncb, pc, kcb, nr, b_buf)
                _multiply_blocks(c, ic, mcb, jc, ncb, kcb, a_full[pc * mcb_pad:], b_buf, tile,
                                 alpha, beta if pc == 0 else c.dtype.type(1),
                                 bias if last else no_bias, relu and last)
            item = _take_item(counter)


@njit(cache=True)
def _split(length, tile, parts, part):
    """Start of part `part` when `length` is split into `parts` runs of whole tiles."""
    tiles = (length + tile - 1) // tile
    return min(length, tiles * part // parts * tile)


def _choose_grid(threads, m, n, k, nr):
    """The (grid_m, grid_n) with grid_m * grid_n <= threads that re-packs the least: each
    extra grid column re-packs A (m x k), each extra grid row re-packs B (k x n)."""
    m_tiles, n_tiles = -(-m // GEMM_MR), -(-n // nr)
    for t in range(threads, 1, -1):
        grids = [(rows, t // rows) for rows in range(1, t + 1)
                 if t % rows == 0 and rows <= m_tiles and t // rows <= n_tiles]
        if grids:
            return min(grids, key=lambda g: (g[1] - 1) * m * k + (g[0] - 1) * k * n)
    return 1, 1


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

    def counter(self):
        """The shared schedule's item counter, set to 0."""
        counter = self.__dict__.setdefault("item_counter", np.zeros(1, np.int64))
        counter[0] = 0
        return counter


_WORKSPACE = _Workspace()
_NO_BIAS = {np.dtype(np.float32): np.empty(0, np.float32),
            np.dtype(np.float64): np.empty(0, np.float64)}


def _round_up(x, multiple):
    return -(-x // multiple) * multiple


def _depth_block_len(k):
    """kc: the even split of k nearest to the config's kc, rounded up to 8 (784 -> 392 +
    392, not 384 + 384 + 16), as csrc/gemm.c's depth_block_len."""
    blocks = max(1, (k + GEMM_KC // 2) // GEMM_KC)
    return _round_up(-(-k // blocks), 8)


def _shared_schedule(threads, m, n, k, kc, nr, itemsize):
    """(mc, chunks, the widest chunk's columns) of the shared schedule, as csrc/gemm.c's
    sgemm_run, or None when the threads do not split only columns or op(A) packed for all
    of k would not fit. chunks: shared_chunks_* a thread, more where a chunk would be wider
    than a B block, rounded up to a multiple of the threads, at most one per panel."""
    grid_m, grid_n = _choose_grid(threads, m, n, k, nr)
    m_block = _round_up(min(m, GEMM_MC), GEMM_MR)
    if threads == 1 or grid_m != 1 or m_block * k * itemsize > GEMM_CONFIG["max_shared_a_bytes"]:
        return None
    in_l2 = m_block * k * itemsize <= GEMM_CONFIG["shared_a_l2_bytes"]
    panels = -(-n // nr)
    block_panels = _round_up(min(n, _b_block_cols(kc, nr, itemsize)), nr) // nr
    chunks = max(threads * GEMM_CONFIG["shared_chunks_l2" if in_l2 else "shared_chunks_l3"],
                 -(-panels // block_panels))
    chunks = min(_round_up(chunks, threads), panels)
    return _block_len(m, GEMM_MC, GEMM_MR), chunks, -(-panels // chunks) * nr


def gemm_numba_fused(a, b, out, trans_a, trans_b, alpha, beta, bias, activation):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias); act is "identity" or "relu"."""
    if activation not in NUMBA_EPILOGUE:
        raise ValueError(f"activation must be one of {NUMBA_EPILOGUE}, got {activation!r}")
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
    relu = activation == "relu"
    if k == 0:                                    # no product: out = act(beta out + bias)
        out[...] = 0 if beta == 0.0 else beta * out
        if bias is not None:
            out += bias
        if relu:
            np.maximum(out, 0, out=out)
        return out
    dtype = a.dtype.type
    nr = GEMM_VECTOR_BYTES * 2 // a.itemsize
    threads = _numba_config.get_threads()
    if m * n * k < GEMM_CONFIG["min_parallel_fmas"]:
        threads = 1
    kc = _depth_block_len(k)
    bias = _NO_BIAS[a.dtype] if bias is None else bias
    shared = _shared_schedule(threads, m, n, k, kc, nr, a.itemsize)
    if shared is not None:
        mc, chunks, widest = shared
        a_size, b_size = _round_up(mc, GEMM_MR) * k, widest * kc
        workspace = _WORKSPACE.get(a.dtype, threads, b_size + a_size + GEMM_MR * nr)
        _numba_config.parallel_call(
            _gemm_numba_shared_kernel, a, trans_a, b, trans_b, out, dtype(alpha), dtype(beta),
            bias, relu, kc, mc, chunks, a_size, b_size, workspace, _WORKSPACE.counter(),
            work=m * n * k)
        return out
    grid_m, grid_n = _choose_grid(threads, m, n, k, nr)
    share_m = -(-(-(-m // GEMM_MR)) // grid_m) * GEMM_MR      # a thread's rows, whole tiles
    share_n = -(-(-(-n // nr)) // grid_n) * nr
    # the largest packed blocks (GEMM_MC a multiple of MR, the B block's columns of NR)
    a_size = min(share_m, GEMM_MC) * kc
    b_size = min(share_n, _b_block_cols(kc, nr, a.itemsize)) * kc
    workspace = _WORKSPACE.get(a.dtype, grid_m * grid_n, b_size + a_size + GEMM_MR * nr)
    _numba_config.parallel_call(
        _gemm_numba_kernel, a, trans_a, b, trans_b, out, dtype(alpha), dtype(beta), bias, relu,
        kc, grid_m, grid_n, a_size, b_size, workspace, work=m * n * k)
    return out


def gemm_numba(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, in Numba (see the block comment above)."""
    return gemm_numba_fused(a, b, out, trans_a, trans_b, alpha, beta, None, "identity")


VARIANTS["numba"] = gemm_numba

_numba_config.stamp_kernel_caches(globals())
