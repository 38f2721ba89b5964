/* mlpfast C GEMM: the C API called through cffi (mlpfast._cgemm).
 *
 * Row-major, single and double precision:
 *
 *     C = act(alpha * op(A) @ op(B) + beta * C + bias)
 *
 * op(A) is (m, k): A itself (m, k) with row stride lda when trans_a == 0, or the
 * transpose of A stored as (k, m) with row stride lda when trans_a != 0.
 * op(B) is (k, n): B (k, n) with row stride ldb, or B stored as (n, k) when trans_b != 0.
 * C is (m, n) with row stride ldc. bias is NULL or a vector of n values added to
 * every row (the output features of a Linear layer). act is MLPF_ACT_IDENTITY or MLPF_ACT_RELU.
 * When beta == 0, C is never read (it may hold NaN or garbage on entry); when alpha == 0
 * or k == 0, A and B are not read. C must not overlap A, B or bias.
 *
 * Returns 0 on success, a negative MLPF_ERR_* code on bad arguments (C untouched).
 * The functions are thread-safe and never hold the Python GIL (cffi releases it).
 * On x86 they compute with denormal floats flushed to zero (as XLA does; see
 * threadpool.c) and leave the caller's floating-point mode as it was.
 */
#ifndef MLPF_GEMM_H
#define MLPF_GEMM_H
#include <stdint.h>

/* Activation codes, one table for every entry point and for the Python side
 * (kernels/activations.py reads them through cffi). mlpf_sgemm's epilogue applies IDENTITY
 * and RELU; mlpf_sgemm_dact multiplies by the derivative of RELU, SIGMOID or TANH. */
enum { MLPF_ACT_IDENTITY = 0, MLPF_ACT_RELU = 1, MLPF_ACT_SIGMOID = 2, MLPF_ACT_TANH = 3,
       MLPF_ACT_GELU = 4, MLPF_ACT_GELU_TANH = 5, MLPF_ACT_LEAKY_RELU = 6 };
enum { MLPF_OK = 0, MLPF_ERR_SHAPE = -1, MLPF_ERR_STRIDE = -2, MLPF_ERR_ACT = -3, MLPF_ERR_NOMEM = -4 };
/* Added after the first API: a NULL matrix with nonzero size; an unknown or unsupported kernel. */
enum { MLPF_ERR_NULL = -5, MLPF_ERR_KERNEL = -6 };

int mlpf_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
               float beta, float *c, int64_t ldc, const float *bias, int act);
int mlpf_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
               double beta, double *c, int64_t ldc, const double *bias, int act);

/* The backward of a layer y = f(z) whose input gradient is a GEMM (dz_prev of a Linear):
 *
 *     C = (alpha * op(A) @ op(B)) * f'(Y)        elementwise, f' written with f's output Y
 *
 * dact is MLPF_ACT_RELU f' = [Y > 0], MLPF_ACT_SIGMOID f' = Y (1 - Y) or MLPF_ACT_TANH
 * f' = 1 - Y^2.
 * Y is (m, n) with row stride ldy; C is never read and must not overlap A, B or Y. The
 * factor is applied to each tile of C while it is in L1, so dz costs no extra pass. */
int mlpf_sgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                    float *c, int64_t ldc, const float *y, int64_t ldy, int dact);
int mlpf_dgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
                    double *c, int64_t ldc, const double *y, int64_t ldy, int dact);

/* Passes over a model's flat float32 buffers, on the same threads as the GEMM (passes.c).
 * mlpf_sadam: one Adam/AdamW step over n parameters, in place (kernels/optim.py has the
 * formulas): g = grad + weight_decay p; m = beta1 m + (1 - beta1) g; v = beta2 v +
 * (1 - beta2) g^2; p = p decay - step_size m / (sqrt(v) inv_bc2_sqrt + eps). Returns MLPF_OK
 * or MLPF_ERR_SHAPE (n < 0) / MLPF_ERR_NULL.
 * mlpf_ssum_squares: sum of x^2 in float32 running sums, NaN or inf when any x is, or when
 * it overflows (the finiteness check of the gradients). */
int mlpf_sadam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
               float step_size, float beta1, float beta2, float inv_bc2_sqrt, float eps,
               float weight_decay, float decay);
double mlpf_ssum_squares(const float *x, int64_t n);
/* mlpf_ssgd: one SGD step over n parameters, in place (torch.optim.SGD's rule, formulas in
 * kernels/optim.py): g = grad + weight_decay p; with momentum: buf = g on the first step,
 * else buf = momentum buf + g, then g = g + momentum buf (nesterov) or buf; p -= lr g.
 * momentum_buf is not read when momentum == 0 (it may be NULL). */
int mlpf_ssgd(float *param, const float *grad, float *momentum_buf, int64_t n, float lr,
              float momentum, int nesterov, float weight_decay, int first_step);
/* out[i, :] = src[index[i], :] for i < rows: src (src_rows, cols) with row stride ld, out
 * (rows, cols) contiguous. MLPF_ERR_SHAPE (out untouched) when an index is outside
 * [0, src_rows). */
int mlpf_sgather(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                 const int64_t *index, int64_t rows, float *out);

/* Runs task(arg, index, threads) for index = 0 .. threads - 1 on the GEMM's threads (the
 * caller is index 0), threads chosen for a pass touching `work` elements as Adam's are,
 * with denormals flushed; returns the threads used. The memory-bound passes of the
 * compiled training step between GEMMs (kernels/mlp_passes.py) run this way, on workers
 * still spinning from the GEMM before. */
int mlpf_parallel_for(void (*task)(void *arg, int index, int threads), void *arg,
                      int64_t work);

/* Threads used by one call (>= 1). */
void mlpf_set_num_threads(int n);
int mlpf_get_num_threads(void);
/* Name of the micro-kernel chosen at run time for this CPU, e.g. "sgemm_portable". */
const char *mlpf_kernel_name(void);

/* Selects the single-precision micro-kernel: "auto" (the best this CPU supports) or a
 * family "avx512", "avx2", "portable". Returns MLPF_OK, or MLPF_ERR_KERNEL when the name
 * is unknown or this CPU cannot run it (the selection is then unchanged). */
int mlpf_set_kernel(const char *name);

/* A block size or threshold compiled into the library from kernels/cpu_config.py: family
 * "avx512", "avx2" or "portable", key as there (e.g. "kc"). -1 when either is unknown. */
int64_t mlpf_config_value(const char *family, const char *key);

#endif
