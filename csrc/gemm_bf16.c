/* mlpfast bf16 GEMM: mlpf_sbgemm and mlpf_sbgemm_dact (API in gemm.h), the loops around
 * the bf16 micro-kernels (contract in gemm_bf16_kernels.h).
 *
 * For C (m x n) = op(A) (m x k) op(B) (k x n), the threads take items (row block, column
 * chunk) from a shared counter:
 *
 *   item (ic, jc):                  A block  op(A)[ic:ic+mb, 0:k], packed once per thread
 *                                            and row block (L2/L3)
 *                                   B chunk  op(B)[0:k, jc:jc+chunk_n], packed (L2)
 *     for ir in mb by MR:           sums     MR x chunk_n floats (L1/L2)
 *       for pc in k by kc:          A micro-panel MR x kc stays in L1
 *         for jr in chunk_n by NR:  B micro-panel kc x NR streams from L2
 *           micro-kernel: sums[:, jr:jr+NR] (+)= A panel . B panel
 *       C[ir:ir+MR, jc:jc+chunk_n] = epilogue(sums), row by row
 *
 * Both operands are packed for all of k, so the sums of a row panel of C wait between k
 * blocks in a buffer of MR x chunk_n floats, not in C: a bf16 C could not hold them. The
 * epilogue applies alpha, beta C, bias, act and f'(Y) in float32 and rounds C to its type
 * once. Packing rounds float32 operands to bf16 and pads k to a multiple of 32 with
 * zeros. Edge tiles need nothing special: padded rows and columns of the panels are
 * zeros, and the epilogue writes only the rows x cols that exist.
 *
 * Threads: the grid of gemm.c's choose_grid says whether to split rows (gm > 1: row
 * blocks of about m / gm) or columns (gm = 1: 2-4 column chunks per thread, all threads
 * sharing each row block). Thread t owns the items t, t + T, t + 2T, ... (T threads) and
 * takes them in order; then it takes the items other threads have not reached, so a
 * thread that the OS deschedules leaves its share to the others. Fixed owners keep the
 * lines of C an item writes on one core from call to call: the AMX kernel computes too
 * fast to hide their moving between cores (bench/README.md, "Two threads at the small
 * network's shapes").
 */
#include <stdatomic.h>
#include <string.h>
#include "gemm.h"
#include "gemm_bf16_kernels.h"
#include "gemm_driver.h"
#include "threadpool.h"

/* --- kernel selection ------------------------------------------------------------------ */

static const mlpf_sbgemm_config *const all_configs[] = {   /* best first */
#ifdef MLPF_X86
    &mlpf_sbgemm_amx_config, &mlpf_sbgemm_avx512bf16_config,
#endif
    &mlpf_sbgemm_portable_config,
};
enum { NUM_CONFIGS = sizeof all_configs / sizeof all_configs[0] };

static _Atomic(const mlpf_sbgemm_config *) active_config;

static const mlpf_sbgemm_config *best_config(void)
{
    for (int i = 0; i < NUM_CONFIGS; i++)
        if (all_configs[i]->supported()) return all_configs[i];
    return &mlpf_sbgemm_portable_config;
}

static const mlpf_sbgemm_config *sbgemm_config(void)
{
    const mlpf_sbgemm_config *cfg = atomic_load(&active_config);
    if (!cfg) {
        cfg = best_config();
        atomic_store(&active_config, cfg);
    }
    return cfg;
}

const char *mlpf_sbgemm_kernel_name(void) { return sbgemm_config()->name; }

int mlpf_set_sbgemm_kernel(const char *name)
{
    if (!name) return MLPF_ERR_KERNEL;
    const mlpf_sbgemm_config *cfg = strcmp(name, "auto") == 0 ? best_config() : NULL;
    for (int i = 0; i < NUM_CONFIGS && !cfg; i++)
        if (strcmp(name, all_configs[i]->family) == 0 || strcmp(name, all_configs[i]->name) == 0)
            cfg = all_configs[i];
    if (!cfg || !cfg->supported()) return MLPF_ERR_KERNEL;
    atomic_store(&active_config, cfg);
    return MLPF_OK;
}

/* --- the call ------------------------------------------------------------------------ */

typedef struct {
    const mlpf_sbgemm_config *cfg;
    int trans_a, trans_b;
    int64_t m, n, k;
    const char *a, *b;
    int a_type, b_type;
    int64_t lda, ldb;
    char *c;
    const char *y;                   /* mlpf_sbgemm_dact: C *= f'(Y), or NULL */
    const float *bias;
    mlpf_bf16_epilogue ep;           /* alpha, beta, act, C's and Y's type and stride */
    int64_t kc;                      /* depth of every k block but maybe the last */
    int64_t mb, chunk_n, chunks, items;
    char *workspace;                 /* per thread: A block, B chunk, sums of a row panel */
    size_t a_bytes, b_bytes, thread_bytes;
    atomic_long taken[MLPF_POOL_MAX_THREADS];   /* items of each owner taken so far */
} sbgemm_call;

static size_t type_size(int type) { return type == MLPF_TYPE_BF16 ? 2 : 4; }

/* Packs the rows first .. first+count-1 of X (op(A) with R = MR, group 32; or op(B)^T with
 * R = NR, group 2), 0:k deep, as mlpf_bf16_pack lays out micro-panels: the k block at depth
 * pc starts at pc * round_up(count, R) and holds R-row micro-panels of R x round_up(kcb, 32).
 * X[x][p] = src[x*ld + p] when along_k, else src[p*ld + x] (op(A): along_k = !trans_a, since
 * op(A)[i][p] = a[i*lda + p] or a[p*lda + i]; op(B): along_k = trans_b, since op(B)[p][j] =
 * b[p*ldb + j] or b[j*ldb + p]). */
static void pack_panels(const sbgemm_call *g, const char *src, int type, int64_t ld,
                        int along_k, int R, int group, int64_t first, int64_t count,
                        uint16_t *dst)
{
    const int64_t count_padded = round_up(count, R);
    for (int64_t pc = 0; pc < g->k; pc += g->kc) {
        const int64_t kcb = imin(g->kc, g->k - pc), kcb_padded = round_up(kcb, MLPF_BF16_K_GROUP);
        for (int64_t x = 0; x < count; x += R) {
            const int64_t at = along_k ? (first + x) * ld + pc : pc * ld + first + x;
            g->cfg->pack(R, group, kcb, imin(R, count - x), src + at * type_size(type), type, ld,
                         along_k, dst + pc * count_padded + x * kcb_padded);
        }
    }
}

/* C[i : i+rows, j : j+cols] = the epilogue of the sums t (row stride ldt). */
static void store_block(const sbgemm_call *g, const float *t, int64_t ldt, int64_t i, int64_t j,
                       int64_t rows, int64_t cols)
{
    g->cfg->store(rows, cols, t, ldt, g->c + (i * g->ep.ldc + j) * type_size(g->ep.c_type),
                  g->y ? g->y + (i * g->ep.ldy + j) * type_size(g->ep.y_type) : NULL,
                  g->bias ? g->bias + j : NULL, &g->ep);
}

/* C[ic : ic+mcb, jc : jc+ncb] from the packed A block and B chunk (all k). The sums of a
 * row panel have a row stride of ncb rounded up to NR plus 16 floats, so that their rows
 * (a multiple of 4 KiB apart otherwise) do not fall into one L1 set. */
static void run_item(const sbgemm_call *g, int64_t ic, int64_t mcb, int64_t jc, int64_t ncb,
                     const uint16_t *a_block, const uint16_t *b_chunk, float *sums)
{
    const mlpf_sbgemm_config *cfg = g->cfg;
    const int MR = cfg->mr, NR = cfg->nr;
    const int64_t mcb_padded = round_up(mcb, MR), ncb_padded = round_up(ncb, NR);
    const int64_t ldt = ncb_padded + 16;
    for (int64_t ir = 0; ir < mcb; ir += MR) {
        for (int64_t pc = 0; pc < g->k; pc += g->kc) {
            const int64_t kcb_padded = round_up(imin(g->kc, g->k - pc), MLPF_BF16_K_GROUP);
            const uint16_t *a_panel = a_block + pc * mcb_padded + ir * kcb_padded;
            for (int64_t jr = 0; jr < ncb; jr += NR)
                cfg->ukernel(kcb_padded, a_panel, b_chunk + pc * ncb_padded + jr * kcb_padded,
                             sums + jr, ldt, pc > 0);
        }
        store_block(g, sums, ldt, ic + ir, jc, imin(MR, mcb - ir), ncb);
    }
}

/* The next item for thread `index`: its own while they last, then those of the owners
 * after it (*owner counts from index to index + threads - 1); -1 when all are taken. */
static int64_t next_item(sbgemm_call *g, int index, int threads, int *owner)
{
    for (; *owner < index + threads; (*owner)++) {
        const int t = *owner % threads;
        const int64_t item = t + atomic_fetch_add(&g->taken[t], 1) * threads;
        if (item < g->items) return item;
    }
    return -1;
}

static void sbgemm_task(void *arg, int index, int threads)
{
    sbgemm_call *g = arg;
    char *mine = g->workspace + index * g->thread_bytes;
    uint16_t *a_block = (uint16_t *)mine, *b_chunk = (uint16_t *)(mine + g->a_bytes);
    float *sums = (float *)(mine + g->a_bytes + g->b_bytes);
    int64_t packed = -1;                           /* the row block now in a_block */
    if (g->cfg->thread_begin) g->cfg->thread_begin();
    int owner = index;
    for (int64_t item; (item = next_item(g, index, threads, &owner)) >= 0;) {
        const int64_t block = item / g->chunks, ic = block * g->mb, mcb = imin(g->mb, g->m - ic);
        const int64_t jc = item % g->chunks * g->chunk_n, ncb = imin(g->chunk_n, g->n - jc);
        if (block != packed) {
            pack_panels(g, g->a, g->a_type, g->lda, !g->trans_a, g->cfg->mr, MLPF_BF16_K_GROUP,
                        ic, mcb, a_block);
            packed = block;
        }
        pack_panels(g, g->b, g->b_type, g->ldb, g->trans_b, g->cfg->nr, 2, jc, ncb, b_chunk);
        run_item(g, ic, mcb, jc, ncb, a_block, b_chunk, sums);
    }
    if (g->cfg->thread_end) g->cfg->thread_end();
}

/* The split into items and the workspace; then the threads. m, n, k > 0. */
static int sbgemm_run(sbgemm_call *g)
{
    const mlpf_sbgemm_config *cfg = g->cfg;
    const int MR = cfg->mr, NR = cfg->nr;
    const int64_t m = g->m, n = g->n, k = g->k;
    int threads = mlpf_threads_for((double)m * n * k);
    const int64_t k_padded = round_up(k, MLPF_BF16_K_GROUP);
    g->kc = depth_block_len(k, cfg->kc, MLPF_BF16_K_GROUP);
    const int64_t mc = imax(MR, imin(cfg->mc, cfg->max_a_block_bytes / (2 * k_padded)) / MR * MR);
    const int64_t nc_l2 = imax(NR, cfg->b_chunk_bytes / (2 * k_padded) / NR * NR);
    const int64_t nc = round_up(imin(n, imin(cfg->nc, nc_l2)), NR);
    int gm, gn;
    choose_grid(threads, m, n, k, MR, NR, 1.0, &gm, &gn);
    g->mb = block_len(m, gm > 1 ? imin(mc, round_up((m + gm - 1) / gm, MR)) : mc, MR);
    g->chunk_n = nc;
    if (threads > 1 && gm == 1) {
        const int64_t parts = (g->mb * k_padded * 2 <= cfg->a_block_l2_bytes ? 4 : 2) * threads;
        g->chunk_n = imin(round_up((n + parts - 1) / parts, NR), nc);
    }
    g->chunks = (n + g->chunk_n - 1) / g->chunk_n;
    g->items = (m + g->mb - 1) / g->mb * g->chunks;
    g->a_bytes = (size_t)round_up(g->mb * k_padded * 2, 4096);
    g->b_bytes = (size_t)round_up(k_padded * g->chunk_n * 2, 4096);
    g->thread_bytes = g->a_bytes + g->b_bytes + (size_t)round_up(MR * (g->chunk_n + 16) * 4, 4096);
    threads = (int)imin(imin(threads, g->items), MLPF_POOL_MAX_THREADS);
    for (int t = 0; t < threads; t++) atomic_init(&g->taken[t], 0);
    int cached;
    g->workspace = mlpf_workspace_acquire(g->thread_bytes * threads, &cached);
    if (!g->workspace) return MLPF_ERR_NOMEM;
    mlpf_pool_run(threads, sbgemm_task, g);
    mlpf_workspace_release(g->workspace, cached);
    return MLPF_OK;
}

/* C = act(beta C + bias) (* f'(Y)): the epilogue of a vanishing product (k == 0 or
 * alpha == 0), a row of at most MLPF_MAX_NR columns at a time. A one-thread pool task, so
 * with denormals flushed like every other path (threadpool.c). */
static void store_zero_product(void *arg, int index, int threads)
{
    const sbgemm_call *g = arg;
    static const float zeros[MLPF_MAX_NR] __attribute__((aligned(64)));
    (void)index, (void)threads;
    for (int64_t i = 0; i < g->m; i++)
        for (int64_t j = 0; j < g->n; j += MLPF_MAX_NR)
            store_block(g, zeros, 0, i, j, 1, imin(MLPF_MAX_NR, g->n - j));
}

static int known_type(int type) { return type == MLPF_TYPE_F32 || type == MLPF_TYPE_BF16; }

/* Runs a checked call (m, n > 0). */
static int sbgemm_start(sbgemm_call *g)
{
    g->cfg = sbgemm_config();
    if (g->k == 0 || g->ep.alpha == 0.0f) {
        mlpf_pool_run(1, store_zero_product, g);
        return MLPF_OK;
    }
    return sbgemm_run(g);
}

int mlpf_sbgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void *a, int a_type, int64_t lda, const void *b, int b_type, int64_t ldb,
                float beta, void *c, int c_type, int64_t ldc, const float *bias, int act)
{
    CHECK_ARGS(float)
    if (!known_type(a_type) || !known_type(b_type) || !known_type(c_type)) return MLPF_ERR_TYPE;
    if (m == 0 || n == 0) return MLPF_OK;
    sbgemm_call g = {
        .trans_a = trans_a != 0, .trans_b = trans_b != 0, .m = m, .n = n, .k = k,
        .a = a, .b = b, .a_type = a_type, .b_type = b_type, .lda = lda, .ldb = ldb, .c = c,
        .bias = bias, .ep = {.alpha = alpha, .beta = beta, .relu = act == MLPF_ACT_RELU,
                             .c_type = c_type, .ldc = ldc}};
    return sbgemm_start(&g);
}

int mlpf_sbgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const void *a, int a_type, int64_t lda, const void *b, int b_type,
                     int64_t ldb, void *c, int c_type, int64_t ldc, const void *y, int y_type,
                     int64_t ldy, int dact)
{
    const int act = MLPF_ACT_IDENTITY;
    CHECK_ARGS(float)
    CHECK_DACT_ARGS
    if (!known_type(a_type) || !known_type(b_type) || !known_type(c_type) || !known_type(y_type))
        return MLPF_ERR_TYPE;
    if (m == 0 || n == 0) return MLPF_OK;
    sbgemm_call g = {
        .trans_a = trans_a != 0, .trans_b = trans_b != 0, .m = m, .n = n, .k = k,
        .a = a, .b = b, .a_type = a_type, .b_type = b_type, .lda = lda, .ldb = ldb, .c = c,
        .y = y, .ep = {.alpha = alpha, .c_type = c_type, .ldc = ldc, .y_type = y_type,
                       .ldy = ldy, .dact = dact}};
    return sbgemm_start(&g);
}
