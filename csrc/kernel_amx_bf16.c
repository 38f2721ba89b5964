/* sbgemm_amx_32x32: AMX-BF16 micro-kernel (contract in gemm_bf16_kernels.h).
 *
 * AMX has 8 tile registers of up to 16 rows x 64 bytes. tdpbf16ps C, A, B computes
 *     C[i][j] += sum_{q < 16} A[i][2q] B[q][2j] + A[i][2q+1] B[q][2j+1]
 * for a 16 x 16 float tile C, a 16 x 32 bf16 tile A (rows along k) and a 16 x 16-pair
 * tile B (pairs along k): 8192 multiply-adds per instruction. The packed panels are those
 * tiles in memory: an A block of 32 k values is two A tiles (rows 0-15, 16-31, 64-byte
 * rows), a B block of 32 k values two B tiles (columns 0-15, 16-31, rows of 2 NR bf16).
 * Register tile: 32 x 32 of C = 4 C tiles (tmm0-3), 2 A tiles (tmm4-5), 2 B tiles
 * (tmm6-7); per 32 k values: 4 tile loads, 4 tdpbf16ps.
 *
 * The tile configuration is loaded once per thread and call (thread_begin) and the tiles
 * released after (thread_end). Linux hands AMX state to a process only on request
 * (arch_prctl ARCH_REQ_XCOMP_PERM, from 5.16 on); supported() asks once, and without it,
 * or without AVX512-BF16 for the packing and epilogue, the kernel is not used. Packing and
 * epilogue are kernel_avx512_bf16.c's.
 */
#include "gemm.h"
#include "gemm_bf16_kernels.h"
#ifdef MLPF_X86
#include <cpuid.h>
#include <immintrin.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX __attribute__((target("amx-tile,amx-bf16")))

enum { MR = MLPF_CFG_AMX_BF16_MR, NR = MLPF_CFG_AMX_BF16_NR };
_Static_assert(MR == 32 && NR == 32, "the micro-kernel's tile is 32 x 32");

AMX static void sbgemm_amx_32x32(int64_t kc, const uint16_t *a, const uint16_t *b, float *tile,
                                 int64_t ldt, int accumulate)
{
    enum { A_STRIDE = 32 * 2, B_STRIDE = 2 * NR * 2 };      /* bytes a row */
    const int64_t c_stride = ldt * 4;
    if (accumulate) {
        _tile_loadd(0, tile, c_stride);
        _tile_loadd(1, tile + 16, c_stride);
        _tile_loadd(2, tile + 16 * ldt, c_stride);
        _tile_loadd(3, tile + 16 * ldt + 16, c_stride);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t p = 0; p < kc; p += 32, a += 32 * MR, b += 32 * NR) {
        _tile_loadd(4, a, A_STRIDE);                  /* rows 0-15 of op(A), k p .. p+31 */
        _tile_loadd(5, a + 16 * 32, A_STRIDE);        /* rows 16-31 */
        _tile_loadd(6, b, B_STRIDE);                  /* columns 0-15 of op(B) */
        _tile_loadd(7, b + 32, B_STRIDE);             /* columns 16-31 */
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, tile, c_stride);
    _tile_stored(1, tile + 16, c_stride);
    _tile_stored(2, tile + 16 * ldt, c_stride);
    _tile_stored(3, tile + 16 * ldt + 16, c_stride);
}

/* The tile configuration (palette 1): tiles 0-7 of 16 rows x 64 bytes. A static object:
 * GCC 12's _tile_loadconfig tells the compiler it reads only the first 8 bytes, so the
 * stores that fill a local configuration may be dropped. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) tile_config;

static const tile_config TILES_16x64 = {
    .palette = 1,
    .bytes_per_row = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

AMX static void amx_begin(void) { _tile_loadconfig(&TILES_16x64); }

AMX static void amx_end(void) { _tile_release(); }

enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

/* CPUID: AMX-TILE and AMX-BF16 (leaf 7 EDX bits 24, 22); XCR0: the OS saves the tile
 * state (bits 17, 18); then the permission for this process. */
static int request_amx(void)
{
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return 0;
    if (!__get_cpuid_count(1, 0, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & (3u << 17)) != (3u << 17)) return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static int amx_supported(void)
{
    static atomic_int granted = -1;                  /* -1: not asked yet */
    int known = atomic_load(&granted);
    if (known < 0) {
        known = mlpf_avx512bf16_supported() && request_amx();
        atomic_store(&granted, known);
    }
    return known;
}

/* Block sizes: kernels/cpu_config.py, BF16_CONFIGS["amx_bf16"]. */
const mlpf_sbgemm_config mlpf_sbgemm_amx_config = {
    .name = "sbgemm_amx_32x32", .family = "amx",
    MLPF_BF16_CONFIG_VALUES(AMX_BF16),
    .ukernel = sbgemm_amx_32x32,
    .pack = mlpf_bf16_pack_avx512, .store = mlpf_bf16_store_avx512,
    .thread_begin = amx_begin, .thread_end = amx_end, .supported = amx_supported,
};
#endif
