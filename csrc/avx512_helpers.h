/* AVX-512 helpers shared by the kernel files (x86 only; the functions carry target
 * attributes, so no -mavx512f is needed). */
#ifndef MLPF_AVX512_HELPERS_H
#define MLPF_AVX512_HELPERS_H
#include <immintrin.h>
#include <stdint.h>

#define AVX512 __attribute__((target("avx512f,avx2,fma")))

/* In-register transpose of the 16 x 16 block r[i][j]: afterwards r[j] holds column j.
 * Stage 1 interleaves row pairs, stage 2 gathers 4-row columns within 128-bit lanes,
 * stages 3-4 move the lanes (Intel's 16x16 transpose; 64 shuffles for 256 floats). */
AVX512 static inline void transpose_16x16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {      /* r[4g + q], lane L: column 4L + q of rows 4g..4g+3 */
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int i = 0; i < 2; i++)
        for (int q = 0; q < 4; q++) {
            t[8 * i + q] = _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0x88);
            t[8 * i + 4 + q] = _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0xDD);
        }
    for (int q = 0; q < 8; q++) {
        r[q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88);
        r[q + 8] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0xDD);
    }
}

/* The mask of lanes 0 .. n-1 (none for n <= 0, all for n >= 16). */
static inline __mmask16 first_lanes(int64_t n)
{
    return n <= 0 ? 0 : n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
}

#endif
