"""cffi builder (API mode) for mlpfast._cgemm; used by setup.py's cffi_modules."""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
int mlpf_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
               float beta, float *c, int64_t ldc, const float *bias, int act);
int mlpf_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
               double beta, double *c, int64_t ldc, const double *bias, int act);
int mlpf_sgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                    float *c, int64_t ldc, const float *y, int64_t ldy, int dact);
int mlpf_dgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
                    double *c, int64_t ldc, const double *y, int64_t ldy, int dact);
int mlpf_sadam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
               float step_size, float beta1, float beta2, float inv_bc2_sqrt, float eps,
               float weight_decay, float decay);
double mlpf_ssum_squares(const float *x, int64_t n);
int mlpf_sgather(const float *src, int64_t src_rows, int64_t ld, int64_t cols,
                 const int64_t *index, int64_t rows, float *out);
void mlpf_set_num_threads(int n);
int mlpf_get_num_threads(void);
const char *mlpf_kernel_name(void);
int mlpf_set_kernel(const char *name);
int mlpf_sbgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void *a, int a_type, int64_t lda, const void *b, int b_type, int64_t ldb,
                float beta, void *c, int c_type, int64_t ldc, const float *bias, int act);
int mlpf_sbgemm_dact(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const void *a, int a_type, int64_t lda, const void *b, int b_type,
                     int64_t ldb, void *c, int c_type, int64_t ldc, const void *y, int y_type,
                     int64_t ldy, int dact);
const char *mlpf_sbgemm_kernel_name(void);
int mlpf_set_sbgemm_kernel(const char *name);
"""

# gemm.c: checks, dispatch, packing, blocking; passes.c: Adam, the gradient check and the
# batch gather on the same threads; threadpool.c: the pthread pool; one file per micro-kernel. The ISA kernels carry target attributes (no -march flags), so one build
# runs on any x86-64 and picks its kernel at run time; elsewhere only the portable one.
# gemm_bf16.c: the same for bf16 products (mlpf_sbgemm), with its own kernel files.
SOURCES = ["gemm.c", "passes.c", "threadpool.c", "kernel_avx512.c", "kernel_avx2.c",
           "kernel_portable.c", "gemm_bf16.c", "kernel_amx_bf16.c", "kernel_avx512_bf16.c",
           "kernel_portable_bf16.c"]


def make_builder(module_name="mlpfast._cgemm", define_macros=()):
    """The cffi builder of the C GEMM; define_macros=[("MLPF_PORTABLE_ONLY", "1")] builds it
    as on a non-x86 CPU (the tests use that)."""
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        module_name,
        '#include "gemm.h"',
        sources=[os.path.join(HERE, name) for name in SOURCES],
        include_dirs=[HERE],
        define_macros=list(define_macros),
        extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fno-math-errno"],
        extra_link_args=["-pthread"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    # Rebuilds mlpfast/_cgemm.abi3.so in place (the file `pip install -e .` makes; a
    # version-tagged .so would shadow it on import). Built aside and renamed over the old
    # one, so processes that have the old library loaded keep running.
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as build_dir:
        built = ffibuilder.compile(tmpdir=build_dir, verbose=True, target="_cgemm.abi3.so")
        final = os.path.join(os.path.dirname(HERE), "mlpfast", "_cgemm.abi3.so")
        shutil.copy(built, final + ".new")
        os.replace(final + ".new", final)
