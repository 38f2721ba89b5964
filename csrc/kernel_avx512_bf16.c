/* sbgemm_avx512bf16_12x32: AVX512-BF16 micro-kernel (contract in gemm_bf16_kernels.h), and
 * the vector packing and epilogue that the AMX kernel shares.
 *
 * vdpbf16ps: t[j] += a[2j] b[2j] + a[2j+1] b[2j+1] for 16 float lanes j, i.e. 32 bf16
 * multiply-adds per instruction, twice an fp32 FMA's. Register tile: 12 rows x 32 columns
 * of C = 24 zmm accumulators (two 16-float vectors a row); per pair of k values: 2 vector
 * loads of B pairs, 12 broadcasts of an A pair (32 bits), 24 dot products, as the fp32
 * sgemm_avx512_12x32 does per k value. Where a CPU issues vdpbf16ps at a quarter of its
 * FMA rate, i.e. half the multiply-adds (this project's Xeon: bench/README.md), this
 * kernel is slower than the fp32 one; its use is AVX512-BF16 CPUs without AMX.
 *
 * Compiled without -mavx512bf16: the functions carry target attributes, and gemm_bf16.c
 * calls them only when the CPU has AVX512-BF16, -BW and -VL.
 */
#include "gemm.h"
#include "gemm_bf16_kernels.h"
#include "gemm_driver.h"
#ifdef MLPF_X86
#include "avx512_helpers.h"

#define BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

enum { MR = MLPF_CFG_AVX512_BF16_MR, NR = MLPF_CFG_AVX512_BF16_NR };
_Static_assert(MR == 12 && NR == 32, "the micro-kernel's tile is 12 x 32");

typedef uint32_t __attribute__((may_alias)) bf16_pair;      /* (p, p + 1) of one row */

BF16 static void sbgemm_avx512bf16_12x32(int64_t kc, const uint16_t *restrict a,
                                         const uint16_t *restrict b, float *restrict tile,
                                         int64_t ldt, int accumulate)
{
    __m512 t[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        t[i][0] = accumulate ? _mm512_load_ps(tile + i * ldt) : _mm512_setzero_ps();
        t[i][1] = accumulate ? _mm512_load_ps(tile + i * ldt + 16) : _mm512_setzero_ps();
    }
    for (int64_t p0 = 0; p0 < kc; p0 += 32, a += 32 * MR) {   /* A block: MR rows x 32 */
        const bf16_pair *a_pairs = (const bf16_pair *)a;      /* row i, pair q: [i*16 + q] */
#pragma GCC unroll 2
        for (int q = 0; q < 16; q++, b += 2 * NR) {           /* t += a[:, p:p+2] b[p:p+2, :] */
            const __m512bh b0 = (__m512bh)_mm512_load_si512(b);
            const __m512bh b1 = (__m512bh)_mm512_load_si512(b + 32);
            _mm_prefetch((const char *)(b + 16 * NR), _MM_HINT_T0);
            _mm_prefetch((const char *)(b + 16 * NR + 32), _MM_HINT_T0);
#pragma GCC unroll 12
            for (int i = 0; i < MR; i++) {
                const __m512bh a_i = (__m512bh)_mm512_set1_epi32((int)a_pairs[i * 16 + q]);
                t[i][0] = _mm512_dpbf16_ps(t[i][0], a_i, b0);
                t[i][1] = _mm512_dpbf16_ps(t[i][1], a_i, b1);
            }
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        _mm512_store_ps(tile + i * ldt, t[i][0]);
        _mm512_store_ps(tile + i * ldt + 16, t[i][1]);
    }
}

/* --- packing --------------------------------------------------------------------------- */

/* The pairs (x0[r], x1[r]) of the first `count` (<= 16 used) values of the rows x0 and x1
 * (x1 NULL: zeros) as 32-bit lanes, zeros after: both rows as 32 bf16, then interleaved. */
BF16 static inline __m512 pairs_of_rows(const void *x0, const void *x1, int type, int64_t count)
{
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10,
                                                25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
                                                18, 2, 17, 1, 16, 0);
    const __mmask16 lanes = first_lanes(count), lanes1 = x1 ? lanes : 0;
    __m512i both;
    if (type == MLPF_TYPE_BF16)
        both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi16(lanes, x0)),
                                  _mm256_maskz_loadu_epi16(lanes1, x1), 1);
    else
        both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(lanes1, x1),
                                            _mm512_maskz_loadu_ps(lanes, x0));
    return _mm512_castsi512_ps(_mm512_permutexvar_epi16(interleave, both));
}

/* The first `count` (<= 32 used) values at src as 32 bf16, zeros after. */
BF16 static inline __m512i load32_bf16(const void *src, int type, int64_t count)
{
    if (type == MLPF_TYPE_BF16) {
        const __mmask32 lanes = count <= 0 ? 0 : count >= 32 ? ~0u : (1u << count) - 1;
        return _mm512_maskz_loadu_epi16(lanes, src);
    }
    const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(count), src);
    const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(count - 16), (const float *)src + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* mlpf_bf16_pack in 16 x 16 blocks of pairs P[r][q] = (X[r][2q], X[r][2q+1]), 32 bits each:
 * read as 16 vectors along q (one per row r, when along_k) or along r (one per pair q, from
 * two rows of src), transposed in registers where the layout wants the other way, and
 * stored as 16 vectors along r (group 2: dst pairs [q*R + r]) or along q (group 32:
 * [(q/16)*16*R + r*16 + q%16]). Masked loads never read past the rows' ends. */
BF16 static inline __attribute__((always_inline)) void
pack_blocks(int R, const int group, int64_t kc, int64_t rows, const void *src, const int src_type,
            int64_t ld, const int along_k, uint16_t *dst)
{
    const size_t size = src_type == MLPF_TYPE_BF16 ? 2 : 4;
    const char *s = src;
    const int64_t pairs = round_up(kc, MLPF_BF16_K_GROUP) / 2;
    bf16_pair *out = (bf16_pair *)dst;
    for (int64_t q0 = 0; q0 < pairs; q0 += 16)
        for (int r0 = 0; r0 < R; r0 += 16) {
            __m512 v[16];
            for (int i = 0; i < 16; i++) {
                if (along_k) {                    /* v[i] = P[r0 + i][q0 : q0 + 16] */
                    v[i] = r0 + i >= rows ? _mm512_setzero_ps() : _mm512_castsi512_ps(
                        load32_bf16(s + ((r0 + i) * ld + 2 * q0) * size, src_type, kc - 2 * q0));
                    continue;
                }
                const int64_t p = 2 * (q0 + i);   /* v[i] = P[r0 : r0 + 16][q0 + i] */
                v[i] = p >= kc ? _mm512_setzero_ps() : pairs_of_rows(
                    s + (p * ld + r0) * size, p + 1 < kc ? s + ((p + 1) * ld + r0) * size : NULL,
                    src_type, rows - r0);
            }
            if ((group == 2) == along_k) transpose_16x16(v);
            if (group == 2) {
                for (int i = 0; i < 16 && q0 + i < pairs; i++)
                    _mm512_mask_storeu_ps(out + (q0 + i) * R + r0, first_lanes(R - r0), v[i]);
            } else {
                for (int i = 0; i < 16 && r0 + i < R; i++)
                    _mm512_storeu_ps(out + q0 * R + (r0 + i) * 16, v[i]);
            }
        }
}

/* pack_blocks with the group, source type and direction as constants (no branches on them
 * in the loops). */
BF16 void mlpf_bf16_pack_avx512(int R, int group, int64_t kc, int64_t rows, const void *src,
                                int src_type, int64_t ld, int along_k, uint16_t *dst)
{
    switch ((group == 2) * 4 + (src_type == MLPF_TYPE_BF16) * 2 + (along_k != 0)) {
#define PACK_CASE(G, T, K)                                                                \
    case (G == 2) * 4 + (T == MLPF_TYPE_BF16) * 2 + K:                                    \
        pack_blocks(R, G, kc, rows, src, T, ld, K, dst);                                  \
        break;
    PACK_CASE(2, MLPF_TYPE_F32, 0) PACK_CASE(2, MLPF_TYPE_F32, 1)
    PACK_CASE(2, MLPF_TYPE_BF16, 0) PACK_CASE(2, MLPF_TYPE_BF16, 1)
    PACK_CASE(32, MLPF_TYPE_F32, 0) PACK_CASE(32, MLPF_TYPE_F32, 1)
    PACK_CASE(32, MLPF_TYPE_BF16, 0) PACK_CASE(32, MLPF_TYPE_BF16, 1)
#undef PACK_CASE
    }
}

/* --- the epilogue ---------------------------------------------------------------------- */

/* `lanes` values at p (of type) as floats, zeros elsewhere. */
BF16 static inline __m512 load_float(const char *p, int type, __mmask16 lanes)
{
    if (type == MLPF_TYPE_F32) return _mm512_maskz_loadu_ps(lanes, p);
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p)), 16));
}

BF16 static inline void store_float(char *p, int type, __mmask16 lanes, __m512 v)
{
    if (type == MLPF_TYPE_F32) _mm512_mask_storeu_ps(p, lanes, v);
    else _mm256_mask_storeu_epi16(p, lanes, (__m256i)_mm512_cvtneps_pbh(v));
}

/* mlpf_bf16_store a row at a time, 16 columns at a time (masked at the end of the row);
 * t is 64-byte aligned and ldt a multiple of 16. */
BF16 void mlpf_bf16_store_avx512(int64_t rows, int64_t cols, const float *t, int64_t ldt,
                                 void *c, const void *y, const float *bias,
                                 const mlpf_bf16_epilogue *ep)
{
    const size_t c_size = ep->c_type == MLPF_TYPE_BF16 ? 2 : 4;
    const size_t y_size = ep->y_type == MLPF_TYPE_BF16 ? 2 : 4;
    const __m512 alpha = _mm512_set1_ps(ep->alpha), beta = _mm512_set1_ps(ep->beta);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < rows; i++) {
        char *c_row = (char *)c + i * ep->ldc * c_size;
        const char *y_row = y ? (const char *)y + i * ep->ldy * y_size : NULL;
        for (int64_t j = 0; j < cols; j += 16) {
            const __mmask16 lanes = first_lanes(cols - j);
            __m512 v = _mm512_mul_ps(alpha, _mm512_load_ps(t + i * ldt + j));
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, bias + j));
            if (ep->beta != 0.0f)
                v = _mm512_fmadd_ps(beta, load_float(c_row + j * c_size, ep->c_type, lanes), v);
            if (ep->relu) v = _mm512_max_ps(zero, v);          /* max(0, NaN) = NaN */
            if (y_row) {
                const __m512 y_ij = load_float(y_row + j * y_size, ep->y_type, lanes);
                if (ep->dact == MLPF_ACT_RELU)                /* [y > 0]: y NaN gives 0 */
                    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y_ij, zero, _CMP_GT_OQ), v);
                else if (ep->dact == MLPF_ACT_SIGMOID)
                    v = _mm512_mul_ps(v, _mm512_mul_ps(y_ij, _mm512_sub_ps(one, y_ij)));
                else
                    v = _mm512_mul_ps(v, _mm512_fnmadd_ps(y_ij, y_ij, one));
            }
            store_float(c_row + j * c_size, ep->c_type, lanes, v);
        }
    }
}

int mlpf_avx512bf16_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

/* Block sizes: kernels/cpu_config.py, BF16_CONFIGS["avx512_bf16"]. */
const mlpf_sbgemm_config mlpf_sbgemm_avx512bf16_config = {
    .name = "sbgemm_avx512bf16_12x32", .family = "avx512bf16",
    MLPF_BF16_CONFIG_VALUES(AVX512_BF16),
    .ukernel = sbgemm_avx512bf16_12x32,
    .pack = mlpf_bf16_pack_avx512, .store = mlpf_bf16_store_avx512,
    .supported = mlpf_avx512bf16_supported,
};
#endif
