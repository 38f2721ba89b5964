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
    sources=[os.path.join(HERE, "peak.c")],
    include_dirs=[HERE],
    extra_compile_args=["-O2"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    from build_cgemm import rebuild_in_place          # csrc/ is the script's folder

    rebuild_in_place(ffibuilder, "_peak")
