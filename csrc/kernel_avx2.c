/* sgemm_avx2_6x16: AVX2+FMA micro-kernel (contract in gemm_kernels.h), after BLIS's
 * Haswell kernel.
 *
 * Register tile: 6 rows x 16 columns of C = 12 ymm accumulators (two 8-float vectors a
 * row), 2 ymm for row p of the B micro-panel, 1 for the broadcast A value: 15 of the 16
 * ymm registers. Per step p: 2 vector loads, 6 broadcasts, 12 FMAs (6 cycles on two FMA
 * ports); 12 independent accumulators hide the FMA latency.
 *
 * Compiled without -mavx2: the function carries target attributes, and gemm.c calls it
 * only when __builtin_cpu_supports says the CPU has AVX2 and FMA.
 */
#include "gemm_kernels.h"
#ifdef MLPF_X86
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

enum { MR = MLPF_CFG_AVX2_MR, NR = MLPF_CFG_AVX2_NR };
_Static_assert(NR == 16, "the micro-kernel holds 16 floats of a row of C");

/* v f'(y) lane by lane, as mlpf_times_dact. */
AVX2 static inline __m256 times_dact(__m256 v, __m256 y, int dact)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    if (dact == MLPF_ACT_RELU)          /* [y > 0]: y NaN gives 0 */
        return _mm256_and_ps(v, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
    if (dact == MLPF_ACT_SIGMOID)
        return _mm256_mul_ps(v, _mm256_mul_ps(y, _mm256_sub_ps(one, y)));
    return _mm256_mul_ps(v, _mm256_sub_ps(one, _mm256_mul_ps(y, y)));
}

AVX2 static void sgemm_avx2_6x16(int64_t kc, const float *restrict a,
                                 const float *restrict b, float *restrict c,
                                 int64_t ldc, const mlpf_tile_epilogue *ep)
{
    __m256 t[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        t[i][0] = _mm256_setzero_ps();
        t[i][1] = _mm256_setzero_ps();
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (int64_t p = 0; p < kc; p++) {              /* t += a[:, p] b[p, :] */
        __m256 b0 = _mm256_load_ps(b);
        __m256 b1 = _mm256_load_ps(b + 8);
        _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);   /* one line a step */
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 a_i = _mm256_set1_ps(a[i]);
            t[i][0] = _mm256_fmadd_ps(a_i, b0, t[i][0]);
            t[i][1] = _mm256_fmadd_ps(a_i, b1, t[i][1]);
        }
        a += MR;
        b += NR;
    }

    /* Epilogue while the tile is in registers: c = act(alpha t + beta c + bias) f'(y). */
    const __m256 alpha = _mm256_set1_ps(ep->alpha), beta = _mm256_set1_ps(ep->beta);
    const __m256 zero = _mm256_setzero_ps();
    const int read_c = ep->beta != 0.0f;
    __m256 bias0 = zero, bias1 = zero;
    if (ep->bias) {
        bias0 = _mm256_loadu_ps(ep->bias);
        bias1 = _mm256_loadu_ps(ep->bias + 8);
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *c_row = c + i * ldc;
        __m256 v0 = _mm256_fmadd_ps(alpha, t[i][0], bias0);
        __m256 v1 = _mm256_fmadd_ps(alpha, t[i][1], bias1);
        if (read_c) {
            v0 = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c_row), v0);
            v1 = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c_row + 8), v1);
        }
        if (ep->relu) {                 /* max(0, v): NaN passes, as np.maximum */
            v0 = _mm256_max_ps(zero, v0);
            v1 = _mm256_max_ps(zero, v1);
        }
        if (ep->y) {
            const float *y_row = ep->y + i * ep->ldy;
            v0 = times_dact(v0, _mm256_loadu_ps(y_row), ep->dact);
            v1 = times_dact(v1, _mm256_loadu_ps(y_row + 8), ep->dact);
        }
        _mm256_storeu_ps(c_row, v0);
        _mm256_storeu_ps(c_row + 8, v1);
    }
}

/* --- packing: the kernel's panel layouts, written 8 floats at a time ------------------ */

/* In-register transpose of the 8 x 8 block r[i][j]: afterwards r[j] holds column j.
 * Stage 1 interleaves row pairs, stage 2 gathers 4-row columns within 128-bit lanes,
 * stage 3 swaps the lanes (24 shuffles for 64 floats). */
AVX2 static inline void transpose_8x8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 2; g++) {      /* u[4g + q], lane L: column 4L + q of rows 4g..4g+3 */
        u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        r[q + 4] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

/* The mask of lanes 0 .. n-1 (none for n <= 0, all for n >= 8). */
AVX2 static inline __m256i first_lanes(int64_t n)
{
    const int lanes = n <= 0 ? 0 : n >= 8 ? 8 : (int)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* dst[p*R + r] = src[r*ld + p] (r < rows, zeros up to R): 8 x 8 blocks transposed in
 * registers; masked loads never read past the rows' ends. */
AVX2 static inline void pack_rows_avx2(const int R, int64_t kc, int64_t rows,
                                       const float *src, int64_t ld, float *dst)
{
    for (int64_t p0 = 0; p0 < kc; p0 += 8) {
        const int64_t depth = kc - p0 < 8 ? kc - p0 : 8;
        const __m256i load_mask = first_lanes(depth);
        for (int r0 = 0; r0 < R; r0 += 8) {
            __m256 block[8];
            for (int i = 0; i < 8; i++)
                block[i] = r0 + i < rows
                    ? _mm256_maskload_ps(src + (r0 + i) * ld + p0, load_mask)
                    : _mm256_setzero_ps();
            transpose_8x8(block);
            const __m256i store_mask = first_lanes(R - r0);
            for (int q = 0; q < depth; q++)
                _mm256_maskstore_ps(dst + (p0 + q) * R + r0, store_mask, block[q]);
        }
    }
}

/* dst[p*R + r] = src[p*ld + r] (r < rows, zeros up to R): a masked copy per step p. */
AVX2 static inline void pack_cols_avx2(const int R, int64_t kc, int64_t rows,
                                       const float *src, int64_t ld, float *dst)
{
    for (int64_t p = 0; p < kc; p++)
        for (int r0 = 0; r0 < R; r0 += 8)
            _mm256_maskstore_ps(dst + p * R + r0, first_lanes(R - r0),
                                _mm256_maskload_ps(src + p * ld + r0, first_lanes(rows - r0)));
}

AVX2 static void pack_a_rows(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_rows_avx2(MR, kc, rows, src, ld, dst);
}
AVX2 static void pack_a_cols(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_cols_avx2(MR, kc, rows, src, ld, dst);
}
AVX2 static void pack_b_rows(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_rows_avx2(NR, kc, rows, src, ld, dst);
}
AVX2 static void pack_b_cols(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_cols_avx2(NR, kc, rows, src, ld, dst);
}

static int avx2_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Block sizes as BLIS's Haswell config (32 KiB L1d, 256 KiB-1 MiB L2), transposed to our
 * row-major loops: the A micro-panel 6 x 256 x 4 B = 6 KiB stays in L1, the packed B block
 * 256 x 256 x 4 B = 256 KiB in L2, the A block 3072 x 256 x 4 B = 3 MiB in L3. */
const mlpf_sgemm_config mlpf_sgemm_avx2_config = {
    .name = MLPF_KERNEL_NAME(avx2, AVX2), MLPF_CONFIG_VALUES(AVX2),
    .ukernel = sgemm_avx2_6x16, .supported = avx2_supported,
    .pack_a_rows = pack_a_rows, .pack_a_cols = pack_a_cols,
    .pack_b_rows = pack_b_rows, .pack_b_cols = pack_b_cols,
};
#endif
