"""cffi builder (API mode) for mlpfast._cgemm; used by setup.py's cffi_modules."""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef("""
int mlpf_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
               float beta, float *c, int64_t ldc, const float *bias, int act);
int mlpf_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const double *a, int64_t lda, const double *b, int64_t ldb,
               double beta, double *c, int64_t ldc, const double *bias, int act);
void mlpf_set_num_threads(int n);
int mlpf_get_num_threads(void);
const char *mlpf_kernel_name(void);
""")
ffibuilder.set_source(
    "mlpfast._cgemm",
    '#include "gemm.h"',
    sources=[os.path.relpath(os.path.join(HERE, "gemm.c"))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O3"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
