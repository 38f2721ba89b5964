/* sbgemm_portable_4x16: bf16 products emulated in float32 arithmetic, in plain C (contract
 * in gemm_bf16_kernels.h), with the packing and epilogue routines that go with it.
 *
 * A bf16 value widened to float32 is exact, and so is the product of two of them, so this
 * computes what vdpbf16ps does, on any CPU. Used where the CPU has neither AMX-BF16 nor
 * AVX512-BF16, and forced with mlpf_set_sbgemm_kernel("portable"); the loops are compiled
 * for AVX-512, AVX2 and baseline x86-64 (VECTOR_CLONES) and vectorized by the compiler.
 */
#include "gemm.h"
#include "gemm_bf16_kernels.h"
#include "gemm_driver.h"

enum { MR = MLPF_CFG_PORTABLE_BF16_MR, NR = MLPF_CFG_PORTABLE_BF16_NR };
_Static_assert(MR == 4 && NR == 16, "the micro-kernel's tile is 4 x 16");

VECTOR_CLONES static void sbgemm_portable_4x16(int64_t kc, const uint16_t *restrict a,
                                               const uint16_t *restrict b, float *restrict tile,
                                               int64_t ldt, int accumulate)
{
    float t[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) t[i][j] = accumulate ? tile[i * ldt + j] : 0.0f;
    for (int64_t p = 0; p < kc; p += 2) {           /* t += a[:, p:p+2] b[p:p+2, :] */
        const uint16_t *a_p = a + p / 32 * 32 * MR + p % 32, *b_p = b + p * NR;
        float a0[MR], a1[MR], b0[NR], b1[NR];
        for (int i = 0; i < MR; i++) {
            a0[i] = mlpf_bf16_to_float(a_p[i * 32]);
            a1[i] = mlpf_bf16_to_float(a_p[i * 32 + 1]);
        }
        for (int j = 0; j < NR; j++) {
            b0[j] = mlpf_bf16_to_float(b_p[2 * j]);
            b1[j] = mlpf_bf16_to_float(b_p[2 * j + 1]);
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) t[i][j] += a0[i] * b0[j] + a1[i] * b1[j];
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) tile[i * ldt + j] = t[i][j];
}

/* The layouts of mlpf_bf16_pack, one element at a time. */
static void pack_portable(int R, int group, int64_t kc, int64_t rows, const void *src,
                          int src_type, int64_t ld, int along_k, uint16_t *dst)
{
    const int64_t kc_padded = round_up(kc, MLPF_BF16_K_GROUP);
    for (int64_t r = 0; r < R; r++)
        for (int64_t p = 0; p < kc_padded; p++) {
            uint16_t v = 0;
            if (r < rows && p < kc) {
                const int64_t at = along_k ? r * ld + p : p * ld + r;
                v = src_type == MLPF_TYPE_BF16 ? ((const uint16_t *)src)[at]
                                               : mlpf_float_to_bf16(((const float *)src)[at]);
            }
            dst[p / group * group * R + r * group + p % group] = v;
        }
}

/* dst[j] = src[j] as float, for j < n. */
static void widen_row(int type, const void *src, int64_t n, float *dst)
{
    if (type == MLPF_TYPE_BF16)
        for (int64_t j = 0; j < n; j++) dst[j] = mlpf_bf16_to_float(((const uint16_t *)src)[j]);
    else
        for (int64_t j = 0; j < n; j++) dst[j] = ((const float *)src)[j];
}

/* The epilogue of mlpf_bf16_store on one row of at most MLPF_MAX_NR columns, through a
 * float buffer. */
VECTOR_CLONES static void store_row(int64_t cols, const float *t, void *c_row, const void *y_row,
                                    const float *bias, const mlpf_bf16_epilogue *ep)
{
    float v[MLPF_MAX_NR], w[MLPF_MAX_NR];
    for (int64_t j = 0; j < cols; j++) v[j] = ep->alpha * t[j];
    if (bias)
        for (int64_t j = 0; j < cols; j++) v[j] += bias[j];
    if (ep->beta != 0.0f) {
        widen_row(ep->c_type, c_row, cols, w);
        for (int64_t j = 0; j < cols; j++) v[j] += ep->beta * w[j];
    }
    if (ep->relu)                                      /* NaN passes, as np.maximum */
        for (int64_t j = 0; j < cols; j++) v[j] = v[j] < 0.0f ? 0.0f : v[j];
    if (y_row) {
        widen_row(ep->y_type, y_row, cols, w);
        if (ep->dact == MLPF_ACT_RELU)                /* [y > 0]: y NaN gives 0 */
            for (int64_t j = 0; j < cols; j++) v[j] = w[j] > 0.0f ? v[j] : 0.0f;
        else if (ep->dact == MLPF_ACT_SIGMOID)
            for (int64_t j = 0; j < cols; j++) v[j] *= w[j] * (1.0f - w[j]);
        else          /* 1 - y^2 as (1 - y)(1 + y): no cancellation near |y| = 1, FMA or not */
            for (int64_t j = 0; j < cols; j++) v[j] *= (1.0f - w[j]) * (1.0f + w[j]);
    }
    if (ep->c_type == MLPF_TYPE_BF16)
        for (int64_t j = 0; j < cols; j++) ((uint16_t *)c_row)[j] = mlpf_float_to_bf16(v[j]);
    else
        for (int64_t j = 0; j < cols; j++) ((float *)c_row)[j] = v[j];
}

static void store_portable(int64_t rows, int64_t cols, const float *t, int64_t ldt, void *c,
                           const void *y, const float *bias, const mlpf_bf16_epilogue *ep)
{
    const size_t c_size = ep->c_type == MLPF_TYPE_BF16 ? 2 : 4;
    const size_t y_size = ep->y_type == MLPF_TYPE_BF16 ? 2 : 4;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j += MLPF_MAX_NR)
            store_row(cols - j < MLPF_MAX_NR ? cols - j : MLPF_MAX_NR, t + i * ldt + j,
                      (char *)c + (i * ep->ldc + j) * c_size,
                      y ? (const char *)y + (i * ep->ldy + j) * y_size : NULL,
                      bias ? bias + j : NULL, ep);
}

static int always_supported(void) { return 1; }

/* Block sizes: kernels/cpu_config.py, BF16_CONFIGS["portable_bf16"]. */
const mlpf_sbgemm_config mlpf_sbgemm_portable_config = {
    .name = "sbgemm_portable_4x16", .family = "portable",
    MLPF_BF16_CONFIG_VALUES(PORTABLE_BF16),
    .ukernel = sbgemm_portable_4x16, .pack = pack_portable,
    .store = store_portable, .supported = always_supported,
};
