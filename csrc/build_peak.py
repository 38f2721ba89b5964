"""cffi builder (API mode) for mlpfast._peak, the FMA-throughput probe; used by setup.py."""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef("""
double mlpf_fma_peak_gflops(int threads, int milliseconds);
const char *mlpf_fma_peak_isa(void);
""")
ffibuilder.set_source(
    "mlpfast._peak",
    '#include "peak.h"',
    sources=[os.path.relpath(os.path.join(HERE, "peak.c"))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
