/* FMA-throughput probe: the fp32 peak of this machine, measured rather than looked up.
 *
 * Each thread runs CHAINS independent chains acc = acc * a + b on full vector registers,
 * enough chains to cover FMA latency (4 cycles) x FMA ports (2), so the loop is bound by
 * FMA throughput alone. flops per iteration = CHAINS * lanes * 2 (a multiply and an add).
 * The widest ISA this CPU supports is picked at run time: AVX-512, AVX2+FMA or plain C.
 *
 * Used by `mlpfast bench` to put "X% of peak" next to every GFLOP/s figure.
 */
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "peak.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MLPF_X86 1
#endif

#define CHAINS 12
#define CHUNK 100000L /* iterations between clock reads */

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#ifdef MLPF_X86
#define FMA12(fma, acc, a, b)                                                   \
    do {                                                                        \
        acc##0 = fma(acc##0, a, b); acc##1 = fma(acc##1, a, b);                 \
        acc##2 = fma(acc##2, a, b); acc##3 = fma(acc##3, a, b);                 \
        acc##4 = fma(acc##4, a, b); acc##5 = fma(acc##5, a, b);                 \
        acc##6 = fma(acc##6, a, b); acc##7 = fma(acc##7, a, b);                 \
        acc##8 = fma(acc##8, a, b); acc##9 = fma(acc##9, a, b);                 \
        acc##10 = fma(acc##10, a, b); acc##11 = fma(acc##11, a, b);             \
    } while (0)

/* Runs CHUNK iterations `chunks` times; returns a value depending on every lane so the
 * compiler cannot drop the work. */
__attribute__((target("avx512f"))) static float chains_avx512(long chunks)
{
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    __m512 v0 = _mm512_set1_ps(0.f), v1 = _mm512_set1_ps(1.f), v2 = _mm512_set1_ps(2.f),
           v3 = _mm512_set1_ps(3.f), v4 = _mm512_set1_ps(4.f), v5 = _mm512_set1_ps(5.f),
           v6 = _mm512_set1_ps(6.f), v7 = _mm512_set1_ps(7.f), v8 = _mm512_set1_ps(8.f),
           v9 = _mm512_set1_ps(9.f), v10 = _mm512_set1_ps(10.f), v11 = _mm512_set1_ps(11.f);
    for (long i = 0; i < chunks * CHUNK; ++i)
        FMA12(_mm512_fmadd_ps, v, a, b);
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(v0, v1), _mm512_add_ps(v2, v3)),
                             _mm512_add_ps(_mm512_add_ps(v4, v5), _mm512_add_ps(v6, v7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(v8, v9), _mm512_add_ps(v10, v11)));
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float chains_avx2(long chunks)
{
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    __m256 v0 = _mm256_set1_ps(0.f), v1 = _mm256_set1_ps(1.f), v2 = _mm256_set1_ps(2.f),
           v3 = _mm256_set1_ps(3.f), v4 = _mm256_set1_ps(4.f), v5 = _mm256_set1_ps(5.f),
           v6 = _mm256_set1_ps(6.f), v7 = _mm256_set1_ps(7.f), v8 = _mm256_set1_ps(8.f),
           v9 = _mm256_set1_ps(9.f), v10 = _mm256_set1_ps(10.f), v11 = _mm256_set1_ps(11.f);
    for (long i = 0; i < chunks * CHUNK; ++i)
        FMA12(_mm256_fmadd_ps, v, a, b);
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)),
                             _mm256_add_ps(_mm256_add_ps(v4, v5), _mm256_add_ps(v6, v7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(v8, v9), _mm256_add_ps(v10, v11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}
#endif

static float chains_portable(long chunks)
{
    float acc[CHAINS];
    for (int j = 0; j < CHAINS; ++j)
        acc[j] = (float)j;
    for (long i = 0; i < chunks * CHUNK; ++i)
        for (int j = 0; j < CHAINS; ++j)
            acc[j] = acc[j] * 0.999999f + 1e-7f;
    float s = 0.f;
    for (int j = 0; j < CHAINS; ++j)
        s += acc[j];
    return s;
}

typedef struct {
    int lanes;                 /* fp32 lanes per vector of the chosen ISA */
    float (*run)(long chunks);
    const char *name;
} isa_t;

static isa_t best_isa(void)
{
#ifdef MLPF_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return (isa_t){16, chains_avx512, "avx512"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return (isa_t){8, chains_avx2, "avx2"};
#endif
    return (isa_t){1, chains_portable, "portable"};
}

typedef struct {
    double seconds_wanted;
    double gflops;             /* out: this thread's rate */
    volatile float sink;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = (worker_t *)arg;
    isa_t isa = best_isa();
    isa.run(1); /* warm-up: wake the core and its vector units to full clock */
    long chunks = 0;
    double start = now_seconds(), elapsed = 0.0;
    do {
        w->sink = isa.run(1);
        ++chunks;
        elapsed = now_seconds() - start;
    } while (elapsed < w->seconds_wanted);
    double flops = (double)chunks * CHUNK * CHAINS * isa.lanes * 2.0;
    w->gflops = flops / elapsed * 1e-9;
    return NULL;
}

double mlpf_fma_peak_gflops(int threads, int milliseconds)
{
    if (threads < 1 || threads > MLPF_PEAK_MAX_THREADS || milliseconds < 1)
        return -1.0;
    pthread_t ids[MLPF_PEAK_MAX_THREADS];
    worker_t work[MLPF_PEAK_MAX_THREADS];
    int started = 0;
    for (int t = 0; t < threads; ++t) {
        work[t].seconds_wanted = milliseconds * 1e-3;
        work[t].gflops = 0.0;
        if (t == 0 || pthread_create(&ids[t], NULL, worker, &work[t]) == 0)
            started = t + 1;
        else
            break;
    }
    worker(&work[0]); /* the calling thread is worker 0 */
    double total = work[0].gflops;
    for (int t = 1; t < started; ++t) {
        pthread_join(ids[t], NULL);
        total += work[t].gflops;
    }
    return started == threads ? total : -2.0;
}

const char *mlpf_fma_peak_isa(void)
{
    return best_isa().name;
}
