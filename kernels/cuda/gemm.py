"""GEMM on the GPU: C = act(alpha * op(A) @ op(B) + beta * C + bias).

Same contract as ``mlpfast.kernels.gemm`` (``f(a, b, out=None, *, trans_a, trans_b, alpha,
beta)``, out never read when beta == 0), on device arrays, checked against ``gemm_ref``.

Versions:
    cuda   gemm_cuda: shared-memory tiling with register blocking. A block computes a
           BM x BN tile of C; each of its (BM/TM)*(BN/TN) threads keeps a TM x TN block of
           accumulators in registers. Per step of BK along k the block stages
           op(A)[BM, BK] and op(B)[BK, BN] in shared memory (k-major, so every thread reads
           a row of each), then each thread does TM*TN multiply-adds per k from TM + TN
           loaded values. A thread owns rows ty + i*BM/TM and columns tx + j*BN/TN
           (strided), so a warp reads consecutive shared-memory words and writes
           consecutive columns of C. Transposes are read in place: loads walk the
           contiguous axis of a or b. The epilogue applies alpha, beta, bias and an
           elementwise activation (``gemm_tiled``; ``linear_forward`` uses it).

The accumulators must stay in registers: the loops over TM and TN are fully unrolled by the
compiler only when their bodies are short, so a transcendental activation runs in a second
pass (tests/test_cuda_sim.py compiles every GEMM for sm_90 and checks for local memory).

Tiles (BM, BN, BK, TM, TN) are chosen per problem by ``choose_tile``: 128x128 tiles of
8x8 per thread when that still gives one block per SM, else 64x64 tiles of 4x4 (and
16x16 tiles of 4x4 under Numba's CUDA simulator, which runs a Python thread per CUDA thread).
"""
import functools

import numpy as np
from numba import cuda, from_dtype

from .. import _checks as shared_checks
from ._device import check_device_float, check_device_out, simulator_enabled
from .activations import DEVICE_FORWARD

TILE_LARGE = (128, 128, 8, 8, 8)    # BM, BN, BK, TM, TN: 256 threads, 64 accumulators each
TILE_SMALL = (64, 64, 8, 4, 4)      # 256 threads, 16 accumulators each
TILE_SIMULATOR = (16, 16, 4, 4, 4)  # 16 threads: the simulator runs one Python thread each
TILES = (TILE_LARGE, TILE_SMALL)


def _check_tile(tile):
    bm, bn, bk, tm, tn = tile
    if bm % tm or bn % tn or min(tile) < 1:
        raise ValueError(f"tile (BM, BN, BK, TM, TN) must have TM | BM and TN | BN, got {tile}")


@functools.lru_cache(maxsize=None)
def gemm_kernel(dtype, trans_a, trans_b, activation, has_bias, tile):
    """(kernel, threads per block) for one dtype, transpose case, epilogue and tile;
    Numba compiles the kernel at its first launch."""
    _check_tile(tile)
    BM, BN, BK, TM, TN = tile
    ROW_THREADS, COL_THREADS = BM // TM, BN // TN      # thread grid inside a block
    THREADS = ROW_THREADS * COL_THREADS
    # Loads that walk k (a not transposed, b transposed) put a warp's 32 values in BK k-rows,
    # 32/BK per row; with rows of BM words (a multiple of 32) they would share 32/BK banks.
    # Padding each row by 32/BK words spreads them over all 32 banks.
    A_COLS, B_COLS = BM + max(1, 32 // BK), BN + max(1, 32 // BK)
    act = DEVICE_FORWARD[activation]
    inline_act = activation in ("identity", "relu")     # cheap enough to apply in place
    element = from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(a, b, c, bias, alpha, beta, m, n, k):
        # a: (m, k), or (k, m) if trans_a;  b: (k, n), or (n, k) if trans_b;  c: (m, n)
        a_tile = cuda.shared.array((BK, A_COLS), element)    # [kk, r] = op(A)[row0 + r, k0 + kk]
        b_tile = cuda.shared.array((BK, B_COLS), element)    # [kk, j] = op(B)[k0 + kk, col0 + j]
        acc = cuda.local.array((TM, TN), element)
        a_reg = cuda.local.array(TM, element)
        b_reg = cuda.local.array(TN, element)
        tid = cuda.threadIdx.x
        ty = tid // COL_THREADS
        tx = tid - ty * COL_THREADS
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        for k0 in range(0, k, BK):
            for e in range(tid, BM * BK, THREADS):
                if trans_a:                      # walk along m, contiguous in a (k, m)
                    kk = e // BM
                    r = e - kk * BM
                else:                            # walk along k, contiguous in a (m, k)
                    r = e // BK
                    kk = e - r * BK
                gr, gk = row0 + r, k0 + kk
                if gr < m and gk < k:
                    a_tile[kk, r] = a[gk, gr] if trans_a else a[gr, gk]
                else:
                    a_tile[kk, r] = 0
            for e in range(tid, BK * BN, THREADS):
                if trans_b:                      # walk along k, contiguous in b (n, k)
                    j = e // BK
                    kk = e - j * BK
                else:                            # walk along n, contiguous in b (k, n)
                    kk = e // BN
                    j = e - kk * BN
                gk, gc = k0 + kk, col0 + j
                if gk < k and gc < n:
                    b_tile[kk, j] = b[gc, gk] if trans_b else b[gk, gc]
                else:
                    b_tile[kk, j] = 0
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = a_tile[kk, ty + i * ROW_THREADS]
                for j in range(TN):
                    b_reg[j] = b_tile[kk, tx + j * COL_THREADS]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        # epilogue: c = act(alpha * acc + beta * c + bias), c never read when beta == 0
        for i in range(TM):
            r = row0 + ty + i * ROW_THREADS
            if r < m:
                for j in range(TN):
                    col = col0 + tx + j * COL_THREADS
                    if col < n:
                        value = alpha * acc[i, j]
                        if beta != 0:
                            value += beta * c[r, col]
                        if has_bias:
                            value += bias[col]
                        c[r, col] = act(value, 0.0) if inline_act else value
        if not inline_act:
            # a transcendental activation in a second pass over this thread's own outputs:
            # inside the loop above its long body would stop the compiler from unrolling,
            # and acc would move from registers to local memory
            for i in range(TM):
                r = row0 + ty + i * ROW_THREADS
                if r < m:
                    for j in range(TN):
                        col = col0 + tx + j * COL_THREADS
                        if col < n:
                            c[r, col] = act(c[r, col], 0.0)

    return kernel, THREADS


def choose_tile(m, n):
    """The large tile when it still gives every SM a block, else the small one."""
    if simulator_enabled():
        return TILE_SIMULATOR
    blocks = -(-m // TILE_LARGE[0]) * -(-n // TILE_LARGE[1])
    return TILE_LARGE if blocks >= _multiprocessors() else TILE_SMALL


@functools.lru_cache(maxsize=None)
def _multiprocessors():
    device = cuda.get_current_device()
    return getattr(device, "MULTIPROCESSOR_COUNT", 1)     # the simulator has no count


def check_gemm_args(a, b, out, trans_a, trans_b, beta):
    """Returns (m, n, k) for out(m,n) = op(a)(m,k) @ op(b)(k,n), all device arrays."""
    return shared_checks.check_gemm_args(a, b, out, trans_a, trans_b, beta,
                                         check_device_float, check_device_out)


def gemm_tiled(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None,
               activation="identity", tile=None):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias); bias (n,) or None."""
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    if activation not in DEVICE_FORWARD or activation == "leaky_relu":
        raise ValueError(f"activation must be one of "
                         f"{[a for a in DEVICE_FORWARD if a != 'leaky_relu']}, got {activation!r}")
    if bias is not None:
        check_device_float(bias, "bias", 1)
        if bias.shape[0] != n or bias.dtype != a.dtype:
            raise ValueError(f"bias must be {a.dtype} of shape ({n},), "
                             f"got {bias.dtype} {tuple(bias.shape)}")
    if out is None:
        out = cuda.device_array((m, n), dtype=a.dtype)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    tile = choose_tile(m, n) if tile is None else tuple(tile)
    kernel, threads = gemm_kernel(a.dtype, bool(trans_a), bool(trans_b), activation,
                                  bias is not None, tile)
    grid = (-(-n // tile[1]), -(-m // tile[0]))
    bias_arg = bias if bias is not None else out[0]        # not read without a bias
    kernel[grid, threads](a, b, out, bias_arg, float(alpha), float(beta), m, n, k)
    return out


def gemm_cuda(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out on device arrays."""
    return gemm_tiled(a, b, out, trans_a, trans_b, alpha, beta)


VARIANTS = {"cuda": gemm_cuda}
