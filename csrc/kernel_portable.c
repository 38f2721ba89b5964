/* sgemm_portable_4x8: the plain-C micro-kernel (contract in gemm_kernels.h).
 * Any C99 compiler on any architecture; the compiler vectorizes the j loops. Used where
 * the CPU has neither AVX-512 nor AVX2+FMA, and forced with MLPFAST_GEMM_KERNEL=portable. */
#include "gemm_kernels.h"

enum { MR = MLPF_CFG_PORTABLE_MR, NR = MLPF_CFG_PORTABLE_NR };
_Static_assert(NR == 8, "the micro-kernel holds 8 floats of a row of C");

static void sgemm_portable_4x8(int64_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, int64_t ldc, const mlpf_tile_epilogue *ep)
{
    float t[MR][NR] = {{0}};
    for (int64_t p = 0; p < kc; p++, a += MR, b += NR)      /* t += a[:, p] b[p, :] */
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++)
                t[i][j] += a[i] * b[j];

    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            c[i * ldc + j] = mlpf_epilogue_value(ep, ep->alpha * t[i][j], c, ldc, i, j);
}

static int always_supported(void) { return 1; }

/* Block sizes: with 8 floats per row of a B micro-panel the kernel streams little, so
 * moderate blocks suit small caches too (kc x MR = 1 KiB in L1, kc x nc = 256 KiB in L2). */
const mlpf_sgemm_config mlpf_sgemm_portable_config = {
    .name = MLPF_KERNEL_NAME(portable, PORTABLE), MLPF_CONFIG_VALUES(PORTABLE),
    .ukernel = sgemm_portable_4x8, .supported = always_supported,
};
