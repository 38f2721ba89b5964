/* sgemm_avx512_12x32: AVX-512F micro-kernel (contract in gemm_kernels.h).
 *
 * Register tile: 12 rows x 32 columns of C = 24 zmm accumulators (two 16-float vectors a
 * row), plus 2 zmm for the row p of the B micro-panel; each A value is broadcast straight
 * from memory into the FMA. Per step p: 2 vector loads, 12 broadcasts, 24 FMAs, i.e. 12
 * cycles on the two FMA ports of a Skylake-X / Sapphire Rapids core, with loads to spare.
 * 24 independent accumulators hide the 4-cycle FMA latency (8 in flight suffice).
 *
 * Compiled without -mavx512f: the functions carry target attributes, and gemm.c calls
 * them only when __builtin_cpu_supports("avx512f") says the CPU has it.
 */
#include "gemm_kernels.h"
#ifdef MLPF_X86
#include <immintrin.h>
#include "avx512_helpers.h"

enum { MR = MLPF_CFG_AVX512_MR, NR = MLPF_CFG_AVX512_NR };
_Static_assert(NR == 32, "the micro-kernel holds 32 floats of a row of C");

/* v f'(y) lane by lane, as mlpf_times_dact. */
AVX512 static inline __m512 times_dact(__m512 v, __m512 y, int dact)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    if (dact == MLPF_ACT_RELU)          /* [y > 0]: y NaN gives 0 */
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), v);
    if (dact == MLPF_ACT_SIGMOID)
        return _mm512_mul_ps(v, _mm512_mul_ps(y, _mm512_sub_ps(one, y)));
    return _mm512_mul_ps(v, _mm512_sub_ps(one, _mm512_mul_ps(y, y)));
}

/* The first R rows (R <= MR, a constant once inlined) of a tile, storing the columns in
 * the masks col0 (0..15) and col1 (16..31): the full kernel with R = MR and both masks
 * full, the edge kernel otherwise. Rows R..MR-1 of the A panel are not read. */
AVX512 static inline __attribute__((always_inline)) void
tile_rows(const int R, int64_t kc, const float *restrict a, const float *restrict b,
          float *restrict c, int64_t ldc, const mlpf_tile_epilogue *ep, __mmask16 col0,
          __mmask16 col1)
{
    __m512 t[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        t[i][0] = _mm512_setzero_ps();
        t[i][1] = _mm512_setzero_ps();
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 31), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (int64_t p = 0; p < kc; p++) {              /* t += a[:, p] b[p, :] */
        __m512 b0 = _mm512_load_ps(b);
        __m512 b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 8 * NR + 16), _MM_HINT_T0);
#pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            __m512 a_i = _mm512_set1_ps(a[i]);
            t[i][0] = _mm512_fmadd_ps(a_i, b0, t[i][0]);
            t[i][1] = _mm512_fmadd_ps(a_i, b1, t[i][1]);
        }
        a += MR;
        b += NR;
    }

    /* Epilogue while the tile is in registers: c = act(alpha t + beta c + bias) f'(y). */
    const __m512 alpha = _mm512_set1_ps(ep->alpha), beta = _mm512_set1_ps(ep->beta);
    const __m512 zero = _mm512_setzero_ps();
    const int read_c = ep->beta != 0.0f;
    __m512 bias0 = zero, bias1 = zero;
    if (ep->bias) {
        bias0 = _mm512_maskz_loadu_ps(col0, ep->bias);
        bias1 = _mm512_maskz_loadu_ps(col1, ep->bias + 16);
    }
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        float *c_row = c + i * ldc;
        __m512 v0 = _mm512_fmadd_ps(alpha, t[i][0], bias0);
        __m512 v1 = _mm512_fmadd_ps(alpha, t[i][1], bias1);
        if (read_c) {
            v0 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(col0, c_row), v0);
            v1 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(col1, c_row + 16), v1);
        }
        if (ep->relu) {                 /* max(0, v): NaN passes, as np.maximum */
            v0 = _mm512_max_ps(zero, v0);
            v1 = _mm512_max_ps(zero, v1);
        }
        if (ep->y) {
            const float *y_row = ep->y + i * ep->ldy;
            v0 = times_dact(v0, _mm512_maskz_loadu_ps(col0, y_row), ep->dact);
            v1 = times_dact(v1, _mm512_maskz_loadu_ps(col1, y_row + 16), ep->dact);
        }
        _mm512_mask_storeu_ps(c_row, col0, v0);
        _mm512_mask_storeu_ps(c_row + 16, col1, v1);
    }
}

AVX512 static void sgemm_avx512_12x32(int64_t kc, const float *restrict a,
                                      const float *restrict b, float *restrict c,
                                      int64_t ldc, const mlpf_tile_epilogue *ep)
{
    tile_rows(MR, kc, a, b, c, ldc, ep, 0xFFFF, 0xFFFF);
}

/* An edge tile (rows <= MR, cols <= NR) straight into C: the rows that exist, one
 * compiled loop per row count, so the FMAs of the missing rows are not done. */
AVX512 static void sgemm_avx512_edge(int64_t kc, const float *restrict a,
                                     const float *restrict b, float *restrict c, int64_t ldc,
                                     const mlpf_tile_epilogue *ep, int rows, int cols)
{
    const __mmask16 col0 = first_lanes(cols), col1 = first_lanes(cols - 16);
    switch (rows) {
#define EDGE_CASE(R_) case R_: tile_rows(R_, kc, a, b, c, ldc, ep, col0, col1); break;
    EDGE_CASE(1) EDGE_CASE(2) EDGE_CASE(3) EDGE_CASE(4) EDGE_CASE(5) EDGE_CASE(6)
    EDGE_CASE(7) EDGE_CASE(8) EDGE_CASE(9) EDGE_CASE(10) EDGE_CASE(11) EDGE_CASE(12)
#undef EDGE_CASE
    }
}
_Static_assert(MR == 12, "sgemm_avx512_edge has a case for each row count up to 12");

/* --- packing: the kernel's panel layouts, written 16 floats at a time ---------------- */

/* dst[p*R + r] = src[r*ld + p] (r < rows, zeros up to R): 16 x 16 blocks transposed in
 * registers; masked loads never read past the rows' ends. Sixteen rows at a time along
 * all of kc: with a row stride of a power of two (4 KiB at 1024 columns) the rows share
 * few cache sets, and 16 rows in flight keep more of their lines cached than 32. */
AVX512 static inline void pack_rows_avx512(const int R, int64_t kc, int64_t rows,
                                           const float *src, int64_t ld, float *dst)
{
    for (int r0 = 0; r0 < R; r0 += 16) {
        for (int64_t p0 = 0; p0 < kc; p0 += 16) {
            const int64_t depth = kc - p0 < 16 ? kc - p0 : 16;
            const __mmask16 load_mask = first_lanes(depth);
            __m512 block[16];
            for (int i = 0; i < 16; i++)
                block[i] = r0 + i < rows
                    ? _mm512_maskz_loadu_ps(load_mask, src + (r0 + i) * ld + p0)
                    : _mm512_setzero_ps();
            transpose_16x16(block);
            const __mmask16 store_mask = first_lanes(R - r0);
            for (int q = 0; q < depth; q++)
                _mm512_mask_storeu_ps(dst + (p0 + q) * R + r0, store_mask, block[q]);
        }
    }
}

/* dst[p*R + r] = src[p*ld + r] (r < rows, zeros up to R): a masked copy per step p. */
AVX512 static inline void pack_cols_avx512(const int R, int64_t kc, int64_t rows,
                                           const float *src, int64_t ld, float *dst)
{
    for (int64_t p = 0; p < kc; p++)
        for (int r0 = 0; r0 < R; r0 += 16)
            _mm512_mask_storeu_ps(dst + p * R + r0, first_lanes(R - r0),
                                  _mm512_maskz_loadu_ps(first_lanes(rows - r0), src + p * ld + r0));
}

AVX512 static void pack_a_rows(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_rows_avx512(MR, kc, rows, src, ld, dst);
}
AVX512 static void pack_a_cols(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_cols_avx512(MR, kc, rows, src, ld, dst);
}
AVX512 static void pack_a_cols_sums(int64_t kc, int64_t rows, const float *src, int64_t ld,
                                    float *dst, float *sums)
{
    const __mmask16 load = first_lanes(rows), store = first_lanes(MR);
    __m512 part[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};
    for (int64_t p = 0; p < kc; p++) {
        const __m512 v = _mm512_maskz_loadu_ps(load, src + p * ld);
        _mm512_mask_storeu_ps(dst + p * MR, store, v);
        part[p % 4] = _mm512_add_ps(part[p % 4], v);
    }
    _mm512_mask_storeu_ps(sums, load, _mm512_add_ps(_mm512_add_ps(part[0], part[1]),
                                                    _mm512_add_ps(part[2], part[3])));
}
AVX512 static void pack_b_rows(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_rows_avx512(NR, kc, rows, src, ld, dst);
}
AVX512 static void pack_b_cols(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst)
{
    pack_cols_avx512(NR, kc, rows, src, ld, dst);
}

/* dst[p*MR + r] = M[row0 + r][col0 + p] (r < rows, zeros up to MR) for M held in runs of
 * NR = 32 columns (gemm_kernels.h, mlpf_packed_view): col0 is a multiple of 16 (k blocks
 * are, k_block_len in gemm.c), so each 16 columns of a row lie in one run; 16 x 16 blocks
 * are transposed in registers, as pack_rows_avx512. */
AVX512 static void pack_a_packed(int64_t kc, int64_t rows, const mlpf_packed_view *src,
                                 int64_t row0, int64_t col0, float *dst)
{
    const float *run0[MR];               /* each row's run of columns [0, NR) */
    int64_t stride[MR];                  /* and the distance to its next run */
    for (int i = 0; i < rows; i++) {
        run0[i] = src->panels + mlpf_packed_offset(src, row0 + i, 0);
        stride[i] = mlpf_packed_run_stride(src, row0 + i);
    }
    for (int64_t p0 = 0; p0 < kc; p0 += 16) {
        const int64_t depth = kc - p0 < 16 ? kc - p0 : 16;
        const int64_t f = col0 + p0, run = f / NR, at = f % NR;
        const __mmask16 lanes = first_lanes(depth);
        __m512 block[16];
        for (int i = 0; i < 16; i++)
            block[i] = i < rows ? _mm512_maskz_loadu_ps(lanes, run0[i] + run * stride[i] + at)
                                : _mm512_setzero_ps();
        transpose_16x16(block);
        for (int q = 0; q < depth; q++)
            _mm512_mask_storeu_ps(dst + (p0 + q) * MR, first_lanes(MR), block[q]);
    }
}

/* --- narrow products (gemm_kernels.h): dot products along k ---------------------------- */

/* C[r][j] for R rows x J columns: R x J accumulators of 16 lanes, each the partial sums
 * of one dot product; per 16 values of k, R + J loads feed R * J FMAs (4 x 5: 9 loads, 20
 * FMAs, so the rows of B, re-read for every 4 rows of A, cost half the loads). Inlined
 * with constant R and J, so the accumulators live in registers. */
AVX512 static inline __attribute__((always_inline)) void
narrow_block(const int R, const int J, int64_t k, const float *a, int64_t lda, const float *b,
             int64_t ldb, float *c, int64_t ldc, const mlpf_tile_epilogue *ep)
{
    __m512 acc[4][5];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 5
        for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p += 16) {
        const __mmask16 lanes = first_lanes(k - p);
        __m512 x[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) x[r] = _mm512_maskz_loadu_ps(lanes, a + r * lda + p);
#pragma GCC unroll 5
        for (int j = 0; j < J; j++) {
            const __m512 w = _mm512_maskz_loadu_ps(lanes, b + j * ldb + p);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][j] = _mm512_fmadd_ps(x[r], w, acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 5
        for (int j = 0; j < J; j++)        /* unrolled, or acc would live in memory */
            c[r * ldc + j] = mlpf_epilogue_value(
                ep, ep->alpha * _mm512_reduce_add_ps(acc[r][j]), c, ldc, r, j);
}

/* Four rows at a time (1-3 for the last ones); the n columns in blocks of at most five,
 * as even as possible (10 = 5 + 5, 16 = 4 x 4): faster on narrow products than the 12 x 32
 * tiles, which pack A and leave 22 of 32 columns empty at n = 10 (bench/README.md,
 * "Narrow products"). */
AVX512 static void sgemm_avx512_narrow_nt(int64_t rows, int64_t n, int64_t k, const float *a,
                                          int64_t lda, const float *b, int64_t ldb, float *c,
                                          int64_t ldc, const mlpf_tile_epilogue *ep)
{
    const int64_t blocks = (n + 4) / 5;
    for (int64_t i = 0; i < rows; i += 4) {
        const int64_t R = rows - i < 4 ? rows - i : 4;
        for (int64_t block = 0; block < blocks; block++) {
            const int64_t j0 = n * block / blocks, J = n * (block + 1) / blocks - j0;
            mlpf_tile_epilogue block_ep = *ep;
            if (ep->bias) block_ep.bias = ep->bias + j0;
            const float *a_i = a + i * lda, *b_j = b + j0 * ldb;
            float *c_ij = c + i * ldc + j0;
            switch (R * 8 + J) {                     /* constant R and J in each case */
#define NARROW_CASE(R_, J_)                                                               \
            case R_ * 8 + J_: narrow_block(R_, J_, k, a_i, lda, b_j, ldb, c_ij, ldc, &block_ep); break;
#define NARROW_ROWS(J_) NARROW_CASE(1, J_) NARROW_CASE(2, J_) NARROW_CASE(3, J_) NARROW_CASE(4, J_)
            NARROW_ROWS(1) NARROW_ROWS(2) NARROW_ROWS(3) NARROW_ROWS(4) NARROW_ROWS(5)
#undef NARROW_ROWS
#undef NARROW_CASE
            }
        }
    }
}

static int avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* Block sizes (kernels/cpu_config.py, "avx512", which says why):
 *   kc = 1024: k up to 1,535 in one block, so each C tile is stored once; the A
 *              micro-panel (12 x 1024 x 4 B = 48 KiB) and the B micro-panels (32 x 1024
 *              x 4 B = 128 KiB each) stream from L2.
 *   nc = 768:  at most, and fewer where the packed B block would pass b_block_bytes = 1
 *              MiB (256 columns at a depth of 1024), so that it stays in L2.
 *   mc = 3072: the packed A block (12 MiB per thread at 1024) lives in L3; one pass of it
 *              per B block. */
const mlpf_sgemm_config mlpf_sgemm_avx512_config = {
    .name = MLPF_KERNEL_NAME(avx512, AVX512), MLPF_CONFIG_VALUES(AVX512),
    .ukernel = sgemm_avx512_12x32, .edge_ukernel = sgemm_avx512_edge,
    .supported = avx512_supported,
    .narrow_nt = sgemm_avx512_narrow_nt,
    .pack_a_rows = pack_a_rows, .pack_a_cols = pack_a_cols,
    .pack_b_rows = pack_b_rows, .pack_b_cols = pack_b_cols, .pack_a_packed = pack_a_packed,
    .pack_a_cols_sums = pack_a_cols_sums,
};
#endif
