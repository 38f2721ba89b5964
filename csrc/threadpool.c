/* The persistent pthread pool behind mlpf_pool_run (see threadpool.h).
 *
 * Workers wait for a new job generation: first spinning for 200 microseconds (back-to-
 * back GEMMs of a training step then start without a futex wake-up), then asleep on a
 * condition variable, so an idle pool costs no CPU time that Numba's threads could use.
 * One caller at a time owns the pool; a concurrent caller runs its call on its own.
 * After fork() the child has none of the parent's workers; it starts its own on demand.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include "gemm.h"
#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
/* Every task runs with denormal floats flushed to zero (MXCSR flush-to-zero and
 * denormals-are-zero, as XLA runs its CPU code): on x86 an operation on a denormal
 * (|x| < 1.2e-38 in float32) takes a microcode assist of 100+ cycles. They do occur in
 * training: Adam's first moment of a weight whose gradient stays 0 (a pixel that is 0 in
 * every image) shrinks by beta1 = 0.9 per step and is denormal after ~800 steps, which
 * slowed training steps from the second epoch on (bench/README.md, "Thread pool"). */
static unsigned flush_denormals(void)
{
    const unsigned before = _mm_getcsr();
    _mm_setcsr(before | 0x8040);                    /* FTZ (bit 15) | DAZ (bit 6) */
    return before;
}
static void restore_denormals(unsigned before) { _mm_setcsr(before); }
#else
#define cpu_relax() ((void)0)
static unsigned flush_denormals(void) { return 0; }
static void restore_denormals(unsigned before) { (void)before; }
#endif

/* task(arg, index, n) in the caller's thread, which gets its floating-point mode back. */
static void run_in_caller(mlpf_task task, void *arg, int index, int n)
{
    const unsigned before = flush_denormals();
    task(arg, index, n);
    restore_denormals(before);
}

enum { JOIN_SPINS = 2000 };                 /* pauses before the caller yields */
/* How long an idle worker spins before it sleeps: longer than the Python between two
 * GEMM calls of a training step, short next to the Numba kernels in between, whose threads
 * it would otherwise keep from the cores. */
static const double SPIN_MICROSECONDS = 200.0;
/* How often a spinning worker yields its CPU. The kernel may wake a sleeping worker on the
 * caller's CPU; spinning there without yielding, it kept the caller from running for all
 * of SPIN_MICROSECONDS, after which it slept again (bench/README.md, "Thread pool"). */
static const double YIELD_MICROSECONDS = 10.0;

static double now_microseconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e6 + now.tv_nsec * 1e-3;
}

static struct {
    pthread_mutex_t owner;          /* held by the caller running a job */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    atomic_int num_workers;         /* workers started (thread indices 1..num_workers);
                                       written under owner, read unlocked (pool_awake) */
    unsigned long start_generation[MLPF_POOL_MAX_THREADS];  /* generation when each was started */
    atomic_ulong generation;        /* bumped once per job */
    mlpf_task task;                 /* the current job, valid while remaining > 0 */
    void *arg;
    int job_threads;
    atomic_int remaining;           /* workers yet to finish the current job */
    atomic_int asleep;              /* workers waiting on the condition variable */
    int job_traced;                 /* the current job is traced: workers note done_us */
    double done_us[MLPF_POOL_MAX_THREADS];  /* when each worker finished its share */
} pool = {.owner = PTHREAD_MUTEX_INITIALIZER, .sleep_lock = PTHREAD_MUTEX_INITIALIZER,
        .wake = PTHREAD_COND_INITIALIZER};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void *worker_main(void *index_ptr)
{
    const int index = (int)(intptr_t)index_ptr;
    unsigned long seen = pool.start_generation[index];  /* jobs before the worker existed */
    flush_denormals();                                  /* for every task of this thread */
    for (;;) {
        double now = now_microseconds(), yield_at = now + YIELD_MICROSECONDS;
        const double spin_until = now + SPIN_MICROSECONDS;
        while (atomic_load(&pool.generation) == seen && (now = now_microseconds()) < spin_until) {
            for (int spin = 0; spin < 16; spin++) cpu_relax();
            if (now >= yield_at) {              /* a caller waiting for this CPU gets it */
                sched_yield();
                yield_at = now + YIELD_MICROSECONDS;
            }
        }
        if (atomic_load(&pool.generation) == seen) {
            pthread_mutex_lock(&pool.sleep_lock);
            atomic_fetch_add(&pool.asleep, 1);
            while (atomic_load(&pool.generation) == seen)
                pthread_cond_wait(&pool.wake, &pool.sleep_lock);
            atomic_fetch_sub(&pool.asleep, 1);
            pthread_mutex_unlock(&pool.sleep_lock);
        }
        seen = atomic_load(&pool.generation);
        if (index < pool.job_threads) {
            pool.task(pool.arg, index, pool.job_threads);
            if (pool.job_traced) pool.done_us[index] = now_microseconds();
        }
        atomic_fetch_sub(&pool.remaining, 1);   /* every worker answers every job, so */
    }                                           /* none can lag into the next one     */
    return NULL;
}

static void reset_in_child(void)
{
    pthread_mutex_init(&pool.owner, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.num_workers = 0;
    atomic_store(&pool.asleep, 0);
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_in_child); }

/* Starts workers up to index n - 1; returns how many threads (with the caller) exist. */
static int grow_pool(int n)
{
    pthread_once(&atfork_once, register_atfork);
    while (pool.num_workers < n - 1) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.start_generation[pool.num_workers + 1] = atomic_load(&pool.generation);
        int failed = pthread_create(&thread, &attr, worker_main,
                                    (void *)(intptr_t)(pool.num_workers + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool.num_workers++;
    }
    return pool.num_workers + 1;
}

int mlpf_pool_awake(void)
{
    return pool.num_workers > 0 && atomic_load(&pool.asleep) == 0;
}

/* --- the trace of jobs (gemm.h) ----------------------------------------------------------- */

/* A job reads `events` unlocked when it starts (to know whether to time itself) and
 * records itself under the lock, where it finds the trace stopped or restarted if it was
 * meanwhile: it is then left out, never written into freed memory. */
static struct {
    pthread_mutex_t lock;
    _Atomic(mlpf_pool_event *) events;      /* NULL: not tracing */
    int64_t capacity, count;
} trace = {.lock = PTHREAD_MUTEX_INITIALIZER};

int mlpf_pool_trace_start(int64_t capacity)
{
    if (capacity <= 0) return MLPF_ERR_SHAPE;
    if ((uint64_t)capacity > SIZE_MAX / sizeof(mlpf_pool_event)) return MLPF_ERR_NOMEM;
    mlpf_pool_event *events = malloc((size_t)capacity * sizeof *events);
    if (!events) return MLPF_ERR_NOMEM;
    pthread_mutex_lock(&trace.lock);
    free(atomic_load(&trace.events));               /* a running trace starts again */
    trace.capacity = capacity;
    trace.count = 0;
    atomic_store(&trace.events, events);
    pthread_mutex_unlock(&trace.lock);
    return MLPF_OK;
}

int64_t mlpf_pool_trace_stop(mlpf_pool_event *events, int64_t max_events)
{
    pthread_mutex_lock(&trace.lock);
    mlpf_pool_event *recorded = atomic_exchange(&trace.events, NULL);
    const int64_t count = recorded ? trace.count : 0;
    for (int64_t i = 0; events && i < count && i < max_events; i++) events[i] = recorded[i];
    pthread_mutex_unlock(&trace.lock);
    free(recorded);
    return count;
}

/* Records a job that ran on `threads` threads: first/last_done are the other threads'. */
static void record_job(const char *name, int threads, double start, double caller_done,
                       double first_done, double last_done)
{
    const double end = now_microseconds();
    pthread_mutex_lock(&trace.lock);
    mlpf_pool_event *events = atomic_load(&trace.events);
    if (events && trace.count < trace.capacity)
        events[trace.count++] = (mlpf_pool_event){name, threads, start, caller_done,
                                                  first_done, last_done, end};
    pthread_mutex_unlock(&trace.lock);
}

static void run_alone(mlpf_task task, void *arg, const char *name, double start)
{
    run_in_caller(task, arg, 0, 1);
    if (start >= 0) {
        const double done = now_microseconds();
        record_job(name, 1, start, done, done, done);
    }
}

static void empty_wake_task(void *arg, int index, int threads) { (void)arg, (void)index, (void)threads; }

int mlpf_pool_wake(int n)
{
    if (n <= 1 || mlpf_pool_awake()) return 0;
    return mlpf_pool_run(n, empty_wake_task, NULL) > 1;
}

int mlpf_pool_run_named(int n, mlpf_task task, void *arg, const char *name)
{
    const double start = atomic_load_explicit(&trace.events, memory_order_relaxed)
                         ? now_microseconds() : -1.0;                /* < 0: not traced */
    if (n > MLPF_POOL_MAX_THREADS) n = MLPF_POOL_MAX_THREADS;
    if (n <= 1 || pthread_mutex_trylock(&pool.owner) != 0) {
        run_alone(task, arg, name, start);
        return 1;
    }
    int available = grow_pool(n);
    if (n > available) n = available;
    if (n <= 1) {
        pthread_mutex_unlock(&pool.owner);
        run_alone(task, arg, name, start);
        return 1;
    }
    pool.task = task;
    pool.arg = arg;
    pool.job_threads = n;
    pool.job_traced = start >= 0;
    atomic_store(&pool.remaining, pool.num_workers);
    pthread_mutex_lock(&pool.sleep_lock);
    atomic_fetch_add(&pool.generation, 1);      /* publishes task/arg/job_threads */
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.sleep_lock);

    run_in_caller(task, arg, 0, n);
    const double caller_done = start >= 0 ? now_microseconds() : 0.0;
    for (long spin = 0; atomic_load(&pool.remaining) > 0; spin++) {
        if (spin < JOIN_SPINS) cpu_relax(); else sched_yield();   /* let a late worker run */
    }
    if (start >= 0) {                   /* the workers' done_us, published by remaining */
        double first = pool.done_us[1], last = pool.done_us[1];
        for (int i = 2; i < n; i++) {
            first = pool.done_us[i] < first ? pool.done_us[i] : first;
            last = pool.done_us[i] > last ? pool.done_us[i] : last;
        }
        record_job(name, n, start, caller_done, first, last);
    }
    pthread_mutex_unlock(&pool.owner);
    return n;
}
