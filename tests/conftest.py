"""Shared test helpers: tolerances per dtype, random arrays of awkward shapes."""
import sys

import numpy as np
import pytest

# atol + rtol * |ref|, per dtype; gradients against finite differences get their own.
TOL = {np.float32: (1e-5, 1e-4), np.float64: (1e-12, 1e-10)}
GRAD_TOL = (1e-7, 1e-6)     # float64 finite differences, central, eps = 1e-6

DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype=None, tol=None, what=""):
    """|actual - expected| <= atol + rtol |expected| everywhere; NaN matches only NaN and
    an infinity only the same infinity."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    atol, rtol = tol or TOL[np.dtype(dtype or actual.dtype).type]
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    same = (np.isnan(a) & np.isnan(e)) | ((a == e) & np.isinf(e))
    with np.errstate(invalid="ignore"):
        err = np.abs(a - e) - (atol + rtol * np.abs(e))
    err = np.where(same, -1.0, np.where(np.isnan(err), np.inf, err))
    if err.size and err.max() > 0:
        i = np.unravel_index(err.argmax(), err.shape)
        raise AssertionError(f"{what}: at {i} got {actual[i]!r}, expected {expected[i]!r} "
                             f"(atol {atol}, rtol {rtol})")


# Python source for a child process (a test that crashes it fails, the others go on):
# at_page_end(shape, dtype) gives a C-ordered array of zeros whose last element is
# followed by an unreadable page, so a kernel that reads or writes past it crashes.
GUARD_PAGES_SOURCE = r"""
import ctypes, mmap, sys
import numpy as np

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
PAGE, mapped = mmap.PAGESIZE, []


def at_page_end(shape, dtype=np.float32):
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    pages = nbytes // PAGE + 2
    buf = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(base + (pages - 1) * PAGE, PAGE, 0) == 0
    mapped.append(buf)
    offset = (pages - 1) * PAGE - nbytes
    return np.frombuffer(buf, dtype, int(np.prod(shape)), offset).reshape(shape)
"""


def run_guarded(script, *args):
    """Runs GUARD_PAGES_SOURCE + script in a child Python with sys.argv[1:] = args and
    asserts that it ended well, printing "ok"."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", GUARD_PAGES_SOURCE + script, *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def numerical_grad(f, x, eps=1e-6):
    """Central differences of scalar f() with respect to every entry of x (float64), in place."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


class Crash(Exception):
    """Stands in for a crash (kill, power loss) in the middle of a run."""


class BatchSamples:
    """(x, y) through the dataset protocol, calling ``action()`` while gathering batch
    ``at`` of the run (batches of ``batch`` rows, counted over the run's calls; one call
    may gather several batches, as the cpu backend's steps do). ``action`` defaults to
    raising Crash."""

    def __init__(self, x, y, batch, at=None, action=None, num_classes=None):
        self.x, self.y, self.batch, self.at, self.batches = x, y, batch, at, 0
        self.action = action or self._crash
        self.num_features = x.shape[1]
        self.num_classes = num_classes or int(y.max()) + 1

    def _crash(self):
        raise Crash(f"crash while gathering batch {self.at}")

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        first = self.batches + 1
        self.batches += -(-len(index) // self.batch)
        if self.at is not None and first <= self.at <= self.batches:
            self.action()
        x_out[...] = self.x[index]
        y_out[...] = self.y[index]


@pytest.fixture(autouse=True)
def _thread_count_restored():
    """A test that sets mlpfast's thread count leaves the next test the count it found."""
    mlpfast = sys.modules.get("mlpfast")          # (not imported here by this fixture)
    before = mlpfast.get_num_threads() if mlpfast else None
    yield
    if mlpfast and mlpfast.get_num_threads() != before:
        mlpfast.set_num_threads(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    """mlpfast's thread count (Numba and the C pool) set to 1, then 2, for one test."""
    import mlpfast
    before = mlpfast.get_num_threads()
    mlpfast.set_num_threads(request.param)
    yield request.param
    mlpfast.set_num_threads(before)


def _bf16_kernel_families():
    from mlpfast.kernels import gemm_bf16
    return gemm_bf16.C_KERNELS.supported() if gemm_bf16.c_available() else []


@pytest.fixture(params=_bf16_kernel_families())
def bf16_kernel(request):
    """Each C bf16 micro-kernel family this CPU and OS run (amx, avx512bf16, portable),
    selected for the test, the previous choice restored after it."""
    from mlpfast.kernels import gemm_bf16
    before = gemm_bf16.C_KERNELS.name()
    gemm_bf16.C_KERNELS.select(request.param)
    yield request.param
    gemm_bf16.C_KERNELS.select(before)


# splitmix64 for C test drivers that draw orders: r"""...""" + C_DRAW + r"""..."""
C_DRAW = r"""static uint64_t draw(uint64_t *state)          /* splitmix64 */
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
"""
