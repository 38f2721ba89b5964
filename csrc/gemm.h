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

/* mlpf_sgemm computes A B^T (trans_a == 0, trans_b != 0) with n <= MLPF_NARROW_N as dot
 * products along k, reading A and B in place (a classifier's logits: nothing to pack). */
enum { MLPF_NARROW_N = 16 };

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
 * micro-kernel multiplies each tile by the factor while the tile is in its registers
 * (mlpf_dgemm_dact: each row of C once it is summed), so dz costs no extra pass.
 * Speed: when Y and C start at the same offset within a 4 KiB page and their rows are a
 * multiple of 4 KiB long (NumPy's large arrays all start 16 bytes into a page), each load
 * of Y waits for the tile's stores before it (4K aliasing): 256 x 1024 x 10 takes 1.6x as
 * long. 384 bytes apart they never meet (bench/README.md, "4K aliasing"). */
int mlpf_sgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                    float *c, int64_t ldc, const float *y, int64_t ldy, int dact);
int mlpf_dgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
                    double *c, int64_t ldc, const double *y, int64_t ldy, int dact);

/* A matrix packed once for several GEMMs (or by mlpf_sgather_packed, as it gathers a
 * batch): mlpf_spack_b writes op(B) (k, n), as mlpf_sgemm reads it (trans_b, ldb), into
 * `packed` (`capacity` floats, 64-byte aligned; it needs mlpf_packed_b_floats(k, n), else
 * MLPF_ERR_SHAPE), in the order in which the active micro-kernel reads B, behind a header
 * that names that kernel's layout, k and n.
 * mlpf_sgemm_packed_a is mlpf_sgemm (trans_a = 0) with that matrix as op(A) (m, k):
 * packed as the B of a GEMM with k = m and n = k, packed again into A's order from there
 * (the same C, bit for bit); mlpf_sgemm_weight_grad reads one as its op(B) in place. Both
 * return MLPF_ERR_SHAPE when the packed matrix has another shape, MLPF_ERR_KERNEL when it
 * holds none or one in another kernel's layout (say, packed before mlpf_set_kernel),
 * MLPF_ERR_ALIGN when it is not 64-byte aligned. mlpf_packed_b_floats returns
 * MLPF_ERR_SHAPE for k < 0 or n < 0. */
enum { MLPF_ERR_ALIGN = -8, MLPF_PACKED_B_HEADER = 16 };
int64_t mlpf_packed_b_floats(int64_t k, int64_t n);
int mlpf_spack_b(int trans_b, int64_t k, int64_t n, const float *b, int64_t ldb, float *packed,
                 int64_t capacity);
int mlpf_sgemm_packed_a(int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *packed_a, const float *b, int64_t ldb, float beta,
                        float *c, int64_t ldc, const float *bias, int act);

/* A training step's weight and bias gradients and the check that they are finite, in one
 * call: dw (m x n, row stride lddw) = dz^T h for dz (k x m, row stride ldz) and h (k x n),
 * in rows (h, ldh) or, when packed_h is not NULL, packed by mlpf_spack_b or
 * mlpf_sgather_packed (h and ldh are then not read; the same dw, bit for bit); db (m) =
 * the column sums of dz, unless db is NULL, in float32 from the packed panels of dz^T
 * while they are in L1: four partial sums per column (p mod 4, within each k block of
 * the GEMM) added in a fixed order, the same bits for any number of threads. *squares =
 * the sum of the squares of dw and db: float32 running sums over each strip of the
 * kernel's MR rows of dw while the strip is in L1, added in float64 per thread and then
 * in thread order; NaN or inf when any value is, or when a square overflows (|x| above
 * about 1.8e19). Which strips a thread takes varies from call to call, and with it the
 * rounding of *squares: it is for the finiteness check, not for a norm that must repeat.
 * The errors of mlpf_sgemm, those of mlpf_sgemm_packed_a for packed_h, and MLPF_ERR_NULL
 * for squares == NULL. */
int mlpf_sgemm_weight_grad(int64_t m, int64_t n, int64_t k, const float *dz, int64_t ldz,
                           const float *h, int64_t ldh, const float *packed_h, float *dw,
                           int64_t lddw, float *db, double *squares);

/* The backward pass of a narrow layer (n <= MLPF_NARROW_N outputs, as a classifier's last
 * layer) in one pass over its input h, which mlpf_sgemm_weight_grad and mlpf_sgemm_dact
 * would each read (and the first pack): for dz (rows x n, row stride ldz), w (n x k, ldw)
 * and h (rows x k, ldh), the output of an activation f of code dact (RELU, SIGMOID or
 * TANH),
 *     dw (n x k, lddw)   = dz^T h            summed along the rows in order
 *     db (n)             = dz's column sums  (unless NULL; as mlpf_sgemm_weight_grad's)
 *     dh (rows x k, lddh) = (dz w) * f'(h)   summed along the n outputs in order
 *     *squares           = the sum of the squares of dw and db (as weight_grad's: NaN or
 *                          inf when any value is; for the finiteness check)
 * Threads take static shares of whole cache lines of k, so each value of dw is summed by
 * one thread: the same bits for any number of threads. With no rows, or n = 0, dw and dh
 * are zeros. Returns MLPF_OK, MLPF_ERR_SHAPE (n above MLPF_NARROW_N, or a negative size),
 * MLPF_ERR_STRIDE, MLPF_ERR_ACT (another dact) or MLPF_ERR_NULL (squares, or a matrix
 * that has values, NULL). */
int mlpf_snarrow_backward(int64_t rows, int64_t n, int64_t k, const float *dz, int64_t ldz,
                          const float *w, int64_t ldw, const float *h, int64_t ldh, float *dh,
                          int64_t lddh, float *dw, int64_t lddw, float *db, int dact,
                          double *squares);

/* Mixed precision, bf16 products with fp32 sums (gemm_bf16.c):
 *
 *     C = act(alpha * op(A) @ op(B) + beta * C + bias)
 *
 * with the layout rules of mlpf_sgemm. A, B and C each hold float32 or bf16 values, as
 * a_type, b_type, c_type say (MLPF_TYPE_*; bf16 is stored as uint16_t, the upper half of
 * a float32). float32 operands are rounded to bf16 (to nearest, ties to even) while they
 * are packed; the products of bf16 pairs are summed in float32; alpha, beta * C, the
 * float32 bias and act are applied in float32, and a bf16 C is rounded (to nearest, ties
 * to even) once, when it is stored. NaN stays NaN. Denormals are flushed to zero, on input
 * and output, as in mlpf_sgemm. Returns as mlpf_sgemm, or MLPF_ERR_TYPE for an unknown
 * type. */
enum { MLPF_TYPE_F32 = 0, MLPF_TYPE_BF16 = 1 };
enum { MLPF_ERR_TYPE = -7 };
int mlpf_sbgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void *a, int a_type, int64_t lda, const void *b, int b_type, int64_t ldb,
                float beta, void *c, int c_type, int64_t ldc, const float *bias, int act);
/* C = (alpha * op(A) @ op(B)) * f'(Y), as mlpf_sgemm_dact, with the products of
 * mlpf_sbgemm and Y of y_type (float32 or bf16); C is rounded to c_type last. */
int mlpf_sbgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const void *a, int a_type, int64_t lda, const void *b, int b_type,
                     int64_t ldb, void *c, int c_type, int64_t ldc, const void *y, int y_type,
                     int64_t ldy, int dact);
/* The bf16 micro-kernel in use, e.g. "sbgemm_amx_32x32"; and its selection, as
 * mlpf_set_kernel: "auto" or a family "amx", "avx512bf16", "portable" (bf16 products
 * emulated in float32 arithmetic, on any CPU), or a full name. */
const char *mlpf_sbgemm_kernel_name(void);
int mlpf_set_sbgemm_kernel(const char *name);

/* Passes over a model's flat float32 buffers, on the same threads as the GEMM (passes.c).
 * mlpf_sadam: one Adam/AdamW step over n parameters, in place (kernels/optim.py has the
 * formulas): g = grad + weight_decay p; m = beta1 m + (1 - beta1) g; v = beta2 v +
 * (1 - beta2) g^2; p = p decay - step_size m / (sqrt(v) inv_bc2_sqrt + eps), in float32,
 * 1 - beta rounded from the double beta. Returns MLPF_OK or MLPF_ERR_SHAPE (n < 0) /
 * MLPF_ERR_NULL.
 * mlpf_ssum_squares: sum of x^2 in float32 running sums, NaN or inf when any x is, or when
 * it overflows (the finiteness check of the gradients). */
int mlpf_sadam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
               float step_size, double beta1, double beta2, float inv_bc2_sqrt, float eps,
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
/* mlpf_sgather, with the rows written packed (k = rows, n = cols) into `packed`, as
 * mlpf_spack_b would (`capacity` floats, 64-byte aligned), and also into `out` (rows,
 * cols) unless it is NULL: a training step's first layer reads the batch x from there,
 * as A in x W^T (mlpf_sgemm_packed_a) and as B in dz^T x (mlpf_sgemm_weight_grad), and
 * no GEMM packs it. Nothing is written when an argument is refused. */
int mlpf_sgather_packed(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                        const int64_t *index, int64_t rows, float *out, float *packed,
                        int64_t capacity);

/* Inverted dropout of kernels/dropout.py on the GEMM's threads: x and out (rows, cols)
 * contiguous (out may be x), element i = r cols + c; u_i = word i mod 4 of
 * Philox-4x32-10(counter (i div 4, layer, step_lo, step_hi), key (key_lo, key_hi));
 * keep_i = u_i >= threshold (threshold = round(p 2^32), up to 2^32), out_i = keep_i x_i
 * scale. keep (rows, cols) uint8 receives keep_i, or is NULL. MLPF_ERR_SHAPE when
 * rows cols > 2^34 or threshold > 2^32. */
int mlpf_sdropout(const float *x, float *out, uint8_t *keep, int64_t rows, int64_t cols,
                  int64_t threshold, int64_t key_lo, int64_t key_hi, int64_t layer,
                  int64_t step_lo, int64_t step_hi, float scale);

/* A trace of the thread pool's jobs, for finding where a training step's time goes
 * (bench/pool_trace.py). Each GEMM and pass is one job; its event holds the task's name
 * ("sgemm_task", "adam_task", ...), the threads it ran on, and times in microseconds
 * (CLOCK_MONOTONIC): the call's start, the caller's share done, the first and the last of
 * the other threads done (both equal to caller_done on one thread), and the call's end.
 * mlpf_pool_trace_start records the next `capacity` jobs (from scratch; 0 or
 * MLPF_ERR_SHAPE / MLPF_ERR_NOMEM). mlpf_pool_trace_stop stops recording, copies up to
 * `max_events` events into `events` and returns how many there were (0 when no trace
 * ran). A job running when the trace starts or stops may be left out. A job costs a few
 * clock reads and a lock when traced, and a test of a pointer when not. */
typedef struct {
    const char *task;
    int threads;
    double start_us, caller_done_us, first_done_us, last_done_us, end_us;
} mlpf_pool_event;
int mlpf_pool_trace_start(int64_t capacity);
int64_t mlpf_pool_trace_stop(mlpf_pool_event *events, int64_t max_events);

/* Threads used by one call (>= 1). */
void mlpf_set_num_threads(int n);
int mlpf_get_num_threads(void);
/* For a loop of calls whose largest GEMM has `fmas` multiply-adds (a training step): wakes
 * the threads' sleeping workers when that GEMM would use them awake but runs on one thread
 * while they sleep (min_parallel_fmas_awake <= fmas < min_parallel_fmas). Once awake they
 * spin for 200 us after each call, so the loop's threaded calls keep them awake. Without it
 * nothing in such a loop would ever wake them. Returns 1 when it woke them, else 0. */
int mlpf_wake_threads(double fmas);
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
