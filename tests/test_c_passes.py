"""The passes of csrc/passes.c called through cffi (mlpf_ssgd, mlpf_sadam), against float64
NumPy and the contracts csrc/gemm.h states: what test_cgemm.py's thread-count checks (the
same bits on 1 to 4 threads, one hyperparameter set) leave out. Sizes: 41 (one thread)
and 2^20 + 37 (above pass_min_parallel_asleep: shares on both threads of the `threads`
fixture, a last chunk that is not whole)."""
import numpy as np
import pytest
from conftest import assert_close

from mlpfast.kernels import gemm, optim

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C library not built")

SIZES = [41, (1 << 20) + 37]


def c_lib():
    library = gemm.c_library()
    return library.ffi, library.lib


def floats(ffi, a):
    return ffi.from_buffer("float[]", a)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("nesterov", [0, 1])
def test_sgd_momentum_takes_the_gradient_as_its_first_buffer_whatever_it_held(threads, n,
                                                                               nesterov, rng):
    """gemm.h: with momentum, buf = g on the first step (not momentum buf + g): the buffer
    is not read then, so one that holds NaN or an old run's values is overwritten. Two
    steps, plain and Nesterov momentum, against optim.sgd_ref in float64 from a zero
    buffer."""
    ffi, lib = c_lib()
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.full(n, np.nan, np.float32)
    buf[::3] = 5.0                                       # stale values, not only NaN
    want_p, want_buf = p.astype(np.float64), np.zeros(n)
    for step in (1, 2):
        g = rng.standard_normal(n).astype(np.float32)
        assert lib.mlpf_ssgd(floats(ffi, p), floats(ffi, g), floats(ffi, buf), n, 0.05, 0.9,
                             nesterov, 0.01, step == 1) == 0
        optim.sgd_ref(want_p, g.astype(np.float64), want_buf, lr=0.05, momentum=0.9,
                      nesterov=bool(nesterov), weight_decay=0.01, first_step=step == 1)
        assert_close(buf, want_buf, np.float32, what=f"buf, step {step}")
        assert_close(p, want_p, np.float32, what=f"p, step {step}")


def test_sgd_without_momentum_needs_no_buffer(threads, rng):
    """gemm.h: momentum_buf is not read when momentum == 0 and may be NULL."""
    ffi, lib = c_lib()
    for n in SIZES:
        p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        want = p.astype(np.float64) - 0.1 * (g.astype(np.float64) + 0.01 * p)
        assert lib.mlpf_ssgd(floats(ffi, p), floats(ffi, g), ffi.NULL, n, 0.1, 0.0, 0, 0.01,
                             1) == 0
        assert_close(p, want, np.float32, what=str(n))


def test_optimizer_passes_refuse_a_negative_size_or_a_missing_array():
    """gemm.h: MLPF_ERR_SHAPE for n < 0, MLPF_ERR_NULL for a missing array that has
    values, nothing written; n = 0 needs no arrays."""
    ffi, lib = c_lib()
    p, g, m, v = (np.ones(8, np.float32) for _ in range(4))
    pointers = [floats(ffi, a) for a in (p, g, m, v)]

    def adam(n, arrays=pointers):
        return lib.mlpf_sadam(*arrays, n, 0.1, 0.9, 0.999, 1.0, 1e-8, 0.0, 1.0)

    def sgd(n, arrays=pointers[:3], momentum=0.9):
        return lib.mlpf_ssgd(*arrays, n, 0.1, momentum, 0, 0.0, 0)
    assert adam(-1) == lib.MLPF_ERR_SHAPE and sgd(-1) == lib.MLPF_ERR_SHAPE
    for missing in range(4):
        arrays = [ffi.NULL if i == missing else a for i, a in enumerate(pointers)]
        assert adam(8, arrays) == lib.MLPF_ERR_NULL, missing
        if missing < 3:
            assert sgd(8, arrays[:3]) == lib.MLPF_ERR_NULL, missing
    assert adam(0, [ffi.NULL] * 4) == 0 and sgd(0, [ffi.NULL] * 3) == 0
    for a in (p, g, m, v):
        assert (a == 1).all()

