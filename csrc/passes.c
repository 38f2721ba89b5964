/* Memory-bound passes of a training step on the GEMM's thread pool (API in gemm.h): the
 * SGD and Adam/AdamW updates and the sum of squares that checks the gradients, over a
 * model's flat float32 buffers, and the gather of a batch's rows.
 *
 * Why here and not only in Numba: in a training step these passes come right after the
 * step's last GEMM, while the pool's workers still spin, so they start on every core at
 * once; a Numba parallel kernel would first wake OpenMP's sleeping threads and then
 * share the cores with the spinning GEMM workers. Each thread takes one contiguous range,
 * cut at multiples of 16 floats (64-byte cache lines).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "gemm.h"
#include "gemm_kernels.h"
#include "threadpool.h"

/* One thread below the config's threshold: one core does a short pass in a few
 * microseconds, less than waking the pool's workers when they sleep. */
static int pass_threads(int64_t n)
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

int mlpf_parallel_for(void (*task)(void *arg, int index, int threads), void *arg,
                      int64_t work)
{
    return mlpf_pool_run(pass_threads(work), task, arg);
}

/* --- SGD ------------------------------------------------------------------------------- */

typedef struct {
    float *p;
    const float *g;
    float *buf;
    int64_t n;
    float lr, momentum, weight_decay;
    int nesterov, first_step;
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
    const sgd_call *c = arg;
    sgd_range(c, range_start(c->n, threads, index), range_start(c->n, threads, index + 1));
}

int mlpf_ssgd(float *param, const float *grad, float *momentum_buf, int64_t n, float lr,
              float momentum, int nesterov, float weight_decay, int first_step)
{
    if (n < 0) return MLPF_ERR_SHAPE;
    if (n && (!param || !grad || (momentum != 0.0f && !momentum_buf))) return MLPF_ERR_NULL;
    sgd_call c = {param, grad, momentum_buf, n, lr, momentum, weight_decay, nesterov != 0,
                  first_step != 0};
    mlpf_pool_run(pass_threads(n), sgd_task, &c);
    return MLPF_OK;
}

/* --- Adam / AdamW ------------------------------------------------------------------------ */

typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n;
    float step_size, beta1, beta2, inv_bc2_sqrt, eps, weight_decay, decay;
} adam_call;

/* The update of kernels/optim.py, element by element:
 *   g = grad + wd p (Adam), p *= 1 - lr wd (AdamW: decay);  m = b1 m + (1 - b1) g;
 *   v = b2 v + (1 - b2) g^2;  p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
VECTOR_CLONES static void adam_range(const adam_call *c, int64_t lo, int64_t hi)
{
    float *restrict p = c->p, *restrict m = c->m, *restrict v = c->v;
    const float *restrict g = c->g;
    const float b1 = c->beta1, b2 = c->beta2;
    for (int64_t i = lo; i < hi; i++) {
        const float grad = g[i] + c->weight_decay * p[i];
        const float m_i = b1 * m[i] + (1.0f - b1) * grad;
        const float v_i = b2 * v[i] + (1.0f - b2) * grad * grad;
        m[i] = m_i;
        v[i] = v_i;
        p[i] = p[i] * c->decay - c->step_size * m_i / (sqrtf(v_i) * c->inv_bc2_sqrt + c->eps);
    }
}

static void adam_task(void *arg, int index, int threads)
{
    const adam_call *c = arg;
    adam_range(c, range_start(c->n, threads, index), range_start(c->n, threads, index + 1));
}

int mlpf_sadam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
               float step_size, float beta1, float beta2, float inv_bc2_sqrt, float eps,
               float weight_decay, float decay)
{
    if (n < 0) return MLPF_ERR_SHAPE;
    if (n && (!param || !grad || !exp_avg || !exp_avg_sq)) return MLPF_ERR_NULL;
    adam_call c = {param, grad, exp_avg, exp_avg_sq, n, step_size, beta1, beta2, inv_bc2_sqrt,
                   eps, weight_decay, decay};
    mlpf_pool_run(pass_threads(n), adam_task, &c);
    return MLPF_OK;
}

/* --- sum of squares ------------------------------------------------------------------------ */

enum { MAX_PARTS = 256 };

typedef struct {
    const float *x;
    int64_t n;
    double part[MAX_PARTS];
} squares_call;

/* Sixteen float32 running sums (one vector), added in double at the end: NaN or inf in x
 * makes the sum NaN or inf, and so does |x| beyond about 1.8e19 (x^2 overflows). */
VECTOR_CLONES static double squares_range(const float *restrict x, int64_t lo, int64_t hi)
{
    float lanes[16] = {0};
    int64_t i = lo;
    for (; i + 16 <= hi; i += 16)
        for (int j = 0; j < 16; j++) lanes[j] += x[i + j] * x[i + j];
    for (; i < hi; i++) lanes[0] += x[i] * x[i];
    double total = 0.0;
    for (int j = 0; j < 16; j++) total += lanes[j];
    return total;
}

static void squares_task(void *arg, int index, int threads)
{
    squares_call *c = arg;
    c->part[index] = squares_range(c->x, range_start(c->n, threads, index),
                                   range_start(c->n, threads, index + 1));
}

double mlpf_ssum_squares(const float *x, int64_t n)
{
    if (n <= 0 || !x) return 0.0;
    squares_call c = {.x = x, .n = n};
    int threads = pass_threads(n);
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    threads = mlpf_pool_run(threads, squares_task, &c);
    double total = 0.0;
    for (int t = 0; t < threads; t++) total += c.part[t];
    return total;
}

/* --- batch gather ------------------------------------------------------------------------- */

typedef struct {
    const float *src;
    int64_t ld, cols;
    const int64_t *index;
    int64_t rows;
    float *out;
} gather_call;

static void gather_task(void *arg, int index, int threads)
{
    const gather_call *c = arg;
    const int64_t lo = c->rows * index / threads, hi = c->rows * (index + 1) / threads;
    for (int64_t i = lo; i < hi; i++)
        memcpy(c->out + i * c->cols, c->src + c->index[i] * c->ld, (size_t)c->cols * 4);
}

int mlpf_sgather(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                 const int64_t *index, int64_t rows, float *out)
{
    if (rows < 0 || cols < 0 || src_rows < 0 || ld < cols) return MLPF_ERR_SHAPE;
    if (rows && cols && (!src || !index || !out)) return MLPF_ERR_NULL;
    for (int64_t i = 0; i < rows; i++)
        if (index[i] < 0 || index[i] >= src_rows) return MLPF_ERR_SHAPE;
    gather_call c = {src, ld, cols, index, rows, out};
    mlpf_pool_run(pass_threads(rows * cols), gather_task, &c);
    return MLPF_OK;
}
