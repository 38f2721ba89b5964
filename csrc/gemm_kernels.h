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
 * for every i < MR, j < NR: the tile is always full (edge tiles go to the config's
 * edge_ukernel, or without one through a scratch tile). beta == 0 means c is not read;
 * bias == NULL means no bias; relu != 0 means act = max(., 0); with y (mlpf_sgemm_dact's
 * derivative) c[i*ldc + j] is then multiplied by f'(y[i*ldy + j]). Both panels are 64-byte
 * aligned; c need not be. kc may be 0 (then t = 0).
 */
#ifndef MLPF_GEMM_KERNELS_H
#define MLPF_GEMM_KERNELS_H
#include <stdint.h>
#include "gemm.h"

typedef struct {
    float alpha;
    float beta;            /* 0: c is write-only */
    const float *bias;     /* NR values for this tile's columns, or NULL */
    int relu;
    const float *y;        /* then c *= f'(y[i*ldy + j]) (mlpf_sgemm_dact), or NULL */
    int64_t ldy;
    int dact;              /* f: MLPF_ACT_RELU, MLPF_ACT_SIGMOID or MLPF_ACT_TANH */
} mlpf_tile_epilogue;

/* v f'(y), f' from f's output y (gemm.h, mlpf_sgemm_dact): RELU [y > 0] (y NaN gives 0),
 * SIGMOID y (1 - y), TANH 1 - y^2. The kernels' epilogues compute the same per lane. */
static inline float mlpf_times_dact(float v, float y, int dact)
{
    if (dact == MLPF_ACT_RELU) return y > 0.0f ? v : 0.0f;
    if (dact == MLPF_ACT_SIGMOID) return v * (y * (1.0f - y));
    return v * (1.0f - y * y);
}

/* c[i*ldc + j] of the contract above from its product alpha t[i][j], one value at a time:
 * the scalar kernels (portable, narrow) and the driver's scratch edge tiles. */
static inline float mlpf_epilogue_value(const mlpf_tile_epilogue *ep, float product,
                                        const float *c, int64_t ldc, int64_t i, int64_t j)
{
    float v = product;
    if (ep->beta != 0.0f) v += ep->beta * c[i * ldc + j];
    if (ep->bias) v += ep->bias[j];
    if (ep->relu && v < 0.0f) v = 0.0f;                 /* NaN passes, as np.maximum */
    if (ep->y) v = mlpf_times_dact(v, ep->y[i * ep->ldy + j], ep->dact);
    return v;
}

typedef void (*mlpf_sgemm_ukernel)(int64_t kc, const float *a_panel, const float *b_panel,
                                   float *c, int64_t ldc, const mlpf_tile_epilogue *ep);

/* An edge tile: the same for the first rows x cols of the tile only (rows <= MR, cols <= NR;
 * the panels as for a full tile, zero-padded), read and written in place. */
typedef void (*mlpf_sgemm_edge_ukernel)(int64_t kc, const float *a_panel, const float *b_panel,
                                        float *c, int64_t ldc, const mlpf_tile_epilogue *ep,
                                        int rows, int cols);

/* Packing of one micro-panel: dst gets kc x R values, zero-padded past `rows` (< R).
 * pack_rows:  dst[p*R + r] = src[r*ld + p]   (source rows contiguous along p: transpose)
 * pack_cols:  dst[p*R + r] = src[p*ld + r]   (source rows contiguous along r: copy)   */
typedef void (*mlpf_spack)(int64_t kc, int64_t rows, const float *src, int64_t ld, float *dst);

/* A matrix M (rows x cols) held in the packed B layout (gemm.h, mlpf_spack_b): for each
 * block of kc rows [pc, pc + kcb) (kcb = kc but maybe for the last), its runs of nr
 * columns in order, kcb x nr values each, columns past cols zero. Row i's run of the
 * columns [f - f % nr, + nr) starts mlpf_packed_offset(v, i, f) floats into the panels;
 * the runs of one row lie nr kcb apart. The one definition of the layout: everything
 * that writes or reads it goes through these two functions. */
typedef struct {
    const float *panels;                   /* after the header */
    int64_t rows, cols, kc, n_padded;      /* kc: the layout's blocks of rows */
    int nr;
} mlpf_packed_view;

static inline int64_t mlpf_packed_run_stride(const mlpf_packed_view *v, int64_t i)
{
    const int64_t pc = i - i % v->kc;
    return (v->kc < v->rows - pc ? v->kc : v->rows - pc) * v->nr;
}

static inline int64_t mlpf_packed_offset(const mlpf_packed_view *v, int64_t i, int64_t f)
{
    const int64_t pc = i - i % v->kc;
    return pc * v->n_padded + f / v->nr * mlpf_packed_run_stride(v, i) + (i - pc) * v->nr;
}

/* Packing of an A micro-panel from such an M (mlpf_sgemm_packed_a): dst[p*MR + r] =
 * M[row0 + r][col0 + p] for r < rows (zeros up to MR), p < kc. */
typedef void (*mlpf_spack_packed)(int64_t kc, int64_t rows, const mlpf_packed_view *src,
                                  int64_t row0, int64_t col0, float *dst);

/* pack_cols of an A micro-panel (R = MR) that also writes sums[r] = sum_p dst[p*MR + r]
 * for r < rows: four partial sums per row (p mod 4, in increasing p), added as (0 + 1) +
 * (2 + 3), the order of gemm.c's sum_panel_rows, which sums the other panels. */
typedef void (*mlpf_spack_sums)(int64_t kc, int64_t rows, const float *src, int64_t ld,
                                float *dst, float *sums);

/* A narrow product: C (rows x n) = alpha A B^T + beta C + bias, then act, for n <=
 * MLPF_NARROW_N (gemm.h), with A (rows x k, row stride lda) and B (n x k, row stride ldb)
 * read in place: every C value is a dot product over k, vectorized along k. For a layer
 * with few outputs (a classifier's logits: y = h @ W.T with W of 10 rows) a register tile
 * NR columns wide would be mostly padding, and packing h would cost as much as the
 * arithmetic. */
typedef void (*mlpf_sgemm_narrow)(int64_t rows, int64_t n, int64_t k, const float *a,
                                  int64_t lda, const float *b, int64_t ldb, float *c,
                                  int64_t ldc, const mlpf_tile_epilogue *ep);

/* One kernel and the block sizes and thresholds that go with it (one "config" per ISA, as
 * in BLIS). The numbers come from kernels/cpu_config.py (its docstring explains each) through
 * the generated cpu_config.h: MLPF_CONFIG_VALUES(AVX512) fills them for the "avx512" config. */
typedef struct {
    const char *name;
    int mr, nr;
    int64_t vector_bytes, mc, kc, nc, b_block_bytes;
    int64_t max_shared_a_bytes, shared_a_l2_bytes, shared_chunks_l2, shared_chunks_l3;
    int64_t min_parallel_fmas, min_parallel_fmas_awake, pass_min_parallel,
            pass_min_parallel_asleep, parallel_min_elements, stream_min_bytes,
            prefetch_min_bytes;
    mlpf_sgemm_ukernel ukernel;
    mlpf_sgemm_edge_ukernel edge_ukernel;  /* NULL: edge tiles through a scratch tile */
    /* Packing routines for A (R = mr) and B (R = nr); NULL = the portable ones in gemm.c. */
    mlpf_spack pack_a_rows, pack_a_cols, pack_b_rows, pack_b_cols;
    mlpf_spack_packed pack_a_packed;   /* NULL: the portable one in gemm.c */
    mlpf_spack_sums pack_a_cols_sums;  /* NULL: pack_a_cols, then the sums from the panel */
    mlpf_sgemm_narrow narrow_nt;  /* NULL: narrow products go through the tiles too */
    int (*supported)(void);   /* nonzero when this CPU can run it */
} mlpf_sgemm_config;

#include "cpu_config.h"
#define MLPF_CONFIG_VALUES(F)                                                                \
    .mr = MLPF_CFG_##F##_MR, .nr = MLPF_CFG_##F##_NR,                                        \
    .vector_bytes = MLPF_CFG_##F##_VECTOR_BYTES, .mc = MLPF_CFG_##F##_MC,                    \
    .kc = MLPF_CFG_##F##_KC, .nc = MLPF_CFG_##F##_NC,                                        \
    .b_block_bytes = MLPF_CFG_##F##_B_BLOCK_BYTES,                                           \
    .max_shared_a_bytes = MLPF_CFG_##F##_MAX_SHARED_A_BYTES,                                 \
    .shared_a_l2_bytes = MLPF_CFG_##F##_SHARED_A_L2_BYTES,                                   \
    .shared_chunks_l2 = MLPF_CFG_##F##_SHARED_CHUNKS_L2,                                     \
    .shared_chunks_l3 = MLPF_CFG_##F##_SHARED_CHUNKS_L3,                                     \
    .min_parallel_fmas = MLPF_CFG_##F##_MIN_PARALLEL_FMAS,                                   \
    .min_parallel_fmas_awake = MLPF_CFG_##F##_MIN_PARALLEL_FMAS_AWAKE,                       \
    .pass_min_parallel = MLPF_CFG_##F##_PASS_MIN_PARALLEL,                                   \
    .pass_min_parallel_asleep = MLPF_CFG_##F##_PASS_MIN_PARALLEL_ASLEEP,                     \
    .parallel_min_elements = MLPF_CFG_##F##_PARALLEL_MIN_ELEMENTS,                           \
    .stream_min_bytes = MLPF_CFG_##F##_STREAM_MIN_BYTES,                                     \
    .prefetch_min_bytes = MLPF_CFG_##F##_PREFETCH_MIN_BYTES

#define MLPF_STR_(x) #x
#define MLPF_STR(x) MLPF_STR_(x)
/* "sgemm_<isa>_<mr>x<nr>", e.g. "sgemm_avx512_12x32" */
#define MLPF_KERNEL_NAME(isa, F) \
    "sgemm_" #isa "_" MLPF_STR(MLPF_CFG_##F##_MR) "x" MLPF_STR(MLPF_CFG_##F##_NR)

/* The config in use (gemm.c): the GEMM and the passes read their thresholds from it. */
const mlpf_sgemm_config *mlpf_active_config(void);
/* Writes the header of a packed matrix of k x n values (gemm.h, mlpf_spack_b) in the
 * active config's layout and returns the view of its panels (gemm.c). */
mlpf_packed_view mlpf_packed_b_start(float *packed, int64_t k, int64_t n);
/* Threads for a pass touching n elements (passes.c; gemm.c's narrow products, which pack
 * nothing): one below the config's pass threshold, the lower one while the workers spin. */
int mlpf_pass_threads(int64_t n);
/* The sum of the squares of rows x cols floats (row stride ld) in float32 running sums,
 * added in double (passes.c): NaN or inf when a value is, or when a square overflows
 * (|x| beyond about 1.8e19). The finiteness check of mlpf_ssum_squares and, strip by
 * strip, of mlpf_sgemm_weight_grad. */
double mlpf_sum_squares_rows(int64_t rows, int64_t cols, const float *x, int64_t ld);

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
