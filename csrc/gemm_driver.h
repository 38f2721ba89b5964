/* What the single-precision and the bf16 GEMM drivers (gemm.c, gemm_bf16.c) share: the
 * argument checks, block lengths, the thread grid, the thread count of a call and the
 * packing workspace. */
#ifndef MLPF_GEMM_DRIVER_H
#define MLPF_GEMM_DRIVER_H
#include <stddef.h>
#include <stdint.h>
#include "gemm.h"

static inline int64_t imax(int64_t x, int64_t y) { return x > y ? x : y; }
static inline int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }
static inline int64_t round_up(int64_t x, int64_t multiple)
{
    return (x + multiple - 1) / multiple * multiple;
}

/* The checks of the API's arguments (gemm.h), in a function with its parameter names. */
#define CHECK_ARGS(T)                                                                     \
    if (m < 0 || n < 0 || k < 0) return MLPF_ERR_SHAPE;                                   \
    if (act != MLPF_ACT_IDENTITY && act != MLPF_ACT_RELU) return MLPF_ERR_ACT;            \
    if (lda < imax(1, trans_a ? m : k) || ldb < imax(1, trans_b ? k : n) || ldc < imax(1, n)) \
        return MLPF_ERR_STRIDE;                                                           \
    if ((m && n && !c) || (m && n && k && alpha != (T)0 && (!a || !b)))                   \
        return MLPF_ERR_NULL;
#define CHECK_DACT_ARGS                                                                   \
    if (dact < MLPF_ACT_RELU || dact > MLPF_ACT_TANH) return MLPF_ERR_ACT;              \
    if (ldy < imax(1, n)) return MLPF_ERR_STRIDE;                                         \
    if (m && n && !y) return MLPF_ERR_NULL;

/* Length of the blocks that split `total` into the fewest blocks of at most `max_block`,
 * as even as possible, rounded up to `multiple` (for m and n: cache capacity). */
static inline int64_t block_len(int64_t total, int64_t max_block, int64_t multiple)
{
    int64_t blocks = (total + max_block - 1) / max_block;
    if (blocks < 1) blocks = 1;
    return round_up((total + blocks - 1) / blocks, multiple);
}

/* Depth of the k blocks: the even split nearest to `target`, rounded up to `multiple`
 * (k = 784 with kc = 384 gives 392 + 392 rather than 384 + 384 + 16; a short last block
 * would cost a C tile load/store for few FMAs). */
static inline int64_t depth_block_len(int64_t k, int64_t target, int64_t multiple)
{
    int64_t blocks = (k + target / 2) / target;
    if (blocks < 1) blocks = 1;
    return round_up((k + blocks - 1) / blocks, multiple);
}

/* The gm x gn thread grid (gm * gn <= threads) that costs the least: each extra grid
 * column re-packs A (m x k values, each at a_cost), each extra grid row re-packs B
 * (k x n values at 1). */
static inline void choose_grid(int threads, int64_t m, int64_t n, int64_t k, int mr, int nr,
                               double a_cost, int *gm, int *gn)
{
    const int64_t m_tiles = (m + mr - 1) / mr, n_tiles = (n + nr - 1) / nr;
    *gm = *gn = 1;
    for (int t = threads; t > 1; t--) {
        double best = -1;
        for (int rows = 1; rows <= t; rows++) {
            if (t % rows || rows > m_tiles || t / rows > n_tiles) continue;
            int cols = t / rows;
            double repack = (cols - 1) * a_cost * m * k + (double)(rows - 1) * k * n;
            if (best < 0 || repack < best) {
                best = repack;
                *gm = rows;
                *gn = cols;
            }
        }
        if (best >= 0) return;
    }
}

/* Splits `tiles` tiles of `tile` elements (total `len`) into `parts`; the start of `part`. */
static inline int64_t split(int64_t len, int tile, int parts, int part)
{
    int64_t tiles = (len + tile - 1) / tile;
    return imin(len, tiles * part / parts * tile);
}

/* Threads for a call of `fmas` multiply-adds: 1 when waking more would cost more than
 * it saves, else mlpf_get_num_threads() (gemm.c). */
int mlpf_threads_for(double fmas);

/* Packing buffers of `bytes` (64-byte aligned): the cached workspace kept between calls
 * when it is free (*cached = 1), else a fresh one; NULL when out of memory. Give it back
 * with mlpf_workspace_release(memory, *cached). */
void *mlpf_workspace_acquire(size_t bytes, int *cached);
void mlpf_workspace_release(void *memory, int cached);

#endif
