/* The bf16 micro-kernel contract shared by gemm_bf16.c and the kernel files.
 *
 * A micro-kernel sums the products of two packed bf16 micro-panels into an MR x NR tile
 * of floats with row stride ldt (bf16 is a uint16_t: the upper half of a float32):
 *
 *     a_panel  op(A)[0:MR, 0:kc]   a_panel[(p/32)*32*MR + i*32 + p%32] = op(A)[i][p]
 *     b_panel  op(B)[0:kc, 0:NR]   b_panel[(p/2)*2*NR + 2*j + p%2]     = op(B)[p][j]
 *
 *     tile[i*ldt + j] = (accumulate ? tile[i*ldt + j] : 0) + sum_{p < kc} a * b
 *
 * in float32 arithmetic (each product of two bf16 values is exact). The A panel holds
 * MR rows of 32 consecutive k values per block (an AMX A tile: 16 rows of 64 bytes); the
 * B panel holds NR pairs (k, k + 1) per row (the "VNNI" layout of vdpbf16ps and of an
 * AMX B tile). kc is a multiple of 32: packing pads k with zeros. Panels and tile are
 * 64-byte aligned, ldt a multiple of 16. The driver then applies the epilogue
 * (mlpf_bf16_store) to a row of tiles.
 */
#ifndef MLPF_GEMM_BF16_KERNELS_H
#define MLPF_GEMM_BF16_KERNELS_H
#include <stdint.h>
#include <string.h>
#include "gemm_kernels.h"

enum { MLPF_BF16_K_GROUP = 32 };     /* packed k is a multiple of this */

typedef void (*mlpf_sbgemm_ukernel)(int64_t kc, const uint16_t *a_panel, const uint16_t *b_panel,
                                    float *tile, int64_t ldt, int accumulate);

/* Packs one micro-panel of R rows (R = MR for op(A), NR for op(B)) and depth kc, rounding
 * float32 values to bf16:
 *     X[r][p] = src[r*ld + p] when along_k, else src[p*ld + r]    (elements of src_type)
 *     group 32 (A):  dst[(p/32)*32*R + r*32 + p%32] = X[r][p]
 *     group 2 (B):   dst[(p/2)*2*R + 2*r + p%2]     = X[r][p]
 * for r < rows (<= R), p < kc; zeros for rows <= r < R and kc <= p < round_up(kc, 32). */
typedef void (*mlpf_bf16_pack)(int R, int group, int64_t kc, int64_t rows, const void *src,
                               int src_type, int64_t ld, int along_k, uint16_t *dst);

/* The epilogue of a block of C, rows x cols, from the sums t (row stride ldt):
 *     v = act(alpha * t[i*ldt + j] + beta * C[i][j] + bias[j]);  v *= f'(Y[i][j]) if y
 *     C[i][j] = v, rounded to c_type
 * C[i][j] at c + (i*ldc + j) elements of c_type, Y at y + (i*ldy + j) of y_type; beta == 0:
 * C is not read; bias NULL: none; y NULL: no derivative. */
typedef struct {
    float alpha, beta;
    int relu;
    int c_type;
    int64_t ldc;
    int y_type, dact;
    int64_t ldy;
} mlpf_bf16_epilogue;

typedef void (*mlpf_bf16_store)(int64_t rows, int64_t cols, const float *t, int64_t ldt,
                                void *c, const void *y, const float *bias,
                                const mlpf_bf16_epilogue *ep);

/* One kernel, its block sizes (as in mlpf_sgemm_config) and the routines around it. */
typedef struct {
    const char *name, *family;
    int mr, nr;
    int64_t mc, kc, nc;
    int64_t max_a_block_bytes, a_block_l2_bytes, b_chunk_bytes;
    mlpf_sbgemm_ukernel ukernel;
    mlpf_bf16_pack pack;
    mlpf_bf16_store store;
    void (*thread_begin)(void), (*thread_end)(void);   /* around a thread's work, or NULL */
    int (*supported)(void);
} mlpf_sbgemm_config;

/* The block sizes of kernels/cpu_config.py's BF16_CONFIGS (generated cpu_config.h). */
#define MLPF_BF16_CONFIG_VALUES(F)                                                        \
    .mr = MLPF_CFG_##F##_MR, .nr = MLPF_CFG_##F##_NR, .mc = MLPF_CFG_##F##_MC,              \
    .kc = MLPF_CFG_##F##_KC, .nc = MLPF_CFG_##F##_NC,                                       \
    .max_a_block_bytes = MLPF_CFG_##F##_MAX_A_BLOCK_BYTES,                                  \
    .a_block_l2_bytes = MLPF_CFG_##F##_A_BLOCK_L2_BYTES,                                    \
    .b_chunk_bytes = MLPF_CFG_##F##_B_CHUNK_BYTES

extern const mlpf_sbgemm_config mlpf_sbgemm_portable_config;
#ifdef MLPF_X86
extern const mlpf_sbgemm_config mlpf_sbgemm_avx512bf16_config;
extern const mlpf_sbgemm_config mlpf_sbgemm_amx_config;
/* kernel_avx512_bf16.c's packing and epilogue, which the AMX kernel shares, and the CPU
 * check they need. */
void mlpf_bf16_pack_avx512(int R, int group, int64_t kc, int64_t rows, const void *src,
                           int src_type, int64_t ld, int along_k, uint16_t *dst);
void mlpf_bf16_store_avx512(int64_t rows, int64_t cols, const float *t, int64_t ldt, void *c,
                            const void *y, const float *bias, const mlpf_bf16_epilogue *ep);
int mlpf_avx512bf16_supported(void);
#endif

/* bf16 <-> float32 in plain C: round to nearest, ties to even; NaN stays a (quiet) NaN. */
static inline uint16_t mlpf_float_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static inline float mlpf_bf16_to_float(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif
