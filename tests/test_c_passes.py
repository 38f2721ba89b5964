"""The passes of csrc/passes.c called through cffi (mlpf_ssgd, mlpf_sadam, mlpf_sgather,
mlpf_sgather_packed, mlpf_snarrow_backward), against float64 NumPy and the contracts
csrc/gemm.h states: what test_cgemm.py's checks (the same bits on 1 to 4 threads, one
hyperparameter set, sources without a row stride) leave out. Sizes: small ones (one
thread) and ones above pass_min_parallel_asleep (shares on both threads of the `threads`
fixture, a last chunk that is not whole)."""
import numpy as np
import pytest
from conftest import C_DRAW, assert_close, run_guarded

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


def test_gather_reads_rows_of_a_wider_source(threads, rng):
    """src with row stride ld > cols (rows of a wider array, as gemm.h allows): the plain
    gather and the packed one (read back by a GEMM on it, against float64) take each
    row's first cols values; ld < cols is refused."""
    ffi, lib = c_lib()
    index64 = lambda x: ffi.from_buffer("int64_t[]", x)  # noqa: E731
    for rows, cols, ld in [(37, 45, 53), (300, 120, 128), (40000, 30, 33)]:
        wide = rng.standard_normal((rows + 11, ld)).astype(np.float32)
        index = rng.integers(0, rows + 11, rows)
        want = wide[index, :cols]
        out = np.full((rows, cols), np.nan, np.float32)
        assert lib.mlpf_sgather(floats(ffi, wide), rows + 11, ld, cols, index64(index), rows,
                                floats(ffi, out)) == 0
        assert np.array_equal(out, want), (rows, cols)
        capacity = lib.mlpf_packed_b_floats(rows, cols)
        spare = np.full(capacity + 16, np.nan, np.float32)
        packed = spare[(-spare.ctypes.data % 64) // 4:][:capacity]
        out[...] = np.nan
        assert lib.mlpf_sgather_packed(floats(ffi, wide), rows + 11, ld, cols, index64(index),
                                       rows, floats(ffi, out), floats(ffi, packed),
                                       capacity) == 0
        assert np.array_equal(out, want), (rows, cols)
        w = rng.standard_normal((9, cols)).astype(np.float32)
        c = np.full((rows, 9), np.nan, np.float32)
        assert lib.mlpf_sgemm_packed_a(1, rows, 9, cols, 1.0, floats(ffi, packed),
                                       floats(ffi, w), cols, 0.0, floats(ffi, c), 9, ffi.NULL,
                                       0) == 0
        assert_close(c, want.astype(np.float64) @ w.T.astype(np.float64),
                     tol=(2e-6 * cols, 1e-5 * cols ** 0.5), what=f"packed {rows}x{cols}")
        out[...] = 0.0
        assert lib.mlpf_sgather(floats(ffi, wide), rows + 11, cols - 1, cols, index64(index),
                                rows, floats(ffi, out)) == lib.MLPF_ERR_SHAPE
        assert not out.any()


_GATHER_GUARD_SCRIPT = r"""
from mlpfast.kernels import gemm

lib, ffi = gemm.c_library().lib, gemm.c_library().ffi
rng = np.random.default_rng(0)
pointer = lambda a, t="float *": ffi.cast(t, a.ctypes.data)
index = np.array([19, 0, 19, 5, 19, 3, 19, 1, 19, 19, 2], np.int64)    # the last row
for kernel in gemm.c_kernels():                                         # in each group
    gemm.set_c_kernel(kernel)                                           # (layout widths)
    for cols in (1, 7, 8, 15, 16, 17, 31, 33, 45, 63):
        src, out = at_page_end((20, cols)), at_page_end((index.size, cols))
        src[...] = rng.standard_normal(src.shape)
        assert lib.mlpf_sgather(pointer(src), 20, cols, cols, pointer(index, "int64_t *"),
                                index.size, pointer(out)) == 0
        assert np.array_equal(out, src[index]), (kernel, cols)
        capacity = lib.mlpf_packed_b_floats(index.size, cols)
        spare = np.full(capacity + 16, np.nan, np.float32)
        packed = spare[(-spare.ctypes.data % 64) // 4:][:capacity]
        out[...] = 0.0
        assert lib.mlpf_sgather_packed(pointer(src), 20, cols, cols, pointer(index, "int64_t *"),
                                       index.size, pointer(out), pointer(packed), capacity) == 0
        assert np.array_equal(out, src[index]), (kernel, cols)
        w = rng.standard_normal((3, cols)).astype(np.float32)
        c = np.full((index.size, 3), np.nan, np.float32)
        assert lib.mlpf_sgemm_packed_a(1, index.size, 3, cols, 1.0, pointer(packed), pointer(w),
                                       cols, 0.0, pointer(c), 3, ffi.NULL, 0) == 0
        want = src[index].astype(np.float64) @ w.T.astype(np.float64)
        assert np.abs(c - want).max() <= 1e-5 * cols, (kernel, cols)
print("ok")
"""


def test_gather_reads_nothing_past_the_source():
    """The source ends right before an unreadable page and the gathered rows include its
    last row, in every group of rows, at widths below, at and across each layout's runs
    (8, 16, 32 floats): a gather (plain or packed) that copies a whole run past a row's
    end crashes the child. The rows and a GEMM on the packed batch against float64."""
    run_guarded(_GATHER_GUARD_SCRIPT)


def test_narrow_backward_squares_cover_every_threads_columns(threads, rng):
    """mlpf_snarrow_backward's *squares with the columns of dw shared between threads
    (rows k above pass_min_parallel_asleep: two shares on 2 threads, awake or not):
    the float64 sum of the squares of dw and db, and NaN when only the last column of
    h, in the second thread's share, is NaN (the finiteness check of the step)."""
    ffi, lib = c_lib()
    rows, n, k = 1040, 10, 1030
    dz = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    h = rng.uniform(0, 1, (rows, k)).astype(np.float32)
    for bad in (False, True):
        if bad:
            h[rows // 2, k - 1] = np.nan
        dh, dw = np.full((rows, k), np.nan, np.float32), np.full((n, k), np.nan, np.float32)
        db, squares = np.full(n, np.nan, np.float32), np.full(1, np.nan)
        assert lib.mlpf_snarrow_backward(rows, n, k, floats(ffi, dz), n, floats(ffi, w), k,
                                         floats(ffi, h), k, floats(ffi, dh), k, floats(ffi, dw),
                                         k, floats(ffi, db), 2,
                                         ffi.from_buffer("double[]", squares)) == 0
        if bad:
            assert not np.isfinite(squares[0])
            continue
        want_dw = dz.astype(np.float64).T @ h.astype(np.float64)
        want_db = dz.astype(np.float64).sum(0)
        assert_close(dw, want_dw, tol=(2e-6 * rows, 1e-5 * rows ** 0.5), what="dw")
        exact = (want_dw ** 2).sum() + (want_db ** 2).sum()
        assert squares[0] == pytest.approx(exact, rel=1e-5)


def test_the_compiled_steps_calls_pass_every_argument_to_c(rng):
    """kernels/_c_calls, which the compiled step calls C through (by address, from Numba),
    against float64 NumPy and the references: the sum of squares of x whose only NaN is
    its last element; the gather of rows that include the source's last one; dropout at
    a step above 2^32 (both words), its mask stored; SGD (Nesterov, first step on a NaN
    buffer) and Adam with betas of their own, two steps."""
    from mlpfast.kernels import _c_calls, dropout
    address = _c_calls.c_addresses()
    x = rng.standard_normal(1001).astype(np.float32)
    want = float((x.astype(np.float64) ** 2).sum())
    assert _c_calls.sum_squares(address["mlpf_ssum_squares"], x) == pytest.approx(want, rel=1e-5)
    x[-1] = np.nan
    assert np.isnan(_c_calls.sum_squares(address["mlpf_ssum_squares"], x))

    src = rng.standard_normal((50, 13)).astype(np.float32)
    index = np.array([49, 0, 49, 7, 48], np.int64)
    out = np.full((5, 13), np.nan, np.float32)
    assert _c_calls.gather(address["mlpf_sgather"], src, index, out) == 0
    assert np.array_equal(out, src[index])

    seed, step, layer, p = 2 ** 40 + 3, 2 ** 33 + 7, 5, 0.3
    threshold, key_lo, key_hi, layer_word, _, _ = dropout.stream(p, seed, 0, layer)
    drop = np.array([threshold, key_lo, key_hi, layer_word, 0, 1], np.uint64)
    x = rng.standard_normal((37, 29)).astype(np.float32)
    want, want_keep = dropout.forward_ref(x, p, seed, step, layer)
    out, keep = np.full_like(x, np.nan), np.full(x.shape, 7, np.uint8)
    assert _c_calls.dropout(address["mlpf_sdropout"], x, out, keep, drop, np.uint64(step),
                            dropout.scale_for(p, np.float32)) == 0
    assert np.array_equal(keep, want_keep) and np.array_equal(out, want)

    n = 1001
    p32 = rng.standard_normal(n).astype(np.float32)
    q32, buf, m, v = p32.copy(), np.full(n, np.nan, np.float32), np.zeros(n, np.float32), \
        np.zeros(n, np.float32)
    p64, q64, buf64, m64, v64 = p32.astype(np.float64), p32.astype(np.float64), np.zeros(n), \
        np.zeros(n), np.zeros(n)
    lr, beta1, beta2, eps, wd = 0.01, 0.8, 0.99, 1e-6, 0.01
    for t in (1, 2):
        g = rng.standard_normal(n).astype(np.float32)
        assert _c_calls.sgd(address["mlpf_ssgd"], q32, g, buf, lr, 0.9, True, wd, t == 1) == 0
        optim.sgd_ref(q64, g.astype(np.float64), buf64, lr=lr, momentum=0.9, nesterov=True,
                      weight_decay=wd, first_step=t == 1)
        assert _c_calls.adam(address["mlpf_sadam"], p32, g, m, v, lr / (1.0 - beta1 ** t), beta1,
                             beta2, 1.0 / np.sqrt(1.0 - beta2 ** t), eps, wd, 1.0) == 0
        optim.adam_ref(p64, g.astype(np.float64), m64, v64, step=t, lr=lr, beta1=beta1,
                       beta2=beta2, eps=eps, weight_decay=wd)
    for got, expected, what in [(q32, q64, "sgd p"), (buf, buf64, "sgd buf"), (p32, p64, "adam p"),
                                (m, m64, "adam m"), (v, v64, "adam v")]:
        assert_close(got, expected, np.float32, what=what)


# --- The moving shares of the passes (passes.c: moving_shares_init, take_chunk) ------------
# A driver that includes passes.c (its static scheduling functions) runs one job's takers
# on one thread in drawn orders: a taker alone, or all of them with each but one stopping
# for good after a drawn count (a thread the machine holds up), for 1 to 300 threads (the
# job runs on at most MLPF_POOL_MAX_THREADS), sizes from 0 to past pass_min_parallel_asleep
# and chunks of whole items or of 16; then the pool's threads (2 to 7, racing) take them.
_MOVING_SHARES_DRIVER = r"""
#include "passes.c"                   /* for its static moving_shares_init and take_chunk */
#include <stdio.h>
#include <stdlib.h>

enum { MOST = MLPF_POOL_MAX_THREADS * CHUNKS_PER_SHARE };
static struct { moving_shares s; int64_t guard[64]; } call;    /* guard: right after next[] */
static int64_t lo_at[MOST + 1], hi_at[MOST + 1], order[MOST + 1], share_of[MOST + 1];
static int taker_at[MOST + 1], failures;

static int fail(const char *what, int64_t n, int threads, int64_t multiple)
{
    if (failures++ < 20)
        printf("wrong: %s (n %lld, %d threads, multiple %lld)\n", what, (long long)n, threads,
               (long long)multiple);
    return -1;
}

""" + C_DRAW + r"""
static int by_lo(const void *x, const void *y)
{
    const int64_t a = lo_at[*(const int64_t *)x], b = lo_at[*(const int64_t *)y];
    return (a > b) - (a < b);
}

/* One job's takers 0..T-1 (T: `threads`, at most the pool's MLPF_POOL_MAX_THREADS) on one
 * thread, in an order drawn from `seed`: taker `runner` goes on until take_chunk says none
 * is left; the others never start when `alone` (the pool ran the job on fewer threads, or
 * they were descheduled throughout), else each stops for good after a drawn count. */
static int schedule(int64_t n, int threads, int64_t multiple, int runner, int alone,
                    uint64_t seed)
{
    const int T = threads < MLPF_POOL_MAX_THREADS ? threads : MLPF_POOL_MAX_THREADS;
    const int64_t most = (int64_t)T * CHUNKS_PER_SHARE;
    for (int i = 0; i < 64; i++) call.guard[i] = -7;
    moving_shares_init(&call.s, n, threads, multiple);
    for (int i = 0; i < 64; i++)
        if (call.guard[i] != -7) return fail("init wrote past next[]", n, threads, multiple);
    static int visited[MLPF_POOL_MAX_THREADS], going[MLPF_POOL_MAX_THREADS];
    static int step[MLPF_POOL_MAX_THREADS];
    static int64_t budget[MLPF_POOL_MAX_THREADS], last[MLPF_POOL_MAX_THREADS];
    int active = 0;
    for (int t = 0; t < T; t++) {
        visited[t] = 0;
        going[t] = !alone || t == runner;
        budget[t] = t == runner ? -1 : (int64_t)(draw(&seed) % (2 * CHUNKS_PER_SHARE + 1));
        active += going[t];
    }
    int64_t count = 0, lo, hi;
    while (active) {
        int t = 0;
        for (int64_t pick = (int64_t)(draw(&seed) % (uint64_t)active);; t++)
            if (going[t] && pick-- == 0) break;
        if (budget[t] == 0 || !take_chunk(&call.s, t, &visited[t], &lo, &hi)) {
            going[t] = 0, active--;
            continue;
        }
        budget[t]--;
        if (count > most) return fail("more than 8 chunks a thread", n, threads, multiple);
        lo_at[count] = lo, hi_at[count] = hi, taker_at[count] = t, order[count] = count;
        count++;
    }
    /* The chunks tile 0..n once, each from a multiple of `multiple` on, all of one length
     * c but the last (whole or not): the least multiple of `multiple` that makes at most
     * CHUNKS_PER_SHARE chunks a thread (one chunk: c unseen, n shown). */
    qsort(order, (size_t)count, sizeof *order, by_lo);
    const int64_t c = count > 1 ? hi_at[order[0]] - lo_at[order[0]] : n;
    for (int64_t j = 0, end = 0; j < count; end = hi_at[order[j]], j++) {
        lo = lo_at[order[j]], hi = hi_at[order[j]];
        if (lo != end || hi <= lo || hi > n || lo % multiple || hi - lo > c
            || (hi - lo < c && j + 1 < count))
            return fail("chunks do not tile the items once", n, threads, multiple);
    }
    if (count ? hi_at[order[count - 1]] != n : n != 0)
        return fail("items left over", n, threads, multiple);
    const int64_t shorter = c - multiple;          /* would it make too many chunks? */
    if (count > most
        || (count > 1 && (c % multiple || (shorter && (n + shorter - 1) / shorter <= most))))
        return fail("chunks not the least multiple for 8 a thread", n, threads, multiple);
    /* Share t: the t-th of T runs of the chunks in order, as a static split gives them (from
     * count t / T on). A taker takes from its own share first, then from the others after
     * it in turn (t + 1, t + 2, ... mod T); each share's chunks go in order, whoever takes
     * them. */
    for (int64_t j = 0, t = 0; j < count; j++) {
        while (j >= count * (t + 1) / T) t++;
        share_of[order[j]] = t;
    }
    for (int t = 0; t < T; t++) last[t] = -1, step[t] = 0;
    for (int64_t i = 0; i < count; i++) {
        const int taker = taker_at[i], share = (int)share_of[i], at = (share - taker + T) % T;
        if (lo_at[i] < last[share]) return fail("a share out of order", n, threads, multiple);
        if (at < step[taker])
            return fail("shares not taken own first, then in turn", n, threads, multiple);
        last[share] = lo_at[i], step[taker] = at;
    }
    return 0;
}

/* The pool's threads take the chunks, racing: every item counted once. */
typedef struct { moving_shares s; _Atomic unsigned char *seen; } counted;

static void count_task(void *arg, int index, int threads)
{
    counted *c = arg;
    (void)threads;
    int64_t lo, hi;
    for (int visited = 0; take_chunk(&c->s, index, &visited, &lo, &hi);)
        for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&c->seen[i], 1);
}

int main(void)
{
    static const int64_t sizes[] = {0, 1, 15, 16, 17, 100, 255, 1000, 1025, 4097, 32805,
                                    100003, (1 << 20) + 37};
    static const int thread_counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 13, 64, 255, 256, 300};
    enum { SIZES = sizeof sizes / sizeof *sizes };
    enum { COUNTS = sizeof thread_counts / sizeof *thread_counts };
    for (int a = 0; a < SIZES; a++)
        for (int b = 0; b < COUNTS; b++)
            for (int64_t multiple = 1; multiple <= 16; multiple += 15) {
                const int threads = thread_counts[b];
                const int T = threads < MLPF_POOL_MAX_THREADS ? threads : MLPF_POOL_MAX_THREADS;
                const int runners[] = {0, 1 % T, T / 2, T - 1};
                for (int r = 0; r < 4; r++)
                    for (int seed = 0; seed < 4; seed++)
                        if (schedule(sizes[a], threads, multiple, runners[r], seed == 0,
                                     (uint64_t)(seed * 7919 + a)))
                            r = 4, seed = 4;
            }
    for (int threads = 2; threads <= 7; threads++)
        for (int a = 0; a < SIZES; a++) {
            counted c = {.seen = calloc((size_t)sizes[a] + 1, 1)};
            moving_shares_init(&c.s, sizes[a], threads, 16);
            mlpf_pool_run(threads, count_task, &c);
            for (int64_t i = 0; i < sizes[a]; i++)
                if (c.seen[i] != 1) {
                    fail("pool threads took an item other than once", sizes[a], threads, 16);
                    break;
                }
            free((void *)c.seen);
        }
    puts(failures ? "wrong" : "ok");
    return failures != 0;
}
"""


def test_moving_shares_take_each_chunk_once_own_share_first_then_the_others_in_turn(tmp_path):
    """The chunks tile the items once: each the least multiple of `multiple` that makes at
    most CHUNKS_PER_SHARE chunks a thread, whoever stops; thread t's share is the t-th run
    of them, taken in order from its own share first, then from the shares after it in
    turn; a request for more threads than the pool runs writes nothing past the shares'
    counters; and the pool's threads count each item once."""
    from test_cgemm import run_portable_driver
    run_portable_driver(tmp_path, _MOVING_SHARES_DRIVER, includes="passes.c")
