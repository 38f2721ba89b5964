/* mlpfast C GEMM: argument checks, kernel dispatch, packing, cache blocking and threads
 * around the micro-kernels (API in gemm.h, kernel contract in gemm_kernels.h).
 *
 * Single precision, as in BLIS (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly
 * Instantiating BLAS Functionality"), for row-major C (m x n) = op(A) (m x k) op(B) (k x n):
 *
 *   for ic in m by mc:                 A block   op(A)[ic:ic+mc, pc:pc+kc] packed -> L3
 *     for pc in k by kc:
 *       for jc in n by nc:             B block   op(B)[pc:pc+kc, jc:jc+nc] packed -> L2 (L3)
 *         for ir in mc by MR:          A micro-panel MR x kc stays in L1 (L2 at a deep kc)
 *           for jr in nc by NR:        B micro-panel kc x NR streams from L2
 *             micro-kernel: C[ic+ir : +MR, jc+jr : +NR] (+)= A panel . B panel
 *
 * This is BLIS's loop nest with the roles of A and B swapped, because C is row-major:
 * the vector operand of the kernel is B (rows of C are contiguous) and the broadcast
 * operand is A. Packing copies each micro-panel into the contiguous, 64-byte aligned,
 * zero-padded order in which the kernel reads it, so all four transpose cases and any
 * row strides reduce to the same kernel. The first kc block applies beta (and never reads
 * C when beta == 0); the last applies bias and activation while the tile is in registers.
 * Tiles cut by the matrix edge are computed into a scratch tile and copied.
 * A matrix may also come packed beforehand, in the B block order behind a header
 * (mlpf_spack_b, mlpf_sgather_packed): as B it is read in place, as A its panels are
 * packed from it (mlpf_sgemm_weight_grad, mlpf_sgemm_packed_a). The thread that packs a
 * panel of A can also sum its rows (a layer's bias gradient beside dW).
 *
 * Threads split C into a grid of gm x gn blocks, one per thread, each running the loop
 * nest above on its own packing buffers; the grid is chosen to minimize re-packing (every
 * thread of a grid column packs the same B rows, every thread of a grid row the same A).
 * When that grid splits only columns (gm = 1, the usual case in an MLP), the threads take
 * column chunks from a shared counter instead (sgemm_shared), so that on a busy machine a
 * descheduled thread does not hold up the whole call.
 *
 * Double precision is the plain loop (correct, threaded over rows, not tuned): mlpfast
 * uses float64 for checking.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include "gemm.h"
#include "gemm_driver.h"
#include "gemm_kernels.h"
#include "threadpool.h"

/* --- threads and kernel selection --------------------------------------------------- */

static atomic_int num_threads = 1;

void mlpf_set_num_threads(int n) { atomic_store(&num_threads, n < 1 ? 1 : n); }
int mlpf_get_num_threads(void) { return atomic_load(&num_threads); }

static const mlpf_sgemm_config *const all_configs[] = {   /* best first */
#ifdef MLPF_X86
    &mlpf_sgemm_avx512_config, &mlpf_sgemm_avx2_config,
#endif
    &mlpf_sgemm_portable_config,
};
enum { NUM_CONFIGS = sizeof all_configs / sizeof all_configs[0] };
static const char *const config_families[] = {
#ifdef MLPF_X86
    "avx512", "avx2",
#endif
    "portable",
};

static _Atomic(const mlpf_sgemm_config *) active_config;

static const mlpf_sgemm_config *best_config(void)
{
    for (int i = 0; i < NUM_CONFIGS; i++)
        if (all_configs[i]->supported()) return all_configs[i];
    return &mlpf_sgemm_portable_config;
}

static const mlpf_sgemm_config *sgemm_config(void)
{
    const mlpf_sgemm_config *cfg = atomic_load(&active_config);
    if (!cfg) {
        cfg = best_config();
        atomic_store(&active_config, cfg);
    }
    return cfg;
}

const char *mlpf_kernel_name(void) { return sgemm_config()->name; }

const mlpf_sgemm_config *mlpf_active_config(void) { return sgemm_config(); }

int64_t mlpf_config_value(const char *family, const char *key)
{
    static const struct { const char *family, *key; int64_t value; } table[] = {MLPF_CFG_TABLE};
    if (!family || !key) return -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].family, family) == 0 && strcmp(table[i].key, key) == 0)
            return table[i].value;
    return -1;
}

int mlpf_set_kernel(const char *name)
{
    if (!name) return MLPF_ERR_KERNEL;
    if (strcmp(name, "auto") == 0) {
        atomic_store(&active_config, best_config());
        return MLPF_OK;
    }
    for (int i = 0; i < NUM_CONFIGS; i++) {
        if (strcmp(name, config_families[i]) == 0 || strcmp(name, all_configs[i]->name) == 0) {
            if (!all_configs[i]->supported()) return MLPF_ERR_KERNEL;
            atomic_store(&active_config, all_configs[i]);
            return MLPF_OK;
        }
    }
    return MLPF_ERR_KERNEL;
}

/* Depth of the k blocks of a call with this k (every one but maybe the last): near the
 * config's kc, a multiple of 16, so that a matrix read as A from the packed layout
 * (mlpf_sgemm_packed_a) starts every k block at a multiple of 16 columns, and 16-column
 * loads of it never straddle two of its runs of 32 (AVX-512). */
static int64_t k_block_len(const mlpf_sgemm_config *cfg, int64_t k)
{
    return depth_block_len(k, cfg->kc, 16);
}

/* --- packing (portable versions; a config may bring faster ones) --------------------- */

/* dst[p*R + r] = src[r*ld + p] for r < rows, 0 for rows <= r < R: rows of src run along p. */
static void pack_rows_portable(int R, int64_t kc, int64_t rows, const float *src, int64_t ld,
                               float *dst)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *s = src + r * ld;
        for (int64_t p = 0; p < kc; p++) dst[p * R + r] = s[p];
    }
    for (int64_t r = rows; r < R; r++)
        for (int64_t p = 0; p < kc; p++) dst[p * R + r] = 0.0f;
}

/* dst[p*R + r] = src[p*ld + r] for r < rows, 0 for rows <= r < R: rows of src run along r. */
static void pack_cols_portable(int R, int64_t kc, int64_t rows, const float *src, int64_t ld,
                               float *dst)
{
    for (int64_t p = 0; p < kc; p++) {
        const float *s = src + p * ld;
        float *d = dst + p * R;
        for (int64_t r = 0; r < rows; r++) d[r] = s[r];
        for (int64_t r = rows; r < R; r++) d[r] = 0.0f;
    }
}

/* dst[p*R + r] = M[row0 + r][col0 + p] for r < rows, 0 for rows <= r < R (M packed). */
static void pack_packed_portable(int R, int64_t kc, int64_t rows, const mlpf_packed_view *src,
                                 int64_t row0, int64_t col0, float *dst)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t p = 0; p < kc; p++) {
            const int64_t f = col0 + p;
            dst[p * R + r] = src->panels[mlpf_packed_offset(src, row0 + r, f) + f % src->nr];
        }
    for (int64_t r = rows; r < R; r++)
        for (int64_t p = 0; p < kc; p++) dst[p * R + r] = 0.0f;
}

/* --- activation derivative in double: C *= f'(Y) (mlpf_dgemm_dact) ------------------ */

/* One row of C, as mlpf_times_dact (gemm_kernels.h) does in float32 (VECTOR_CLONES: one
 * clone per ISA). */
VECTOR_CLONES static void dapply_dact_row(int64_t cols, double *restrict c,
                                          const double *restrict y, int dact)
{
    if (dact == MLPF_ACT_RELU)               /* [y > 0]: y NaN gives 0, as the reference */
        for (int64_t j = 0; j < cols; j++) c[j] = y[j] > 0 ? c[j] : 0.0;
    else if (dact == MLPF_ACT_SIGMOID)
        for (int64_t j = 0; j < cols; j++) c[j] *= y[j] * (1.0 - y[j]);
    else
        for (int64_t j = 0; j < cols; j++) c[j] *= 1.0 - y[j] * y[j];
}

/* --- single precision ----------------------------------------------------------------- */

typedef struct {
    const mlpf_sgemm_config *cfg;
    int trans_a, trans_b;
    int64_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    int64_t lda, ldb;
    float *c;
    int64_t ldc;
    const float *bias;
    int relu;
    const float *y;                  /* mlpf_sgemm_dact: C *= f'(Y), or NULL */
    int64_t ldy;
    int dact;
    mlpf_packed_view packed_b;       /* op(B) packed beforehand (weight_grad's packed h) */
    mlpf_packed_view packed_a;       /* mlpf_sgemm_packed_a: op(A) held packed (panels) */
    float *a_sums;                   /* a_sums[i] = sum_p op(A)[i][p], or NULL */
    double *squares;                 /* per thread: its final C values' squares, or NULL */
    int64_t kc;                      /* depth of every k block but maybe the last */
    char *workspace;                 /* per thread: A block(s), then B block */
    size_t a_block_bytes, thread_bytes;
    int64_t chunks;                  /* column chunks of the shared schedule, or 0 */
    atomic_long next_item;           /* the next (A block, column chunk) to take */
} sgemm_call;

/* acc[r] = sum_p panel[p*MR + r] over a packed A micro-panel of kc x MR: four partial
 * sums (p mod 4), added in a fixed order, so a row's sum does not depend on the panel it
 * falls in or on the threads. */
static inline __attribute__((always_inline)) void
sum_panel_rows(const int MR, int64_t kc, const float *panel, float *acc)
{
    float part[4][MLPF_MAX_MR] = {{0}};
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4)
        for (int q = 0; q < 4; q++)
            for (int r = 0; r < MR; r++) part[q][r] += panel[(p + q) * MR + r];
    for (int q = 0; p < kc; p++, q++)
        for (int r = 0; r < MR; r++) part[q][r] += panel[p * MR + r];
    for (int r = 0; r < MR; r++) acc[r] = (part[0][r] + part[1][r]) + (part[2][r] + part[3][r]);
}

VECTOR_CLONES static void panel_row_sums(int mr, int64_t kc, const float *panel, float *acc)
{
    switch (mr) {                    /* the configs' MR, each a constant once inlined */
    case 12: sum_panel_rows(12, kc, panel, acc); break;
    case 6: sum_panel_rows(6, kc, panel, acc); break;
    case 4: sum_panel_rows(4, kc, panel, acc); break;
    default: sum_panel_rows(mr, kc, panel, acc);
    }
}

/* sums[r] = acc[r] for the first k block, sums[r] + acc[r] for the later ones. */
static void add_sums(const float *acc, int64_t rows, int first, float *sums)
{
    for (int64_t r = 0; r < rows; r++) sums[r] = first ? acc[r] : sums[r] + acc[r];
}

/* Packs op(A)[i0 : i0+rows, p0 : p0+kc] into MR-row micro-panels of kc x MR; with `sums`
 * (g->a_sums, or NULL) also the rows' sums over this k block, added to the earlier
 * blocks' (set by the block at p0 = 0). */
static void pack_a_block(const sgemm_call *g, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                         float *dst, float *sums)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int MR = cfg->mr;
    for (int64_t ir = 0; ir < rows; ir += MR, dst += MR * kc) {
        int64_t panel_rows = imin(MR, rows - ir);
        if (g->packed_a.panels) {    /* op(A)[i][p] = M[i][p], M in the packed B layout */
            if (cfg->pack_a_packed) cfg->pack_a_packed(kc, panel_rows, &g->packed_a, i0 + ir, p0, dst);
            else pack_packed_portable(MR, kc, panel_rows, &g->packed_a, i0 + ir, p0, dst);
        } else if (!g->trans_a) {    /* op(A)[i][p] = a[i*lda + p] */
            const float *src = g->a + (i0 + ir) * g->lda + p0;
            if (cfg->pack_a_rows) cfg->pack_a_rows(kc, panel_rows, src, g->lda, dst);
            else pack_rows_portable(MR, kc, panel_rows, src, g->lda, dst);
        } else {                     /* op(A)[i][p] = a[p*lda + i] */
            const float *src = g->a + p0 * g->lda + i0 + ir;
            if (sums && cfg->pack_a_cols_sums) {
                float acc[MLPF_MAX_MR];
                cfg->pack_a_cols_sums(kc, panel_rows, src, g->lda, dst, acc);
                add_sums(acc, panel_rows, p0 == 0, sums + i0 + ir);
                continue;
            }
            if (cfg->pack_a_cols) cfg->pack_a_cols(kc, panel_rows, src, g->lda, dst);
            else pack_cols_portable(MR, kc, panel_rows, src, g->lda, dst);
        }
        if (sums) {
            float acc[MLPF_MAX_MR];
            panel_row_sums(MR, kc, dst, acc);
            add_sums(acc, panel_rows, p0 == 0, sums + i0 + ir);
        }
    }
}

/* Packs op(B)[p0 : p0+kc, j0 : j0+cols] into NR-column micro-panels of kc x NR. Where
 * b's rows are op(B)'s rows, B_ROW_RUN of them at a time across all the panels: each row
 * is read from start to end at once, rather than a panel's NR columns of every row and
 * then the next panel's (rows a power-of-two stride apart share a few cache sets, and the
 * lines of the next panel's columns would be gone). */
enum { B_ROW_RUN = 8 };

static void pack_b_block(const sgemm_call *g, int64_t p0, int64_t kc, int64_t j0, int64_t cols,
                         float *dst)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int NR = cfg->nr;
    if (!g->trans_b) {               /* op(B)[p][j] = b[p*ldb + j] */
        for (int64_t p = 0; p < kc; p += B_ROW_RUN) {
            const int64_t rows = imin(B_ROW_RUN, kc - p);
            for (int64_t jr = 0; jr < cols; jr += NR) {
                const int64_t panel_cols = imin(NR, cols - jr);
                const float *src = g->b + (p0 + p) * g->ldb + j0 + jr;
                float *panel_rows = dst + jr * kc + p * NR;
                if (cfg->pack_b_cols) cfg->pack_b_cols(rows, panel_cols, src, g->ldb, panel_rows);
                else pack_cols_portable(NR, rows, panel_cols, src, g->ldb, panel_rows);
            }
        }
        return;
    }
    for (int64_t jr = 0; jr < cols; jr += NR, dst += NR * kc) {   /* op(B)[p][j] = b[j*ldb + p] */
        const int64_t panel_cols = imin(NR, cols - jr);
        const float *src = g->b + (j0 + jr) * g->ldb + p0;
        if (cfg->pack_b_rows) cfg->pack_b_rows(kc, panel_cols, src, g->ldb, dst);
        else pack_rows_portable(NR, kc, panel_cols, src, g->ldb, dst);
    }
}

/* The B block op(B)[pc : pc+kcb, jc : jc+ncb] in micro-panels: packed into b_buf, or
 * where the caller's packed B holds it (row pc's run at column jc, a multiple of NR). */
static const float *b_block(const sgemm_call *g, int64_t pc, int64_t kcb, int64_t jc,
                            int64_t ncb, float *b_buf)
{
    if (g->packed_b.panels)
        return g->packed_b.panels + mlpf_packed_offset(&g->packed_b, pc, jc);
    pack_b_block(g, pc, kcb, jc, ncb, b_buf);
    return b_buf;
}

/* A tile cut by the edge of C: the config's edge kernel, or the full kernel into a scratch
 * tile (alpha A.B) and the epilogue applied here to the rows x cols that exist. */
static void edge_tile(const mlpf_sgemm_config *cfg, int64_t kc, const float *a_panel,
                      const float *b_panel, float *c, int64_t ldc, int64_t rows, int64_t cols,
                      const mlpf_tile_epilogue *ep)
{
    if (cfg->edge_ukernel) {
        cfg->edge_ukernel(kc, a_panel, b_panel, c, ldc, ep, (int)rows, (int)cols);
        return;
    }
    float scratch[MLPF_MAX_MR * MLPF_MAX_NR] __attribute__((aligned(64)));
    const mlpf_tile_epilogue product_only = {ep->alpha, 0.0f, NULL, 0};
    cfg->ukernel(kc, a_panel, b_panel, scratch, cfg->nr, &product_only);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            c[i * ldc + j] = mlpf_epilogue_value(ep, scratch[i * cfg->nr + j], c, ldc, i, j);
}

/* The two inner loops: C[ic : ic+mcb, jc : jc+ncb] (+)= the packed A block (mcb x kcb)
 * times the packed B block (kcb x ncb), for the k block at depth pc; with `squares` (the
 * thread's g->squares, or NULL) the last k block adds the squares of each MR-row strip of C
 * once its tiles are done. */
static void multiply_blocks(const sgemm_call *g, int64_t ic, int64_t mcb, int64_t pc,
                            int64_t kcb, int64_t jc, int64_t ncb, const float *a_buf,
                            const float *b_buf, double *squares)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int MR = cfg->mr, NR = cfg->nr;
    const int last = pc + kcb == g->k;
    mlpf_tile_epilogue ep = {
        .alpha = g->alpha,
        .beta = pc == 0 ? g->beta : 1.0f,          /* later k blocks accumulate */
        .relu = last && g->relu,
        .ldy = g->ldy,
        .dact = g->dact,
    };
    for (int64_t ir = 0; ir < mcb; ir += MR) {
        const float *a_panel = a_buf + ir * kcb;
        for (int64_t jr = 0; jr < ncb; jr += NR) {
            const float *b_panel = b_buf + jr * kcb;
            float *c_tile = g->c + (ic + ir) * g->ldc + jc + jr;
            ep.bias = last && g->bias ? g->bias + jc + jr : NULL;
            ep.y = last && g->y ? g->y + (ic + ir) * g->ldy + jc + jr : NULL;
            int64_t rows = imin(MR, mcb - ir), cols = imin(NR, ncb - jr);
            if (rows == MR && cols == NR)
                cfg->ukernel(kcb, a_panel, b_panel, c_tile, g->ldc, &ep);
            else
                edge_tile(cfg, kcb, a_panel, b_panel, c_tile, g->ldc, rows, cols, &ep);
        }
        if (last && squares)   /* the strip's stores done long since: its loads hit L1 */
            *squares += mlpf_sum_squares_rows(imin(MR, mcb - ir), ncb,
                                              g->c + (ic + ir) * g->ldc + jc, g->ldc);
    }
}

/* Columns of a packed B block of depth kc: nc, or fewer where kc x nc floats would pass
 * b_block_bytes (at kc = 1024, 256 columns: each A micro-panel's tiles then read the block
 * from L2, not L3; bench/README.md, "B block width"). */
static int64_t b_block_cols(const mlpf_sgemm_config *cfg, int64_t kc)
{
    const int64_t fit = cfg->b_block_bytes / (4 * kc) / cfg->nr * cfg->nr;
    return imax(cfg->nr, imin(cfg->nc, fit));
}

/* The loop nest of the file comment over the block C[m0:m1, n0:n1]; `sums`: g->a_sums
 * for the thread that sums these rows of op(A), else NULL; `squares`: multiply_blocks'. */
static void sgemm_block(const sgemm_call *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                        float *a_buf, float *b_buf, float *sums, double *squares)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int64_t mc = block_len(m1 - m0, cfg->mc, cfg->mr);
    const int64_t nc = block_len(n1 - n0, b_block_cols(cfg, g->kc), cfg->nr);
    for (int64_t ic = m0; ic < m1; ic += mc) {
        const int64_t mcb = imin(mc, m1 - ic);
        for (int64_t pc = 0; pc < g->k; pc += g->kc) {
            const int64_t kcb = imin(g->kc, g->k - pc);
            pack_a_block(g, ic, mcb, pc, kcb, a_buf, sums);
            for (int64_t jc = n0; jc < n1; jc += nc) {
                const int64_t ncb = imin(nc, n1 - jc);
                multiply_blocks(g, ic, mcb, pc, kcb, jc, ncb, a_buf,
                                b_block(g, pc, kcb, jc, ncb, b_buf), squares);
            }
        }
    }
}

/* The shared schedule: threads take (A block, column chunk) items from a counter, so a
 * thread that the OS deschedules (on a machine busy with other work) leaves its share to
 * the others instead of holding up the call. Each thread packs the A block of all k
 * blocks once (a_full: the k block at depth pc starts at pc * round_up(mcb, MR)); per
 * chunk it packs only that chunk's B, so nothing is packed twice that a static split
 * into columns would not pack twice too. */
static void sgemm_shared(sgemm_call *g, float *a_full, float *b_buf, double *squares)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int64_t mc = block_len(g->m, cfg->mc, cfg->mr);
    const int64_t items = (g->m + mc - 1) / mc * g->chunks;
    int64_t packed = -1;                           /* the A block now in a_full */
    for (int64_t item; (item = atomic_fetch_add(&g->next_item, 1)) < items;) {
        const int64_t block = item / g->chunks, ic = block * mc, mcb = imin(mc, g->m - ic);
        const int chunk = (int)(item % g->chunks);
        const int64_t jc = split(g->n, cfg->nr, (int)g->chunks, chunk);
        const int64_t ncb = split(g->n, cfg->nr, (int)g->chunks, chunk + 1) - jc;
        const int64_t mcb_padded = round_up(mcb, cfg->mr);
        if (block != packed) {       /* the taker of the block's first chunk sums its rows */
            float *sums = chunk == 0 ? g->a_sums : NULL;
            for (int64_t pc = 0; pc < g->k; pc += g->kc)
                pack_a_block(g, ic, mcb, pc, imin(g->kc, g->k - pc), a_full + pc * mcb_padded,
                             sums);
            packed = block;
        }
        for (int64_t pc = 0; pc < g->k; pc += g->kc) {
            const int64_t kcb = imin(g->kc, g->k - pc);
            multiply_blocks(g, ic, mcb, pc, kcb, jc, ncb, a_full + pc * mcb_padded,
                            b_block(g, pc, kcb, jc, ncb, b_buf), squares);
        }
    }
}

/* Column chunks per thread in the shared schedule. Every chunk reads the whole packed A
 * again, so fewer when it comes from L3 than from L2; and that is what splitting the
 * columns costs beyond packing A once per thread: choose_grid weighs A's values by it
 * (measured at the MLP's shapes: bench/README.md, "Thread grid"). */
static int64_t shared_chunks(const sgemm_call *g)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int64_t m_block = round_up(imin(g->m, cfg->mc), cfg->mr);
    return m_block * g->k * 4 <= cfg->shared_a_l2_bytes ? cfg->shared_chunks_l2
                                                         : cfg->shared_chunks_l3;
}

static void sgemm_task(void *arg, int index, int threads)
{
    sgemm_call *g = arg;
    double *squares = g->squares ? g->squares + index : NULL;
    if (g->chunks) {
        char *mine = g->workspace + index * g->thread_bytes;
        sgemm_shared(g, (float *)mine, (float *)(mine + g->a_block_bytes), squares);
        return;
    }
    int gm, gn;
    choose_grid(threads, g->m, g->n, g->k, g->cfg->mr, g->cfg->nr, shared_chunks(g), &gm, &gn);
    if (index >= gm * gn) return;
    int row = index / gn, col = index % gn;
    /* rows in steps of 4 where edge tiles run in place (the shares differ by at most 4
     * rows, not MR), else of whole MR-row tiles */
    const int row_step = g->cfg->edge_ukernel ? 4 : g->cfg->mr;
    char *mine = g->workspace + index * g->thread_bytes;
    sgemm_block(g, split(g->m, row_step, gm, row), split(g->m, row_step, gm, row + 1),
                split(g->n, g->cfg->nr, gn, col), split(g->n, g->cfg->nr, gn, col + 1),
                (float *)mine, (float *)(mine + g->a_block_bytes), col == 0 ? g->a_sums : NULL,
                squares);
}

/* Packing buffers: one workspace kept between calls (grown as needed, on huge pages
 * where the kernel offers them); a caller that finds it in use gets a fresh one. */
static struct {
    pthread_mutex_t lock;
    void *memory;
    size_t bytes;
} workspace_cache = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};

enum { HUGE_PAGE = 2 << 20 };

static void *workspace_alloc(size_t bytes)
{
    void *memory = NULL;
    if (posix_memalign(&memory, HUGE_PAGE, bytes)) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(memory, bytes, MADV_HUGEPAGE);
#endif
    return memory;
}

void *mlpf_workspace_acquire(size_t bytes, int *cached)
{
    bytes = (size_t)round_up((int64_t)bytes, HUGE_PAGE);
    *cached = pthread_mutex_trylock(&workspace_cache.lock) == 0;
    if (!*cached) return workspace_alloc(bytes);
    if (workspace_cache.bytes < bytes) {
        free(workspace_cache.memory);
        workspace_cache.memory = workspace_alloc(bytes);
        workspace_cache.bytes = workspace_cache.memory ? bytes : 0;
    }
    if (!workspace_cache.memory) {
        pthread_mutex_unlock(&workspace_cache.lock);
        *cached = 0;
    }
    return workspace_cache.memory;
}

void mlpf_workspace_release(void *memory, int cached)
{
    if (cached) pthread_mutex_unlock(&workspace_cache.lock);
    else free(memory);
}

/* Threads for a call of `fmas` multiply-adds (gemm_driver.h): one below the active config's
 * threshold, which is lower while the pool's workers still spin from the previous call
 * (back-to-back GEMMs of a training step start on every thread within a microsecond). */
int mlpf_threads_for(double fmas)
{
    const mlpf_sgemm_config *cfg = sgemm_config();
    const double least = (double)(mlpf_pool_awake() ? cfg->min_parallel_fmas_awake
                                                     : cfg->min_parallel_fmas);
    return fmas < least ? 1 : mlpf_get_num_threads();
}

int mlpf_wake_threads(double fmas)
{
    const mlpf_sgemm_config *cfg = sgemm_config();
    if (fmas < (double)cfg->min_parallel_fmas_awake || fmas >= (double)cfg->min_parallel_fmas)
        return 0;
    return mlpf_pool_wake(mlpf_get_num_threads());
}

/* A narrow product A B^T (n <= MLPF_NARROW_N): each thread takes a band of rows (4 at a time). */
static void narrow_task(void *arg, int index, int threads)
{
    const sgemm_call *g = arg;
    const int64_t r0 = split(g->m, 4, threads, index), r1 = split(g->m, 4, threads, index + 1);
    const mlpf_tile_epilogue ep = {g->alpha, g->beta, g->bias, g->relu};
    if (r1 > r0)
        g->cfg->narrow_nt(r1 - r0, g->n, g->k, g->a + r0 * g->lda, g->lda, g->b, g->ldb,
                          g->c + r0 * g->ldc, g->ldc, &ep);
}

/* C = act(beta C + bias), then C *= f'(Y) for mlpf_sgemm_dact: a call whose product
 * vanishes (k == 0 or alpha == 0; A and B are not read). */
static void sscale_task(void *arg, int index, int threads)
{
    const sgemm_call *g = arg;
    (void)index, (void)threads;
    for (int64_t i = 0; i < g->m; i++)
        for (int64_t j = 0; j < g->n; j++) {
            float v = g->beta == 0 ? 0.0f : g->beta * g->c[i * g->ldc + j];
            if (g->bias) v += g->bias[j];
            if (g->relu && v < 0) v = 0;
            if (g->y) v = mlpf_times_dact(v, g->y[i * g->ldy + j], g->dact);
            g->c[i * g->ldc + j] = v;
        }
    if (g->squares) g->squares[0] = mlpf_sum_squares_rows(g->m, g->n, g->c, g->ldc);
}

/* g->a_sums by a plain loop, for the calls that pack no A (n == 0, k == 0, alpha == 0). */
static void plain_row_sums(const sgemm_call *g)
{
    for (int64_t i = 0; i < g->m; i++) {
        float sum = 0.0f;
        for (int64_t p = 0; p < g->k; p++)
            sum += g->trans_a ? g->a[p * g->lda + i] : g->a[i * g->lda + p];
        g->a_sums[i] = sum;
    }
}

/* Runs the call described by g (sizes, operands and epilogue set). With m == 0 nothing is
 * done, with n == 0 only g->a_sums. Every path that computes C runs as a pool task, so
 * with denormals flushed (threadpool.c). */
static int sgemm_run(sgemm_call *g)
{
    const mlpf_sgemm_config *cfg = g->cfg;
    const int64_t m = g->m, n = g->n, k = g->k;
    if (m == 0) return MLPF_OK;
    if (n == 0) {
        if (g->a_sums) plain_row_sums(g);
        return MLPF_OK;
    }
    if (k == 0 || g->alpha == 0.0f) {
        mlpf_pool_run(1, sscale_task, g);
        if (g->a_sums) plain_row_sums(g);
        return MLPF_OK;
    }
    if (cfg->narrow_nt && g->trans_b && !g->trans_a && !g->packed_a.panels && !g->a_sums &&
        n <= MLPF_NARROW_N && !g->y && !g->squares) {
        /* nothing to pack: the rows split as a pass over A's m x k values does */
        mlpf_pool_run((int)imin(mlpf_pass_threads(m * k), (m + 3) / 4), narrow_task, g);
        return MLPF_OK;
    }
    int threads = mlpf_threads_for((double)m * n * k);
    g->kc = k_block_len(cfg, k);
    const int64_t m_block = round_up(imin(m, cfg->mc), cfg->mr);
    const int64_t n_block = round_up(imin(n, b_block_cols(cfg, g->kc)), cfg->nr); /* B's widest */
    int gm, gn;
    choose_grid(threads, m, n, k, cfg->mr, cfg->nr, shared_chunks(g), &gm, &gn);
    if (threads > 1 && gm == 1 && m_block * k * 4 <= cfg->max_shared_a_bytes) {
        /* columns split among the threads: take them from the shared schedule in chunks,
         * so that a late thread's share can move. shared_chunks() a thread, more where a
         * chunk would be wider than a B block, rounded up to a multiple of the threads; the
         * nr-column panels spread evenly over them (split), so that threads taking equal
         * counts of chunks get equal work. */
        const int64_t panels = (n + cfg->nr - 1) / cfg->nr, block_panels = n_block / cfg->nr;
        const int64_t chunks = imax(shared_chunks(g) * threads,
                                    (panels + block_panels - 1) / block_panels);
        g->chunks = imin(round_up(chunks, threads), panels);
        atomic_init(&g->next_item, 0);
    }
    /* Per thread: the largest A block(s) and B block any thread's share can need. */
    g->a_block_bytes = (size_t)round_up(m_block * (g->chunks ? k : g->kc) * 4, 4096);
    g->thread_bytes = g->a_block_bytes + (g->packed_b.panels ? 0 :
                     (size_t)round_up(n_block * g->kc * 4, 4096));
    int cached;
    g->workspace = mlpf_workspace_acquire(g->thread_bytes * threads, &cached);
    if (!g->workspace) return MLPF_ERR_NOMEM;
    mlpf_pool_run(threads, sgemm_task, g);
    mlpf_workspace_release(g->workspace, cached);
    return MLPF_OK;
}

int mlpf_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
               float beta, float *c, int64_t ldc, const float *bias, int act)
{
    CHECK_ARGS(float)
    if (m == 0 || n == 0) return MLPF_OK;
    sgemm_call g = {
        .cfg = sgemm_config(), .trans_a = trans_a != 0, .trans_b = trans_b != 0,
        .m = m, .n = n, .k = k, .alpha = alpha, .beta = beta, .a = a, .b = b, .lda = lda,
        .ldb = ldb, .c = c, .ldc = ldc, .bias = bias, .relu = act == MLPF_ACT_RELU};
    return sgemm_run(&g);
}

int mlpf_sgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                    float *c, int64_t ldc, const float *y, int64_t ldy, int dact)
{
    const float beta = 0.0f;
    const int act = MLPF_ACT_IDENTITY;
    CHECK_ARGS(float)
    CHECK_DACT_ARGS
    if (m == 0 || n == 0) return MLPF_OK;
    sgemm_call g = {
        .cfg = sgemm_config(), .trans_a = trans_a != 0, .trans_b = trans_b != 0,
        .m = m, .n = n, .k = k, .alpha = alpha, .beta = beta, .a = a, .b = b, .lda = lda,
        .ldb = ldb, .c = c, .ldc = ldc, .y = y, .ldy = ldy, .dact = dact};
    return sgemm_run(&g);
}

/* --- matrices packed beforehand (gemm.h: mlpf_spack_b, mlpf_sgemm_packed_a) ----------- */

/* The layout: a header of MLPF_PACKED_B_HEADER floats, then the panels of
 * mlpf_packed_view (gemm_kernels.h) with the driver's k blocks (k_block_len) as its
 * blocks of rows and the config's NR: what pack_b_block writes block by block, so the
 * kernel reads the same values in the same order as from its own packing. */
typedef struct {
    uint32_t magic, nr;
    int64_t kc, k, n;
} packed_b_header;
enum { PACKED_B_MAGIC = 0x424c504d };               /* "MPLB" */
_Static_assert(sizeof(packed_b_header) <= MLPF_PACKED_B_HEADER * sizeof(float),
               "the header fits in front of the panels");

/* The view of the panels of a packed rows x cols matrix in cfg's layout. */
static mlpf_packed_view packed_view(const mlpf_sgemm_config *cfg, const float *packed,
                                    int64_t rows, int64_t cols)
{
    return (mlpf_packed_view){packed + MLPF_PACKED_B_HEADER, rows, cols, k_block_len(cfg, rows),
                              round_up(cols, cfg->nr), cfg->nr};
}

int64_t mlpf_packed_b_floats(int64_t k, int64_t n)
{
    if (k < 0 || n < 0) return MLPF_ERR_SHAPE;
    return MLPF_PACKED_B_HEADER + k * round_up(n, sgemm_config()->nr);
}

mlpf_packed_view mlpf_packed_b_start(float *packed, int64_t k, int64_t n)
{
    const mlpf_sgemm_config *cfg = sgemm_config();
    const mlpf_packed_view view = packed_view(cfg, packed, k, n);
    const packed_b_header header = {PACKED_B_MAGIC, (uint32_t)cfg->nr, view.kc, k, n};
    memset(packed, 0, MLPF_PACKED_B_HEADER * sizeof(float));
    memcpy(packed, &header, sizeof header);
    return view;
}

int mlpf_spack_b(int trans_b, int64_t k, int64_t n, const float *b, int64_t ldb, float *packed,
                 int64_t capacity)
{
    if (k < 0 || n < 0 || capacity < mlpf_packed_b_floats(k, n)) return MLPF_ERR_SHAPE;
    if (ldb < imax(1, trans_b ? k : n)) return MLPF_ERR_STRIDE;
    if (!packed || (k && n && !b)) return MLPF_ERR_NULL;
    if ((uintptr_t)packed % 64) return MLPF_ERR_ALIGN;
    const sgemm_call g = {.cfg = sgemm_config(), .trans_b = trans_b != 0, .k = k, .n = n,
                          .b = b, .ldb = ldb};
    const mlpf_packed_view view = mlpf_packed_b_start(packed, k, n);
    float *panels = packed + MLPF_PACKED_B_HEADER;
    if (n)
        for (int64_t pc = 0; pc < k; pc += view.kc)
            pack_b_block(&g, pc, imin(view.kc, k - pc), 0, n,
                         panels + mlpf_packed_offset(&view, pc, 0));
    return MLPF_OK;
}

/* MLPF_OK when `packed` holds a packed matrix of rows x cols in the active config's
 * layout (else the error of gemm.h); *view then describes it. */
static int read_packed(const float *packed, int64_t rows, int64_t cols,
                       const mlpf_sgemm_config *cfg, mlpf_packed_view *view)
{
    if (!packed) return MLPF_ERR_NULL;
    if ((uintptr_t)packed % 64) return MLPF_ERR_ALIGN;
    packed_b_header header;
    memcpy(&header, packed, sizeof header);
    if (header.magic != PACKED_B_MAGIC || header.nr != (uint32_t)cfg->nr) return MLPF_ERR_KERNEL;
    if (header.k != rows || header.n != cols) return MLPF_ERR_SHAPE;
    *view = packed_view(cfg, packed, rows, cols);
    return header.kc == view->kc ? MLPF_OK : MLPF_ERR_KERNEL;
}

int mlpf_sgemm_packed_a(int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *packed_a, const float *b, int64_t ldb, float beta,
                        float *c, int64_t ldc, const float *bias, int act)
{
    const int trans_a = 0;
    const int64_t lda = imax(1, k);
    const float *a = packed_a;
    CHECK_ARGS(float)
    const mlpf_sgemm_config *cfg = sgemm_config();
    mlpf_packed_view view;
    const int status = read_packed(packed_a, m, k, cfg, &view);
    if (status != MLPF_OK) return status;
    if (m == 0 || n == 0) return MLPF_OK;
    sgemm_call g = {
        .cfg = cfg, .trans_b = trans_b != 0, .m = m, .n = n, .k = k, .alpha = alpha,
        .beta = beta, .a = a, .lda = lda, .packed_a = view, .b = b, .ldb = ldb, .c = c,
        .ldc = ldc, .bias = bias, .relu = act == MLPF_ACT_RELU};
    return sgemm_run(&g);
}

int mlpf_sgemm_weight_grad(int64_t m, int64_t n, int64_t k, const float *dz, int64_t ldz,
                           const float *h, int64_t ldh, const float *packed_h, float *dw,
                           int64_t lddw, float *db, double *squares)
{
    const int trans_a = 1, trans_b = 0, act = MLPF_ACT_IDENTITY;
    const float alpha = 1.0f;
    const float *a = dz, *b = packed_h ? packed_h : h;
    const int64_t lda = ldz, ldb = packed_h ? imax(1, n) : ldh, ldc = lddw;
    float *c = dw;
    CHECK_ARGS(float)
    if (!squares || (m && k && db && !dz)) return MLPF_ERR_NULL;
    const mlpf_sgemm_config *cfg = sgemm_config();
    mlpf_packed_view view = {0};
    if (packed_h) {
        const int status = read_packed(packed_h, k, n, cfg, &view);
        if (status != MLPF_OK) return status;
    }
    double parts[MLPF_POOL_MAX_THREADS] = {0};      /* per thread, added in thread order */
    sgemm_call g = {
        .cfg = cfg, .trans_a = trans_a, .m = m, .n = n, .k = k, .alpha = alpha, .beta = 0.0f,
        .a = a, .lda = lda, .b = packed_h ? NULL : h, .ldb = ldb, .packed_b = view, .c = c,
        .ldc = ldc, .a_sums = db, .squares = parts};
    const int status = sgemm_run(&g);
    if (status != MLPF_OK) return status;
    double total = 0.0;
    for (int t = 0; t < MLPF_POOL_MAX_THREADS; t++) total += parts[t];
    if (db) total += mlpf_sum_squares_rows(1, m, db, m);
    *squares = total;
    return MLPF_OK;
}

/* --- double precision: the plain loop, threaded over rows of C ------------------------ */

typedef struct {
    int trans_a, trans_b;
    int64_t m, n, k;
    double alpha, beta;
    const double *a, *b;
    int64_t lda, ldb;
    double *c;
    int64_t ldc;
    const double *bias;
    int act;
    const double *y;                 /* mlpf_dgemm_dact: C *= f'(Y), or NULL */
    int64_t ldy;
    int dact;
} dgemm_call;

/* Rows i of C in this thread's share, loop i-p-j: unit stride over op(B) rows and C. */
static void dgemm_task(void *arg, int index, int threads)
{
    const dgemm_call *g = arg;
    for (int64_t i = split(g->m, 1, threads, index); i < split(g->m, 1, threads, index + 1); i++) {
        double *c_row = g->c + i * g->ldc;
        for (int64_t j = 0; j < g->n; j++) c_row[j] = g->beta == 0 ? 0.0 : g->beta * c_row[j];
        for (int64_t p = 0; p < g->k; p++) {
            double a_ip = g->alpha * (g->trans_a ? g->a[p * g->lda + i] : g->a[i * g->lda + p]);
            if (g->trans_b) {
                for (int64_t j = 0; j < g->n; j++) c_row[j] += a_ip * g->b[j * g->ldb + p];
            } else {
                const double *b_row = g->b + p * g->ldb;
                for (int64_t j = 0; j < g->n; j++) c_row[j] += a_ip * b_row[j];
            }
        }
        for (int64_t j = 0; j < g->n; j++) {
            double v = c_row[j] + (g->bias ? g->bias[j] : 0.0);
            c_row[j] = g->act == MLPF_ACT_RELU && v < 0 ? 0.0 : v;
        }
        if (g->y) dapply_dact_row(g->n, c_row, g->y + i * g->ldy, g->dact);
    }
}

/* Runs the call on the pool (so with denormals flushed, threadpool.c), m, n > 0. */
static int dgemm_run(dgemm_call *g)
{
    if (g->alpha == 0.0) g->k = 0;              /* the product vanishes: A and B not read */
    int threads = mlpf_threads_for((double)g->m * g->n * g->k);
    mlpf_pool_run((int)imin(threads, g->m), dgemm_task, g);
    return MLPF_OK;
}

int mlpf_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
               double beta, double *c, int64_t ldc, const double *bias, int act)
{
    CHECK_ARGS(double)
    if (m == 0 || n == 0) return MLPF_OK;
    dgemm_call g = {trans_a, trans_b, m, n, k, alpha, beta, a, b, lda, ldb, c, ldc, bias, act};
    return dgemm_run(&g);
}

int mlpf_dgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
                    double *c, int64_t ldc, const double *y, int64_t ldy, int dact)
{
    const double beta = 0.0, *bias = NULL;
    const int act = MLPF_ACT_IDENTITY;
    CHECK_ARGS(double)
    CHECK_DACT_ARGS
    if (m == 0 || n == 0) return MLPF_OK;
    dgemm_call g = {trans_a, trans_b, m, n, k, alpha, beta, a, b, lda, ldb, c, ldc, bias, act,
                    y, ldy, dact};
    return dgemm_run(&g);
}
