/* The micro-kernel contract shared by gemm.c and the per-ISA kernel files.
 *
 * A micro-kernel computes one MR x NR tile of C from two packed micro-panels:
 *
 *     a_panel  kc x MR   a_panel[p*MR + i] = op(A)[i][p]   (broadcast operand)
 *     b_panel  kc x NR   b_panel[p*NR + j] = op(B)[p][j]   (vector operand)
 *
 *     t[i][j] = sum_p a_panel[p*MR + i] * b_panel[p*NR + j]
 *     c[i*ldc + j] = act(alpha * t[i][j] + beta * c[i*ldc + j] + bias[j])
 *
 * for every i < MR, j < NR: the tile is always full (the driver sends edge tiles
 * to a scratch tile). beta == 0 means c is not read; bias == NULL means no bias;
 * relu != 0 means act = max(., 0). Both panels are 64-byte aligned; c need not be.
 * kc may be 0 (then t = 0).
 */
#ifndef MLPF_GEMM_KERNELS_H
#define MLPF_GEMM_KERNELS_H
#include <stdint.h>

typedef struct {
    float alpha;
    float beta;            /* 0: c is write-only */
    const float *bias;     /* NR values for this tile's columns, or NULL */
    int relu;
} mlpf_tile_epilogue;

typedef void (*mlpf_sgemm_ukernel)(int64_t kc, const float *a_panel, const float *b_panel,
                                   float *c, int64_t ldc, const mlpf_tile_epilogue *ep);

/* Packing of one micro-panel: dst gets kc x R values, zero-padded past `rows` (< R).
 * pack_rows:  dst[p*R + r] = src[r*ld + p]   (source rows contiguous along p: transpose)
 * pack_cols:  dst[p*R + r] = src[p*ld + r]   (source rows contiguous along r: copy)   */
typedef void (*mlpf_spack)(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst);

/* A narrow product: C (rows x n) = alpha A B^T + beta C + bias, then act, for n <= MLPF_NARROW_N,
 * with A (rows x k, row stride lda) and B (n x k, row stride ldb) read in place: every C
 * value is a dot product over k, vectorized along k. For a layer with few outputs (a
 * classifier's logits: y = h @ W.T with W of 10 rows) a register tile NR columns wide
 * would be mostly padding, and packing h would cost as much as the arithmetic. */
typedef void (*mlpf_sgemm_narrow)(int64_t rows, int64_t n, int64_t k, const float *a,
                                  int64_t lda, const float *b, int64_t ldb, float *c,
                                  int64_t ldc, const mlpf_tile_epilogue *ep);
#define MLPF_NARROW_N 16

/* One kernel and the block sizes that go with it (one "config" per ISA, as in BLIS).
 * Loops of the driver (gemm.c), outermost first:
 *   mc rows of op(A)   packed A block  mc x kc   lives in L3 (per thread)
 *   kc depth
 *   nc columns of op(B) packed B block kc x nc   lives in L2
 *   MR rows            A micro-panel   MR x kc   lives in L1 for the whole inner loop
 *   NR columns         B micro-panel   kc x NR   streamed from L2 into the micro-kernel */
typedef struct {
    const char *name;
    int mr, nr;
    int mc, kc, nc;
    mlpf_sgemm_ukernel ukernel;
    /* Packing routines for A (R = mr) and B (R = nr); NULL = the portable ones in gemm.c. */
    mlpf_spack pack_a_rows, pack_a_cols, pack_b_rows, pack_b_cols;
    mlpf_sgemm_narrow narrow_nt;  /* NULL: narrow products go through the tiles too */
    int (*supported)(void);   /* nonzero when this CPU can run it */
} mlpf_sgemm_config;

extern const mlpf_sgemm_config mlpf_sgemm_portable_config;
/* The ISA kernels exist on x86 only; -DMLPF_PORTABLE_ONLY builds as on any other CPU. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(MLPF_PORTABLE_ONLY)
#define MLPF_X86 1
extern const mlpf_sgemm_config mlpf_sgemm_avx2_config;
extern const mlpf_sgemm_config mlpf_sgemm_avx512_config;
#endif

/* A plain C loop that GCC should vectorize for the CPU it runs on: on x86 it is compiled
 * for AVX-512, AVX2 and baseline x86-64, and the clone is picked at load time (no -march
 * flags, so one build runs anywhere). */
#ifdef MLPF_X86
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* The largest register tile of any kernel (size of the driver's scratch edge tile). */
#define MLPF_MAX_MR 16
#define MLPF_MAX_NR 32

#endif
