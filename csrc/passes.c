/* Passes of a training step on the GEMM's thread pool (API in gemm.h): the SGD and
 * Adam/AdamW updates and the sum of squares that checks the gradients (those that no
 * mlpf_sgemm_weight_grad checked in its tiles, or all of them), over a model's flat
 * float32 buffers, the gather of a batch's rows, and dropout (its Philox mask).
 *
 * Why here and not only in Numba: in a training step these passes come right after the
 * step's last GEMM, while the pool's workers still spin, so they start on every core at
 * once; a Numba parallel kernel would first wake OpenMP's sleeping threads and then
 * share the cores with the spinning GEMM workers. Each thread takes its share of the
 * items in chunks of whole 64-byte cache lines (16 floats), then helps with what the
 * others have left (moving_shares); the sum of squares keeps static shares.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include "gemm.h"
#include "gemm_kernels.h"
#include "threadpool.h"

/* One thread below the config's threshold: one core does a short pass in a few
 * microseconds, less than waking the pool's workers when they sleep. */
int mlpf_pass_threads(int64_t n)
{
    const mlpf_sgemm_config *cfg = mlpf_active_config();
    const int64_t least = mlpf_pool_awake() ? cfg->pass_min_parallel
                                            : cfg->pass_min_parallel_asleep;
    return n < least ? 1 : mlpf_get_num_threads();
}

static int64_t range_start(int64_t n, int threads, int index)
{
    const int64_t lines = (n + 15) / 16;
    const int64_t start = lines * index / threads * 16;
    return start < n ? start : n;
}

/* Shares that move: a pass's n items cut into chunks (CHUNKS_PER_SHARE per thread, each a
 * multiple of `multiple` items), and thread t's share the t-th run of them, as a static
 * split would give it. Each thread takes the chunks of its own share first, one at a time
 * from the share's counter (so consecutive passes over the same buffers still find their
 * data in the same core's cache), then what is left of the other shares from theirs. A
 * thread that the machine slows (its core's memory traffic contended by a neighbour, or
 * the vCPU descheduled) leaves the end of its share to the others instead of holding up
 * the pass (bench/README.md, "Where a step's time goes"). Item-wise passes give the same
 * result whoever takes a chunk. */
enum { CHUNKS_PER_SHARE = 8 };

typedef struct {
    int64_t n, chunk, chunks;
    int threads;
    _Atomic int64_t next[MLPF_POOL_MAX_THREADS];   /* per share: its next chunk */
} moving_shares;

static void moving_shares_init(moving_shares *s, int64_t n, int threads, int64_t multiple)
{
    if (threads < 1) threads = 1;
    if (threads > MLPF_POOL_MAX_THREADS) threads = MLPF_POOL_MAX_THREADS;
    const int64_t wanted = (n + threads * CHUNKS_PER_SHARE - 1) / (threads * CHUNKS_PER_SHARE);
    s->n = n;
    s->chunk = wanted < 1 ? multiple : (wanted + multiple - 1) / multiple * multiple;
    s->chunks = (n + s->chunk - 1) / s->chunk;
    s->threads = threads;
    for (int t = 0; t < threads; t++) atomic_init(&s->next[t], s->chunks * t / threads);
}

/* The next chunk [*lo, *hi) for thread `index`: from its own share, then from the others
 * in turn (*visited counts the shares found empty; start it at 0). 0 when none is left.
 * The pool may run a job on fewer threads than asked (then index 0 takes every share). */
static int take_chunk(moving_shares *s, int index, int *visited, int64_t *lo, int64_t *hi)
{
    for (; *visited < s->threads; ++*visited) {
        const int share = (index + *visited) % s->threads;
        const int64_t end = s->chunks * (share + 1) / s->threads;
        const int64_t chunk = atomic_fetch_add(&s->next[share], 1);
        if (chunk < end) {
            *lo = chunk * s->chunk;
            *hi = *lo + s->chunk < s->n ? *lo + s->chunk : s->n;
            return 1;
        }
    }
    return 0;
}

/* --- SGD ------------------------------------------------------------------------------- */

typedef struct {
    float *p;
    const float *g;
    float *buf;
    int64_t n;
    float lr, momentum, weight_decay;
    int nesterov, first_step;
    moving_shares shares;
} sgd_call;

/* The update of kernels/optim.py, element by element: g = grad + wd p; with momentum,
 * buf = g (first step) or momentum buf + g, then g = g + momentum buf (Nesterov) or buf;
 * p -= lr g. */
VECTOR_CLONES static void sgd_range(const sgd_call *c, int64_t lo, int64_t hi)
{
    float *restrict p = c->p, *restrict buf = c->buf;
    const float *restrict g = c->g;
    for (int64_t i = lo; i < hi; i++) {
        float d = g[i] + c->weight_decay * p[i];
        if (c->momentum != 0.0f) {
            const float b = c->first_step ? d : c->momentum * buf[i] + d;
            buf[i] = b;
            d = c->nesterov ? d + c->momentum * b : b;
        }
        p[i] -= c->lr * d;
    }
}

static void sgd_task(void *arg, int index, int threads)
{
    sgd_call *c = arg;
    (void)threads;
    int64_t lo, hi;
    for (int visited = 0; take_chunk(&c->shares, index, &visited, &lo, &hi);)
        sgd_range(c, lo, hi);
}

int mlpf_ssgd(float *param, const float *grad, float *momentum_buf, int64_t n, float lr,
              float momentum, int nesterov, float weight_decay, int first_step)
{
    if (n < 0) return MLPF_ERR_SHAPE;
    if (n && (!param || !grad || (momentum != 0.0f && !momentum_buf))) return MLPF_ERR_NULL;
    sgd_call c = {param, grad, momentum_buf, n, lr, momentum, weight_decay, nesterov != 0,
                  first_step != 0};
    const int threads = mlpf_pass_threads(n);
    moving_shares_init(&c.shares, n, threads, 16);
    mlpf_pool_run(threads, sgd_task, &c);
    return MLPF_OK;
}

/* --- Adam / AdamW ------------------------------------------------------------------------ */

typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n;
    float step_size, beta1, beta2, rest1, rest2, inv_bc2_sqrt, eps, weight_decay, decay;
    moving_shares shares;
} adam_call;

/* The update of kernels/optim.py, element by element:
 *   g = grad + wd p (Adam), p *= 1 - lr wd (AdamW: decay);  m = b1 m + (1 - b1) g;
 *   v = b2 v + (1 - b2) g^2;  p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
VECTOR_CLONES static void adam_range(const adam_call *c, int64_t lo, int64_t hi)
{
    float *restrict p = c->p, *restrict m = c->m, *restrict v = c->v;
    const float *restrict g = c->g;
    const float b1 = c->beta1, b2 = c->beta2, r1 = c->rest1, r2 = c->rest2;
    for (int64_t i = lo; i < hi; i++) {
        const float grad = g[i] + c->weight_decay * p[i];
        const float m_i = b1 * m[i] + r1 * grad;
        const float v_i = b2 * v[i] + r2 * grad * grad;
        m[i] = m_i;
        v[i] = v_i;
        p[i] = p[i] * c->decay - c->step_size * m_i / (sqrtf(v_i) * c->inv_bc2_sqrt + c->eps);
    }
}

static void adam_task(void *arg, int index, int threads)
{
    adam_call *c = arg;
    (void)threads;
    int64_t lo, hi;
    for (int visited = 0; take_chunk(&c->shares, index, &visited, &lo, &hi);)
        adam_range(c, lo, hi);
}

int mlpf_sadam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
               float step_size, double beta1, double beta2, float inv_bc2_sqrt, float eps,
               float weight_decay, float decay)
{
    if (n < 0) return MLPF_ERR_SHAPE;
    if (n && (!param || !grad || !exp_avg || !exp_avg_sq)) return MLPF_ERR_NULL;
    /* 1 - beta from the double beta: 1 - (float)0.9999 would be 1.7e-4 off */
    adam_call c = {param, grad, exp_avg, exp_avg_sq, n, step_size, (float)beta1, (float)beta2,
                   (float)(1.0 - beta1), (float)(1.0 - beta2), inv_bc2_sqrt, eps, weight_decay,
                   decay};
    const int threads = mlpf_pass_threads(n);
    moving_shares_init(&c.shares, n, threads, 16);
    mlpf_pool_run(threads, adam_task, &c);
    return MLPF_OK;
}

/* --- sum of squares ------------------------------------------------------------------------ */

enum { MAX_PARTS = 256 };

typedef struct {
    const float *x;
    int64_t n;
    double part[MAX_PARTS];
} squares_call;

/* 64 float32 running sums (four 16-float vectors, GCC's vector extension: one zmm each
 * under AVX-512, independent so that the adds overlap) over 64 values of a row at a time,
 * then 16, the row's last few in one more float32 sum; the four vectors added lane by
 * lane, then their 16 lanes and the last sum in double (gemm_kernels.h). */
typedef float float16_vector __attribute__((vector_size(64)));

VECTOR_CLONES double mlpf_sum_squares_rows(int64_t rows, int64_t cols, const float *x, int64_t ld)
{
    float16_vector sums[4] = {{0}};
    float tail = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict row = x + r * ld;
        int64_t i = 0;
        for (; i + 64 <= cols; i += 64)
            for (int v = 0; v < 4; v++) {
                float16_vector part;
                memcpy(&part, row + i + 16 * v, sizeof part);    /* unaligned load */
                sums[v] += part * part;
            }
        for (; i + 16 <= cols; i += 16) {
            float16_vector part;
            memcpy(&part, row + i, sizeof part);
            sums[0] += part * part;
        }
        for (; i < cols; i++) tail += row[i] * row[i];
    }
    const float16_vector lanes = (sums[0] + sums[1]) + (sums[2] + sums[3]);
    double total = tail;
    for (int j = 0; j < 16; j++) total += lanes[j];
    return total;
}

/* Static shares, not moving ones: the partial sums are added in thread order, so the sum
 * depends on the thread count only, not on which thread the machine slowed. */
static void squares_task(void *arg, int index, int threads)
{
    squares_call *c = arg;
    const int64_t lo = range_start(c->n, threads, index);
    c->part[index] = mlpf_sum_squares_rows(1, range_start(c->n, threads, index + 1) - lo,
                                           c->x + lo, 0);
}

double mlpf_ssum_squares(const float *x, int64_t n)
{
    if (n <= 0 || !x) return 0.0;
    squares_call c = {.x = x, .n = n};
    int threads = mlpf_pass_threads(n);
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    threads = mlpf_pool_run(threads, squares_task, &c);
    double total = 0.0;
    for (int t = 0; t < threads; t++) total += c.part[t];
    return total;
}

/* --- backward pass of a narrow layer ------------------------------------------------- */

typedef struct {
    int64_t rows, n, k;
    const float *dz, *w, *h;
    int64_t ldz, ldw, ldh;
    float *dh, *dw;
    int64_t lddh, lddw;
    int dact;
    double part[MAX_PARTS];                         /* per thread: squares of its dw columns */
} narrow_backward_call;

typedef int32_t int16_vector __attribute__((vector_size(64)));

/* Rows r0..r0+R-1 (R a constant once inlined) at the 16 columns from j: h's 16 values of
 * each row stay in registers for both products, dw's 16 values of each output in one
 * register across the R rows. Sums in the order of the rows (and of the outputs for dh),
 * as the GEMM's micro-kernel adds along k. */
static inline __attribute__((always_inline)) void
narrow_backward_rows(const narrow_backward_call *c, const int R, int64_t r0, int64_t j)
{
    float16_vector hv[8], dx[8];
    for (int r = 0; r < R; r++) {
        memcpy(&hv[r], c->h + (r0 + r) * c->ldh + j, sizeof hv[r]);
        dx[r] = (float16_vector){0};
    }
    for (int64_t o = 0; o < c->n; o++) {
        float16_vector wv, acc = {0};
        memcpy(&wv, c->w + o * c->ldw + j, sizeof wv);
        float *dw = c->dw + o * c->lddw + j;
        if (r0) memcpy(&acc, dw, sizeof acc);
        for (int r = 0; r < R; r++) {
            const float d = c->dz[(r0 + r) * c->ldz + o];
            dx[r] += d * wv;
            acc += d * hv[r];
        }
        memcpy(dw, &acc, sizeof acc);
    }
    const float16_vector zero = {0};
    for (int r = 0; r < R; r++) {                      /* dx f'(h), as mlpf_times_dact */
        const float16_vector y = hv[r];
        const float16_vector v =
            c->dact == MLPF_ACT_RELU ? (float16_vector)((y > zero) & (int16_vector)dx[r])
            : c->dact == MLPF_ACT_SIGMOID ? dx[r] * (y * (1.0f - y))
            : dx[r] * (1.0f - y * y);
        memcpy(c->dh + (r0 + r) * c->lddh + j, &v, sizeof v);
    }
}

/* Columns j0..j1-1 of dw and dh, eight rows at a time (then one), each block of rows
 * across all the columns, 16 at a time: the rows of h and dh are read and written in
 * order, and the share's columns of w and dw (n x 16 values each) stay in L1. The last
 * few columns one at a time. */
VECTOR_CLONES static void narrow_backward_columns(const narrow_backward_call *c, int64_t j0,
                                                  int64_t j1)
{
    const int64_t vectors_end = j0 + (j1 - j0) / 16 * 16;
    int64_t r0 = 0;
    for (; r0 + 8 <= c->rows; r0 += 8)
        for (int64_t j = j0; j < vectors_end; j += 16) narrow_backward_rows(c, 8, r0, j);
    for (; r0 < c->rows; r0++)
        for (int64_t j = j0; j < vectors_end; j += 16) narrow_backward_rows(c, 1, r0, j);
    int64_t j = vectors_end;
    for (; j < j1; j++) {
        for (int64_t o = 0; o < c->n; o++) c->dw[o * c->lddw + j] = 0.0f;
        for (int64_t r = 0; r < c->rows; r++) {
            const float y = c->h[r * c->ldh + j];
            float x = 0.0f;
            for (int64_t o = 0; o < c->n; o++) {
                const float d = c->dz[r * c->ldz + o];
                x += d * c->w[o * c->ldw + j];
                c->dw[o * c->lddw + j] += d * y;
            }
            c->dh[r * c->lddh + j] = mlpf_times_dact(x, y, c->dact);
        }
    }
}

/* Static shares of whole cache lines of columns: each thread owns its columns of dw, so
 * no sums are split, and the squares add up in thread order. */
static void narrow_backward_task(void *arg, int index, int threads)
{
    narrow_backward_call *c = arg;
    const int64_t j0 = range_start(c->k, threads, index), j1 = range_start(c->k, threads, index + 1);
    if (j1 > j0) narrow_backward_columns(c, j0, j1);
    c->part[index] = j1 > j0 ? mlpf_sum_squares_rows(c->n, j1 - j0, c->dw + j0, c->lddw) : 0.0;
}

int mlpf_snarrow_backward(int64_t rows, int64_t n, int64_t k, const float *dz, int64_t ldz,
                          const float *w, int64_t ldw, const float *h, int64_t ldh, float *dh,
                          int64_t lddh, float *dw, int64_t lddw, float *db, int dact,
                          double *squares)
{
    const int64_t min_ld = k > 1 ? k : 1;
    if (rows < 0 || n < 0 || k < 0 || n > MLPF_NARROW_N) return MLPF_ERR_SHAPE;
    if (ldz < (n > 1 ? n : 1) || ldw < min_ld || ldh < min_ld || lddh < min_ld || lddw < min_ld)
        return MLPF_ERR_STRIDE;
    if (dact != MLPF_ACT_RELU && dact != MLPF_ACT_SIGMOID && dact != MLPF_ACT_TANH)
        return MLPF_ERR_ACT;
    if (!squares || (rows && n && !dz) || (n && k && (!w || !dw)) || (rows && k && (!h || !dh)))
        return MLPF_ERR_NULL;
    narrow_backward_call c = {.rows = rows, .n = n, .k = k, .dz = dz, .w = w, .h = h,
                              .ldz = ldz, .ldw = ldw, .ldh = ldh, .dh = dh, .dw = dw,
                              .lddh = lddh, .lddw = lddw, .dact = dact};
    int threads = 0;
    if (rows && n && k) {
        threads = mlpf_pass_threads(rows * k);
        if (threads > (k + 15) / 16) threads = (int)((k + 15) / 16);
        if (threads > MAX_PARTS) threads = MAX_PARTS;
        threads = mlpf_pool_run(threads, narrow_backward_task, &c);
    } else {                             /* an empty sum: dw = 0 and dh = 0 f'(h) = 0 */
        for (int64_t o = 0; o < n && k; o++) memset(dw + o * lddw, 0, k * sizeof *dw);
        for (int64_t r = 0; r < rows && k; r++) memset(dh + r * lddh, 0, k * sizeof *dh);
    }
    double total = 0.0;
    for (int t = 0; t < threads; t++) total += c.part[t];
    if (db) {              /* four partial sums (row mod 4) a column, as weight_grad's db */
        for (int64_t o = 0; o < n; o++) {
            float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t r = 0; r < rows; r++) part[r % 4] += dz[r * ldz + o];
            db[o] = (part[0] + part[1]) + (part[2] + part[3]);
        }
        total += mlpf_sum_squares_rows(1, n, db, n);
    }
    *squares = total;
    return MLPF_OK;
}

/* --- batch gather ------------------------------------------------------------------------- */

typedef struct {
    const float *src;
    int64_t ld, cols;
    const int64_t *index;
    int64_t rows;
    float *out;
    float *panels;                                  /* packed layout after its header, or NULL */
    mlpf_packed_view layout;                        /* of panels */
    moving_shares shares;                           /* of rows */
} gather_call;

/* Rows lo..hi-1 of the batch into the packed layout (gemm_kernels.h, mlpf_packed_view),
 * GATHER_GROUP rows at a time, run by run: the group's runs at the same columns lie side
 * by side there, and the group's source rows are all read at once, a run of each at a
 * time (eight rows did best: bench/README.md, "The first layer's input"). */
enum { GATHER_GROUP = 8 };

VECTOR_CLONES static void pack_batch_rows(const gather_call *c, int64_t lo, int64_t hi)
{
    const int nr = c->layout.nr;
    for (int64_t i0 = lo; i0 < hi; i0 += GATHER_GROUP) {
        const int64_t i1 = hi - i0 < GATHER_GROUP ? hi : i0 + GATHER_GROUP;
        for (int64_t j0 = 0; j0 < c->cols; j0 += nr) {
            const int64_t width = c->cols - j0 < nr ? c->cols - j0 : nr;
            for (int64_t i = i0; i < i1; i++) {
                const float *from = c->src + c->index[i] * c->ld + j0;
                float *to = c->panels + mlpf_packed_offset(&c->layout, i, j0);
                if (width == 32) {               /* AVX-512's runs: one 128-byte copy */
                    memcpy(to, from, 128);
                    continue;
                }
                for (int64_t q = 0; q < width; q++) to[q] = from[q];
                for (int64_t q = width; q < nr; q++) to[q] = 0.0f;
            }
        }
    }
}

/* Rows lo..hi-1 of the batch into out, in the same order: GATHER_GROUP rows at a time, a
 * run of 32 columns of each in turn. */
static void copy_batch_rows(const gather_call *c, int64_t lo, int64_t hi)
{
    for (int64_t i0 = lo; i0 < hi; i0 += GATHER_GROUP) {
        const int64_t i1 = hi - i0 < GATHER_GROUP ? hi : i0 + GATHER_GROUP;
        for (int64_t j0 = 0; j0 < c->cols; j0 += 32) {
            const size_t bytes = (size_t)(c->cols - j0 < 32 ? c->cols - j0 : 32) * 4;
            for (int64_t i = i0; i < i1; i++)
                memcpy(c->out + i * c->cols + j0, c->src + c->index[i] * c->ld + j0, bytes);
        }
    }
}

static void gather_task(void *arg, int index, int threads)
{
    gather_call *c = arg;
    (void)threads;
    int64_t lo, hi;
    for (int visited = 0; take_chunk(&c->shares, index, &visited, &lo, &hi);) {
        if (c->panels) pack_batch_rows(c, lo, hi);
        if (c->out) copy_batch_rows(c, lo, hi);
    }
}

/* The checks of mlpf_sgather's arguments: MLPF_OK, or the error (nothing written). */
static int gather_check(const gather_call *c, int64_t src_rows)
{
    if (c->rows < 0 || c->cols < 0 || src_rows < 0 || c->ld < c->cols) return MLPF_ERR_SHAPE;
    if (c->rows && c->cols && (!c->src || !c->index || (!c->out && !c->panels)))
        return MLPF_ERR_NULL;
    for (int64_t i = 0; i < c->rows; i++)
        if (c->index[i] < 0 || c->index[i] >= src_rows) return MLPF_ERR_SHAPE;
    return MLPF_OK;
}

static void gather_run(gather_call *c)
{
    const int threads = mlpf_pass_threads(c->rows * c->cols);
    moving_shares_init(&c->shares, c->rows, threads, 1);
    mlpf_pool_run(threads, gather_task, c);
}

int mlpf_sgather(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                 const int64_t *index, int64_t rows, float *out)
{
    gather_call c = {src, ld, cols, index, rows, out};
    const int status = gather_check(&c, src_rows);
    if (status == MLPF_OK) gather_run(&c);
    return status;
}

int mlpf_sgather_packed(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                        const int64_t *index, int64_t rows, float *out, float *packed,
                        int64_t capacity)
{
    if (!packed) return MLPF_ERR_NULL;
    if ((uintptr_t)packed % 64) return MLPF_ERR_ALIGN;
    gather_call c = {src, ld, cols, index, rows, out, packed + MLPF_PACKED_B_HEADER};
    int status = gather_check(&c, src_rows);
    if (status == MLPF_OK && capacity < mlpf_packed_b_floats(rows, cols)) status = MLPF_ERR_SHAPE;
    if (status != MLPF_OK) return status;
    c.layout = mlpf_packed_b_start(packed, rows, cols);
    gather_run(&c);
    return MLPF_OK;
}

/* --- dropout ------------------------------------------------------------------------------ */

typedef struct {
    const float *x;
    float *out;
    uint8_t *keep;
    int64_t rows, cols, threshold;
    uint32_t key[2], counter[3];        /* counter words 1-3: layer, step lo, step hi */
    float scale;
    moving_shares shares;
} dropout_call;

enum { PHILOX_BLOCKS = 64 };            /* blocks per batch: 256 words on the stack */
/* Philox-4x32's round multipliers and key increments (Salmon et al. 2011), as in
 * kernels/dropout.py. */
static const uint32_t PHILOX_M0 = 0xD2511F53u, PHILOX_M1 = 0xCD9E8D57u,
                      PHILOX_W0 = 0x9E3779B9u, PHILOX_W1 = 0xBB67AE85u;

/* The 4 words of Philox-4x32-10 for the blocks first .. first + n - 1 (n <= PHILOX_BLOCKS)
 * into u[4 b + w]: ten rounds over all blocks at once, so that the lanes vectorize. */
VECTOR_CLONES static void philox_words(const dropout_call *c, int64_t first, int n,
                                       uint32_t *restrict u)
{
    uint32_t c0[PHILOX_BLOCKS], c1[PHILOX_BLOCKS], c2[PHILOX_BLOCKS], c3[PHILOX_BLOCKS];
    for (int b = 0; b < n; b++) {
        c0[b] = (uint32_t)(first + b);
        c1[b] = c->counter[0];
        c2[b] = c->counter[1];
        c3[b] = c->counter[2];
    }
    uint32_t k0 = c->key[0], k1 = c->key[1];
    for (int round = 0; round < 10; round++) {
        for (int b = 0; b < n; b++) {
            const uint64_t p0 = (uint64_t)PHILOX_M0 * c0[b], p1 = (uint64_t)PHILOX_M1 * c2[b];
            c0[b] = (uint32_t)(p1 >> 32) ^ c1[b] ^ k0;
            c1[b] = (uint32_t)p1;
            c2[b] = (uint32_t)(p0 >> 32) ^ c3[b] ^ k1;
            c3[b] = (uint32_t)p0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int b = 0; b < n; b++) {
        u[4 * b] = c0[b];
        u[4 * b + 1] = c1[b];
        u[4 * b + 2] = c2[b];
        u[4 * b + 3] = c3[b];
    }
}

/* Elements lo .. hi - 1 (flat indices), a batch of Philox blocks at a time. */
VECTOR_CLONES static void dropout_range(const dropout_call *c, int64_t lo, int64_t hi)
{
    uint32_t u[4 * PHILOX_BLOCKS];
    const uint64_t threshold = (uint64_t)c->threshold;
    const float scale = c->scale;
    const float *x = c->x;              /* out may be x */
    float *out = c->out;
    uint8_t *restrict keep = c->keep;
    for (int64_t start = lo & ~(int64_t)3; start < hi; start += 4 * PHILOX_BLOCKS) {
        const int64_t end = start + 4 * PHILOX_BLOCKS < hi ? start + 4 * PHILOX_BLOCKS : hi;
        philox_words(c, start >> 2, (int)((end - start + 3) >> 2), u);
        const int64_t from = start > lo ? start : lo;
        for (int64_t i = from; i < end; i++)
            out[i] = (uint64_t)u[i - start] >= threshold ? x[i] * scale : 0.0f;
        if (keep)
            for (int64_t i = from; i < end; i++)
                keep[i] = (uint64_t)u[i - start] >= threshold;
    }
}

#ifdef MLPF_X86
#include <immintrin.h>
#define AVX512_BW __attribute__((target("avx512f,avx512bw,bmi2")))

/* hi and lo 32 bits of the 16 products m v (v: 16 x uint32 lanes): vpmuludq multiplies the
 * even lanes, then the odd ones shifted down; the halves are blended back into lanes. */
AVX512_BW static inline void mul_hi_lo(__m512i v, __m512i m, __m512i *hi, __m512i *lo)
{
    const __m512i even = _mm512_mul_epu32(v, m);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(v, 32), m);
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* dropout_range with 16 Philox blocks (64 elements) per iteration in 16-lane vectors: the
 * 4 words' keep bits interleave (pdep) into element order; lo and hi cut masks. */
AVX512_BW static void dropout_range_avx512(const dropout_call *c, int64_t lo, int64_t hi)
{
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i t = _mm512_set1_epi32((int)(uint32_t)c->threshold);
    const int none_kept = c->threshold > 0xFFFFFFFFll;          /* p = 1 */
    const __m512 scale = _mm512_set1_ps(c->scale);
    const __m512i one = _mm512_set1_epi8(1);
    for (int64_t start = lo & ~(int64_t)3; start < hi; start += 64) {
        __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)(start >> 2)), lanes);
        __m512i c1 = _mm512_set1_epi32((int)c->counter[0]);
        __m512i c2 = _mm512_set1_epi32((int)c->counter[1]);
        __m512i c3 = _mm512_set1_epi32((int)c->counter[2]);
        uint32_t k0 = c->key[0], k1 = c->key[1];
        for (int round = 0; round < 10; round++) {
            __m512i hi0, lo0, hi1, lo1;
            mul_hi_lo(c0, m0, &hi0, &lo0);
            mul_hi_lo(c2, m1, &hi1, &lo1);
            c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
            c1 = lo1;
            c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
            c3 = lo0;
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t kept = 0;                                /* bit j: element start + j */
        if (!none_kept)
            kept = _pdep_u64(_mm512_cmpge_epu32_mask(c0, t), 0x1111111111111111ull)
                 | _pdep_u64(_mm512_cmpge_epu32_mask(c1, t), 0x2222222222222222ull)
                 | _pdep_u64(_mm512_cmpge_epu32_mask(c2, t), 0x4444444444444444ull)
                 | _pdep_u64(_mm512_cmpge_epu32_mask(c3, t), 0x8888888888888888ull);
        const int64_t first = start < lo ? lo - start : 0, last = hi - start < 64 ? hi - start : 64;
        const uint64_t in_range = (last == 64 ? ~0ull : (1ull << last) - 1) & (~0ull << first);
        for (int q = 0; q < 4; q++) {
            const __mmask16 here = (__mmask16)(in_range >> (16 * q));
            if (!here) continue;
            const __m512 x = _mm512_maskz_loadu_ps(here, c->x + start + 16 * q);
            _mm512_mask_storeu_ps(c->out + start + 16 * q, here,
                                  _mm512_maskz_mul_ps((__mmask16)(kept >> (16 * q)), x, scale));
        }
        if (c->keep)
            _mm512_mask_storeu_epi8(c->keep + start, in_range, _mm512_maskz_mov_epi8(kept, one));
    }
}
#endif

static void dropout_task(void *arg, int index, int threads)
{
    dropout_call *c = arg;
    (void)threads;
#ifdef MLPF_X86
    const int avx512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("bmi2");
#endif
    int64_t lo, hi;
    for (int visited = 0; take_chunk(&c->shares, index, &visited, &lo, &hi);) {
#ifdef MLPF_X86
        if (avx512) {
            dropout_range_avx512(c, lo, hi);
            continue;
        }
#endif
        dropout_range(c, lo, hi);
    }
}

int mlpf_sdropout(const float *x, float *out, uint8_t *keep, int64_t rows, int64_t cols,
                  int64_t threshold, int64_t key_lo, int64_t key_hi, int64_t layer,
                  int64_t step_lo, int64_t step_hi, float scale)
{
    if (rows < 0 || cols < 0 || (cols && rows > ((int64_t)1 << 34) / cols)
        || threshold < 0 || threshold > ((int64_t)1 << 32))
        return MLPF_ERR_SHAPE;
    if (rows && cols && (!x || !out)) return MLPF_ERR_NULL;
    dropout_call c = {x, out, keep, rows, cols, threshold,
                      {(uint32_t)key_lo, (uint32_t)key_hi},
                      {(uint32_t)layer, (uint32_t)step_lo, (uint32_t)step_hi}, scale};
    /* compute-bound (measured in bench/README.md, "Passes on the GEMM's thread pool"): all
     * threads from the awake threshold on, whether or not the workers sleep */
    const int threads = rows * cols < mlpf_active_config()->pass_min_parallel
                        ? 1 : mlpf_get_num_threads();
    moving_shares_init(&c.shares, rows * cols, threads, 16);
    mlpf_pool_run(threads, dropout_task, &c);
    return MLPF_OK;
}
