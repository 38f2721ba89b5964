"""kernels/cpu_config.py is the one source of the block sizes and thresholds: the C library
compiled in every value (read back through mlpf_config_value), the Numba GEMM uses the same
config as the C kernel this CPU runs, and the C kernels are named by their tile."""
import pytest

from mlpfast.kernels import cpu_config, gemm

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C library not built")


@pytest.mark.parametrize("family", [*cpu_config.CONFIGS, *cpu_config.BF16_CONFIGS])
def test_the_c_library_holds_every_value(family):
    lib = gemm.c_library().lib
    for key, value in {**cpu_config.CONFIGS, **cpu_config.BF16_CONFIGS}[family].items():
        assert lib.mlpf_config_value(family.encode(), key.encode()) == value, (family, key)
    assert lib.mlpf_config_value(family.encode(), b"no_such_key") == -1
    assert lib.mlpf_config_value(b"no_such_family", b"kc") == -1


def test_the_numba_gemm_runs_the_c_kernels_config():
    config = cpu_config.CONFIGS[gemm.GEMM_FAMILY]
    assert (gemm.GEMM_MR, gemm.GEMM_VECTOR_BYTES, gemm.GEMM_MC, gemm.GEMM_KC, gemm.GEMM_NC) == \
        (config["mr"], config["vector_bytes"], config["mc"], config["kc"], config["nc"])
    assert 2 * gemm.GEMM_VECTOR_BYTES // 4 == config["nr"]          # float32 tile width
    previous = gemm.c_kernel_name()
    try:
        gemm.set_c_kernel(gemm.GEMM_FAMILY)
        assert gemm.c_kernel_name() == \
            f"sgemm_{gemm.GEMM_FAMILY}_{config['mr']}x{config['nr']}"
    finally:
        gemm.set_c_kernel(previous)
