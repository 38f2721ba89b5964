/* Plain, correct reference GEMM behind the final C API (see gemm.h).
 * Loop order i-p-j keeps the innermost loop unit-stride over rows of op(B) and C.
 * The fast, blocked and threaded version replaces this file's internals. */
#include <stdlib.h>
#include "gemm.h"

static int num_threads = 1;

void mlpf_set_num_threads(int n) { num_threads = n < 1 ? 1 : n; }
int mlpf_get_num_threads(void) { return num_threads; }
const char *mlpf_kernel_name(void) { return "gemm_portable_naive"; }

#define DEFINE_GEMM(NAME, T)                                                            \
int NAME(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,                    \
         T alpha, const T *a, int64_t lda, const T *b, int64_t ldb,                    \
         T beta, T *c, int64_t ldc, const T *bias, int act)                            \
{                                                                                       \
    if (m < 0 || n < 0 || k < 0) return MLPF_ERR_SHAPE;                                 \
    if (act != MLPF_ACT_IDENTITY && act != MLPF_ACT_RELU) return MLPF_ERR_ACT;          \
    if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n) return MLPF_ERR_STRIDE; \
    for (int64_t i = 0; i < m; i++) {                                                   \
        T *c_row = c + i * ldc;                                                         \
        /* c_row = beta * c_row  (never read when beta == 0) */                         \
        for (int64_t j = 0; j < n; j++) c_row[j] = beta == 0 ? (T)0 : beta * c_row[j];  \
        for (int64_t p = 0; p < k; p++) {                                               \
            T a_ip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);               \
            if (trans_b) { for (int64_t j = 0; j < n; j++) c_row[j] += a_ip * b[j * ldb + p]; } \
            else { const T *b_row = b + p * ldb;                                        \
                   for (int64_t j = 0; j < n; j++) c_row[j] += a_ip * b_row[j]; }       \
        }                                                                               \
        for (int64_t j = 0; j < n; j++) {                                               \
            T v = c_row[j] + (bias ? bias[j] : (T)0);                                   \
            c_row[j] = (act == MLPF_ACT_RELU && v < 0) ? (T)0 : v;                      \
        }                                                                               \
    }                                                                                   \
    return MLPF_OK;                                                                     \
}

DEFINE_GEMM(mlpf_sgemm, float)
DEFINE_GEMM(mlpf_dgemm, double)
