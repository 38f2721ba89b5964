"""GEMM on the GPU: C = epilogue(alpha * op(A) @ op(B) + beta * C).

Same contract as ``mlpfast.kernels.gemm`` (``f(a, b, out=None, *, trans_a, trans_b, alpha,
beta)``, out never read when beta == 0), on device arrays, checked against ``gemm_ref``.
``gemm_tiled`` adds the epilogues the layers need: + bias (n,), then an activation f
(``linear_forward``), or times f'(y) with f' written with the layer input y = f(z) alone
(relu [y > 0], sigmoid y (1 - y), tanh 1 - y^2: ``linear_grad_input``'s dz = (dy @ W) * f'(z)).
``gemm_launches`` checks the same arguments once and returns the work as launches
(kernels/cuda/graphs.py) that a training step runs at every step or captures in a graph.

Versions:
    cuda   gemm_cuda: a block computes a BM x BN tile of C with (BM/TM)*(BN/TN) threads, each
           keeping TM x TN accumulators in registers. A thread's TM rows are TM/4 quads of 4
           consecutive rows (and likewise its columns), and the shared tiles are stored as
           16-byte quads, so each step along k reads a quad per group (ld.shared.v4 where
           the compiler merges the loads, see below). Shared memory is double-buffered: while
           the block multiplies tile t, its threads' loads of tile t + 1 from global memory
           are in flight into registers; they go to the other buffer after, with one barrier
           per tile. Loads walk the contiguous axis of a and b, so transposes are read in
           place and every warp's load is coalesced. Blocks are visited in groups of GROUP_M
           block rows, so consecutive blocks share tiles of A and B in L2. 256-thread tiles
           are compiled for two blocks per SM (launch bounds: at most 128 registers; ptxas
           reports no spills). The epilogue: alpha, beta, bias, then an activation or f'(y).
           Split-K (``splits`` > 1): each of the grid's z-slices multiplies a range of k
           into a scratch buffer, and a second kernel adds the slices in order (the result
           does not depend on timing) and applies the epilogue. It gives small-m, small-n
           GEMMs (batch 128, 10 classes) enough blocks for the GPU.

What Numba CUDA allows for wide loads (PTX for sm_90 from numba-cuda 0.30, CUDA 13 NVVM):
NVVM merges consecutive float32 loads of a 16-byte aligned shared array into ld.shared.v4
only when it can prove the alignment and that the loads are consecutive: Numba's
negative-index wraparound (signed indices) and a dynamic buffer index hide both, so the
k loop runs over an unsigned range and the tiles are arrays of quads. With that, the 8x8
tiles read 3 of their 4 quads per k step as ld.shared.v4 (the compile test checks for
them); the 4x4 tiles stay scalar. Loads from kernel arguments stay scalar (ld.global.f32):
an array's data pointer carries no alignment NVVM can see, and Numba has no pointer casts
or vector-typed array loads. A float64 view of float32 pairs split with libdevice
(double2loint/hiint, int_as_float) gives 8-byte loads, not 16, and tile loads are ~2% of a
tile's instructions, so they stay scalar.

The accumulators must stay in registers: the loops over TM and TN are fully unrolled only when
their bodies are short, so a transcendental activation runs in a second pass over the
thread's outputs (the compile test checks every kernel for local memory).

Tiles (BM, BN, BK, TM, TN) are chosen by shape (``choose_config``): the largest tile of
``SQUARE_TILES`` that still gives every SM a block and whose shared memory fits a block's
48 KiB in the dtype (128x64x16 needs 50 KiB in float64), a narrow tile when n or m <= 16 (the
logits layer and its weight gradient), and split-K when even then the blocks are fewer than
the SMs and k is long. Under Numba's CUDA simulator (a Python thread per CUDA thread) the
default is ``TILE_SIMULATOR``; tests force every tile and split.
"""
import functools

import numpy as np
from numba import cuda, from_dtype

from .. import _checks as shared_checks
from ..activations import FUSABLE as DACT     # f' written with y = f(z) alone
from ._device import (ScratchBuffers, blocks_for, check_device_float, check_device_out,
                      simulator_enabled, THREADS_PER_BLOCK)
from .graphs import Launch, launch_all
from .activations import DEVICE_BACKWARD, DEVICE_FORWARD

TILE_128x128x8 = (128, 128, 8, 8, 8)     # BM, BN, BK, TM, TN: 256 threads, 64 accumulators
TILE_128x64x16 = (128, 64, 16, 8, 4)     # 256 threads, 32 accumulators
TILE_64x64x16 = (64, 64, 16, 4, 4)       # 256 threads, 16 accumulators
TILE_32x32x8 = (32, 32, 8, 4, 4)         # 64 threads, 16 accumulators
TILE_64x16x8 = (64, 16, 8, 4, 4)         # n <= 16 (logits): 64 threads
TILE_16x64x8 = (16, 64, 8, 4, 4)         # m <= 16 (the logits layer's weight gradient)
TILE_SIMULATOR = (16, 16, 4, 4, 4)       # 16 threads: the simulator runs one Python thread each
SQUARE_TILES = (TILE_128x128x8, TILE_128x64x16, TILE_64x64x16, TILE_32x32x8)
TILES = SQUARE_TILES + (TILE_64x16x8, TILE_16x64x8)
NARROW = 16            # n (or m) at most this: the narrow tile
GROUP_M = 8            # block rows visited together (L2 reuse)
MIN_K_PER_SPLIT = 128  # split-K slices at least this long
MAX_SPLITS = 8
INLINE_ACTIVATIONS = ("identity", "relu")     # cheap enough for the GEMM's main epilogue
MAX_STATIC_SHARED = 48 * 1024     # bytes of static shared memory a block may declare on every
                                  # CUDA GPU (ptxas: "uses too much shared data")

_scratch = ScratchBuffers()


def shared_bytes(tile, dtype):
    """Static shared memory of a block of ``gemm_kernel``: the double-buffered BK x BM and
    BK x BN tiles, as quads, one quad of padding per row."""
    bm, bn, bk = tile[:3]
    return 2 * bk * (bm // 4 + 1 + bn // 4 + 1) * 4 * np.dtype(dtype).itemsize


def check_tile(tile, dtype):
    bm, bn, bk, tm, tn = tile
    if min(tile) < 1 or bm % tm or bn % tn or tm % 4 or tn % 4:
        raise ValueError(f"tile (BM, BN, BK, TM, TN) must have TM | BM, TN | BN and TM, TN "
                         f"multiples of 4, got {tile}")
    threads = (bm // tm) * (bn // tn)
    if (bm * bk) % threads or (bk * bn) % threads:
        raise ValueError(f"tile {tile}: its {threads} threads must split the BM x BK and "
                         f"BK x BN tiles evenly")
    shared = shared_bytes(tile, dtype)
    if shared > MAX_STATIC_SHARED:
        raise ValueError(f"tile {tile} needs {shared} bytes of shared memory in "
                         f"{np.dtype(dtype)}, more than the {MAX_STATIC_SHARED} a block can "
                         f"declare")


def _epilogue(activation, dact, has_bias):
    """finish(value, c, bias, y, r, col, beta): value + beta c + bias, then times f'(y) of
    ``dact`` or through ``activation`` when that is inline."""
    act, df = DEVICE_FORWARD[activation], DEVICE_BACKWARD[dact]
    inline_act, with_dact = activation in INLINE_ACTIVATIONS, dact != "identity"

    @cuda.jit(device=True)
    def finish(value, c, bias, y, r, col, beta):
        if beta != 0:
            value += beta * c[r, col]
        if has_bias:
            value += bias[col]
        if with_dact:
            value = df(value, y[r, col], y[r, col], 0.0)
        if inline_act:
            value = act(value, 0.0)
        return value
    return finish


@cuda.jit(device=True)
def tile_place(e, down_first, rows, cols):
    """(row, col) of element e of a rows x cols tile numbered down its columns first, or
    along its rows first: the loads walk the contiguous axis of the array they read (op(A)'s
    tile is BM x BK, down first when trans_a; op(B)'s is BK x BN, down first when trans_b)."""
    if down_first:
        col = e // rows
        return e - col * rows, col
    row = e // cols
    return row, e - row * cols


def _tile_movers(tile, trans_a, trans_b):
    """(load_both, store) device functions of one tile: load_both(a, b, a_next, b_next,
    row0, col0, k0, k_end, m, n, tid) reads this thread's elements of the next BM x BK tile
    of op(A) and BK x BN tile of op(B) into registers (0 outside the matrices); store(a_tile,
    b_tile, a_next, b_next, tid) writes them to the shared tiles, as quads:
    a_tile[kk, quad, i] = op(A)[row0 + 4 quad + i, k0 + kk], b_tile[kk, quad, j] likewise."""
    BM, BN, BK, TM, TN = tile
    THREADS = (BM // TM) * (BN // TN)
    A_LOADS, B_LOADS = BM * BK // THREADS, BK * BN // THREADS      # per thread per tile

    @cuda.jit(device=True)
    def load(src, values, count, transposed, rows, cols, row0, col0, row_end, col_end, tid):
        # values[l] = op(src)[row0 + r, col0 + c] for this thread's l-th element (r, c) of a
        # rows x cols tile (0 outside [0, row_end) x [0, col_end)), src read along its
        # contiguous axis
        for l in range(count):
            r, c = tile_place(tid + l * THREADS, transposed, rows, cols)
            gr, gc = row0 + r, col0 + c
            values[l] = 0
            if gr < row_end and gc < col_end:
                values[l] = src[gc, gr] if transposed else src[gr, gc]

    @cuda.jit(device=True)
    def load_both(a, b, a_next, b_next, row0, col0, k0, k_end, m, n, tid):
        load(a, a_next, A_LOADS, trans_a, BM, BK, row0, k0, m, k_end, tid)
        load(b, b_next, B_LOADS, trans_b, BK, BN, k0, col0, k_end, n, tid)

    @cuda.jit(device=True)
    def store(a_tile, b_tile, a_next, b_next, tid):
        for l in range(A_LOADS):
            r, kk = tile_place(tid + l * THREADS, trans_a, BM, BK)
            a_tile[kk, r >> 2, r & 3] = a_next[l]
        for l in range(B_LOADS):
            kk, j = tile_place(tid + l * THREADS, trans_b, BK, BN)
            b_tile[kk, j >> 2, j & 3] = b_next[l]
    return load_both, store


@cuda.jit(device=True)
def block_origin(BM, BN, m, n):
    """(row0, col0) of this block's tile of C (m, n), the blocks numbered along grid x (its
    y and z hold at most 65535): GROUP_M block rows at a time, column by column, so that
    consecutive blocks share tiles of A and B in L2."""
    grid_n, grid_m = (n + BN - 1) // BN, (m + BM - 1) // BM
    block = cuda.blockIdx.x
    first_m = (block // (GROUP_M * grid_n)) * GROUP_M
    group_rows = min(grid_m - first_m, GROUP_M)
    in_group = block - first_m * grid_n
    return (first_m + in_group % group_rows) * BM, (in_group // group_rows) * BN


@cuda.jit(device=True)
def k_slice(k, k_split, BK):
    """(k_begin, k_end, tiles of BK) of this block's slice of k (grid z: split-K)."""
    k_begin = cuda.blockIdx.z * k_split
    k_end = min(k, k_begin + k_split)
    return k_begin, k_end, (k_end - k_begin + BK - 1) // BK if k_end > k_begin else 0


def _launch_bounds(threads):
    """256-thread blocks: at most 128 registers, so that two blocks share an SM (the
    simulator takes no launch bounds)."""
    if simulator_enabled():
        return {}
    return {"launch_bounds": (threads, 2) if threads >= 256 else threads}


@functools.lru_cache(maxsize=None)
def gemm_kernel(dtype, trans_a, trans_b, activation="identity", has_bias=False,
                tile=TILE_SIMULATOR, dact="identity", split=False):
    """(kernel, threads per block) for one dtype, transpose case, epilogue and tile; with
    ``split`` the kernel writes raw sums to work[z] for ``split_reduce_kernel``. Numba
    compiles it at its first launch.

    kernel(a, b, c, bias, y, work, alpha, beta, m, n, k, k_split); grid (ceil(n / BN)
    ceil(m / BM), 1, splits); block z multiplies k in [z k_split, (z + 1) k_split)."""
    check_tile(tile, dtype)
    BM, BN, BK, TM, TN = tile
    ROW_THREADS, COL_THREADS = BM // TM, BN // TN      # thread grid inside a block
    THREADS = ROW_THREADS * COL_THREADS
    A_LOADS, B_LOADS = BM * BK // THREADS, BK * BN // THREADS      # per thread per tile
    # shared tiles as rows of 16-byte quads (index * 16 shows LLVM the alignment), one quad
    # of padding per row to spread k-major stores over the banks
    A_QUADS, B_QUADS = BM // 4 + 1, BN // 4 + 1
    UNSIGNED_BK = np.uint64(BK)
    element = from_dtype(np.dtype(dtype))
    finish = _epilogue(activation, dact, has_bias)
    second_pass = activation not in INLINE_ACTIVATIONS and not split
    own_row, own_col = _own_outputs(tile)
    activate_own = _own_outputs_pass(tile, activation)
    load_both, store = _tile_movers(tile, trans_a, trans_b)
    ALIGN = None if simulator_enabled() else 16          # the simulator refuses alignment

    @cuda.jit(**_launch_bounds(THREADS))
    def kernel(a, b, c, bias, y, work, alpha, beta, m, n, k, k_split):
        # a: (m, k), or (k, m) if trans_a;  b: (k, n), or (n, k) if trans_b;  c, y: (m, n)
        a_tiles = cuda.shared.array((2, BK, A_QUADS, 4), element, alignment=ALIGN)
        b_tiles = cuda.shared.array((2, BK, B_QUADS, 4), element, alignment=ALIGN)
        acc = cuda.local.array((TM, TN), element)
        a_frag = cuda.local.array(TM, element)
        b_frag = cuda.local.array(TN, element)
        a_next = cuda.local.array(A_LOADS, element)
        b_next = cuda.local.array(B_LOADS, element)
        tid = cuda.threadIdx.x
        ty = tid // COL_THREADS
        tx = tid - ty * COL_THREADS
        row0, col0 = block_origin(BM, BN, m, n)
        k_begin, k_end, tiles = k_slice(k, k_split, BK)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        load_both(a, b, a_next, b_next, row0, col0, k_begin, k_end, m, n, tid)
        for t in range(tiles):
            stage = t & 1
            store(a_tiles[stage], b_tiles[stage], a_next, b_next, tid)
            cuda.syncthreads()
            if t + 1 < tiles:           # in flight while this tile is multiplied
                load_both(a, b, a_next, b_next, row0, col0, k_begin + (t + 1) * BK, k_end, m,
                          n, tid)
            for kk in range(UNSIGNED_BK):         # unsigned: no negative-index wraparound
                for g in range(TM // 4):
                    for i in range(4):
                        a_frag[g * 4 + i] = a_tiles[stage, kk, g * ROW_THREADS + ty, i]
                for g in range(TN // 4):
                    for j in range(4):
                        b_frag[g * 4 + j] = b_tiles[stage, kk, g * COL_THREADS + tx, j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_frag[i] * b_frag[j]
        # epilogue: acc[i, j] is c[own_row(row0, ty, i), own_col(col0, tx, j)]
        for i in range(TM):
            r = own_row(row0, ty, i)
            if r < m:
                for j in range(TN):
                    col = own_col(col0, tx, j)
                    if col < n:
                        if split:
                            work[cuda.blockIdx.z, r, col] = acc[i, j]
                        else:
                            c[r, col] = finish(alpha * acc[i, j], c, bias, y, r, col, beta)
        if second_pass:
            # a transcendental activation in a second pass over this thread's own outputs:
            # inside the loop above its long body would stop the compiler from unrolling,
            # and acc would move from registers to local memory
            activate_own(c, m, n, row0, col0, ty, tx)

    return kernel, THREADS


def _own_outputs(tile):
    """own_row(row0, ty, i), own_col(col0, tx, j): where thread (ty, tx) of the block whose
    tile starts at (row0, col0) holds its output acc[i, j] (TM / 4 groups of 4 rows,
    ROW_THREADS quads apart; columns likewise)."""
    BM, BN, BK, TM, TN = tile
    ROW_THREADS, COL_THREADS = BM // TM, BN // TN

    @cuda.jit(device=True, inline="always")
    def own_row(row0, ty, i):
        return row0 + 4 * ((i // 4) * ROW_THREADS + ty) + i % 4

    @cuda.jit(device=True, inline="always")
    def own_col(col0, tx, j):
        return col0 + 4 * ((j // 4) * COL_THREADS + tx) + j % 4
    return own_row, own_col


def _own_outputs_pass(tile, activation):
    """activate_own(c, m, n, row0, col0, ty, tx): c = f(c) on the outputs of thread (ty, tx)
    of the block whose tile starts at (row0, col0)."""
    TM, TN = tile[3], tile[4]
    own_row, own_col = _own_outputs(tile)
    act = DEVICE_FORWARD[activation]

    @cuda.jit(device=True)
    def activate_own(c, m, n, row0, col0, ty, tx):
        for i in range(TM):
            r = own_row(row0, ty, i)
            if r < m:
                for j in range(TN):
                    col = own_col(col0, tx, j)
                    if col < n:
                        c[r, col] = act(c[r, col], 0.0)
    return activate_own


@functools.lru_cache(maxsize=None)
def split_reduce_kernel(activation, has_bias, dact):
    """kernel(work, c, bias, y, alpha, beta): c = epilogue(alpha * sum_z work[z] + beta c);
    work (splits, m, n), summed in z order; one thread per element, grid-stride."""
    finish = _epilogue(activation, dact, has_bias)
    act = DEVICE_FORWARD[activation]
    late_act = activation not in INLINE_ACTIVATIONS

    @cuda.jit
    def kernel(work, c, bias, y, alpha, beta):
        splits, m, n = work.shape
        for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
            r = e // n
            col = e - r * n
            total = work[0, r, col]
            for z in range(1, splits):
                total += work[z, r, col]
            value = finish(alpha * total, c, bias, y, r, col, beta)
            c[r, col] = act(value, 0.0) if late_act else value
    return kernel


def choose_config(m, n, k, dtype=np.float32):
    """(tile, splits) for out (m, n) = op(a) (m, k) @ op(b) (k, n) in ``dtype`` on this GPU
    (tiles whose shared memory a block cannot hold in that dtype are skipped)."""
    if simulator_enabled():
        return TILE_SIMULATOR, 1
    sms = _multiprocessors()
    if n <= NARROW:
        tile = TILE_64x16x8
    elif m <= NARROW:
        tile = TILE_16x64x8
    else:
        square = [t for t in SQUARE_TILES if shared_bytes(t, dtype) <= MAX_STATIC_SHARED]
        tile = next((t for t in square if _blocks(m, n, t) >= sms), square[-1])
    blocks = _blocks(m, n, tile)
    splits = max(1, min(MAX_SPLITS, sms // blocks, k // MIN_K_PER_SPLIT))
    return tile, splits


def _blocks(m, n, tile):
    return -(-m // tile[0]) * -(-n // tile[1])


@functools.lru_cache(maxsize=None)
def _multiprocessors():
    device = cuda.get_current_device()
    return getattr(device, "MULTIPROCESSOR_COUNT", 1)     # the simulator has no count


def check_gemm_args(a, b, out, trans_a, trans_b, beta):
    """Returns (m, n, k) for out(m,n) = op(a)(m,k) @ op(b)(k,n), all device arrays."""
    return shared_checks.check_gemm_args(a, b, out, trans_a, trans_b, beta,
                                         check_device_float, check_device_out)


def _check_epilogue(a, n, m, bias, activation, dact, y):
    if activation not in DEVICE_FORWARD or activation == "leaky_relu":
        raise ValueError(f"activation must be one of "
                         f"{[a for a in DEVICE_FORWARD if a != 'leaky_relu']}, got {activation!r}")
    if dact not in DACT:
        raise ValueError(f"dact must be one of {DACT}, got {dact!r}")
    if dact != "identity" and activation != "identity":
        raise ValueError(f"dact and activation cannot both apply, got dact={dact!r} and "
                         f"activation={activation!r}")
    if bias is not None:
        check_device_float(bias, "bias", 1)
        if bias.shape[0] != n or bias.dtype != a.dtype:
            raise ValueError(f"bias must be {a.dtype} of shape ({n},), "
                             f"got {bias.dtype} {tuple(bias.shape)}")
    if dact != "identity":
        check_device_float(y, "y", 2)
        if tuple(y.shape) != (m, n) or y.dtype != a.dtype:
            raise ValueError(f"y must be {a.dtype} of shape ({m}, {n}), "
                             f"got {y.dtype} {tuple(y.shape)}")


def _checked_shape(a, b, out, trans_a, trans_b, beta, bias, activation, dact, y):
    """(m, n, k) after checking every argument of ``gemm_tiled``."""
    m, n, k = check_gemm_args(a, b, out, trans_a, trans_b, beta)
    _check_epilogue(a, n, m, bias, activation, dact, y)
    if dact != "identity":
        check_device_out(out, (m, n), a.dtype, inputs=(("y", y),))
    return m, n, k


def _launches(a, b, out, m, n, k, trans_a, trans_b, alpha, beta, bias, activation, dact, y,
              tile, splits, scratch):
    """The launches of a checked GEMM into out (m, n): the tiled kernel, and with split-K
    the reduction; none when out is empty."""
    if m == 0 or n == 0:
        return []
    chosen_tile, chosen_splits = choose_config(m, n, k, a.dtype)
    tile = chosen_tile if tile is None else tuple(tile)
    splits = chosen_splits if splits is None else int(splits)
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    k_split = -(-max(k, 1) // splits)
    k_split = -(-k_split // tile[2]) * tile[2]          # whole tiles per slice
    splits = max(1, -(-k // k_split))
    kernel, threads = gemm_kernel(a.dtype, bool(trans_a), bool(trans_b), activation,
                                  bias is not None, tile, dact, splits > 1)
    grid = (-(-n // tile[1]) * -(-m // tile[0]), 1, splits)
    bias_arg = bias if bias is not None else out[0]        # not read without a bias
    y_arg = y if dact != "identity" else out               # not read without dact
    work = scratch.get("split_k", splits * m * n if splits > 1 else 1, a.dtype)
    work = work.reshape(splits, m, n) if splits > 1 else work.reshape(1, 1, 1)
    alpha, beta = float(alpha), float(beta)
    launches = [Launch(kernel, grid, threads, (a, b, out, bias_arg, y_arg, work, alpha, beta,
                                               m, n, k, k_split))]
    if splits > 1:
        launches.append(Launch(split_reduce_kernel(activation, bias is not None, dact),
                               blocks_for(m * n), THREADS_PER_BLOCK,
                               (work, out, bias_arg, y_arg, alpha, beta)))
    return launches


def gemm_tiled(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None,
               activation="identity", dact="identity", y=None, tile=None, splits=None):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias), or with ``dact`` (relu, sigmoid,
    tanh) out = (alpha * op(a) @ op(b) + beta * out + bias) * f'(y), y (m, n) the
    activation's output; bias (n,) or None. ``tile`` and ``splits`` override
    ``choose_config``."""
    m, n, k = _checked_shape(a, b, out, trans_a, trans_b, beta, bias, activation, dact, y)
    if out is None:
        out = cuda.device_array((m, n), dtype=a.dtype)
        beta = 0.0
    launch_all(_launches(a, b, out, m, n, k, trans_a, trans_b, alpha, beta, bias, activation,
                         dact, y, tile, splits, _scratch))
    return out


def gemm_launches(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None,
                  activation="identity", dact="identity", y=None, tile=None, splits=None,
                  scratch=None):
    """``gemm_tiled`` into a given ``out`` as a list of ``Launch`` to run later (all arguments
    checked now), e.g. once per step or in a CUDA graph; split-K's work buffer comes from
    ``scratch`` (a ``ScratchBuffers``; a launch keeps its buffer alive)."""
    if out is None:
        raise ValueError("out must be given: the launches write into it")
    m, n, k = _checked_shape(a, b, out, trans_a, trans_b, beta, bias, activation, dact, y)
    return _launches(a, b, out, m, n, k, trans_a, trans_b, alpha, beta, bias, activation, dact,
                     y, tile, splits, _scratch if scratch is None else scratch)


def gemm_cuda(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out on device arrays."""
    return gemm_tiled(a, b, out, trans_a, trans_b, alpha, beta)


VARIANTS = {"cuda": gemm_cuda}
