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
    # Rebuilds mlpfast/_peak.abi3.so in place (the file `pip install -e .` makes; a
    # version-tagged .so would shadow it on import), from any working directory.
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as build_dir:
        built = ffibuilder.compile(tmpdir=build_dir, verbose=True, target="_peak.abi3.so")
        final = os.path.join(os.path.dirname(HERE), "mlpfast", "_peak.abi3.so")
        shutil.copy(built, final + ".new")
        os.replace(final + ".new", final)
