/* A small persistent pthread pool for the C GEMM's fork-join calls.
 *
 * mlpf_pool_run(n, task, arg) runs task(arg, 0..n-1) on n threads (the caller is thread
 * 0) and returns when all are done. Why our own pool rather than OpenMP: Numba's
 * parallel kernels in the same process may run on libgomp ("omp" threading layer) or on
 * TBB / workqueue. A second OpenMP runtime (or a second user of the same one, with its
 * own nesting and wait policy) is where processes deadlock or oversubscribe; a private
 * pool of n - 1 threads that sleep between calls shares nothing with Numba, so each
 * side uses the count from mlpfast.set_num_threads and they take turns on the cores.
 */
#ifndef MLPF_THREADPOOL_H
#define MLPF_THREADPOOL_H

typedef void (*mlpf_task)(void *arg, int thread_index, int num_threads);

enum { MLPF_POOL_MAX_THREADS = 256 };   /* the most threads one call runs on */

/* Runs task on n threads; n is reduced to 1 when the pool is busy with another caller
 * (the functions may be called from several Python threads at once) or cannot start
 * threads. Returns the number of threads used. `name` labels the job in a trace
 * (mlpf_pool_trace_start in gemm.h); mlpf_pool_run passes the task function's name. */
int mlpf_pool_run_named(int n, mlpf_task task, void *arg, const char *name);
#define mlpf_pool_run(n, task, arg) mlpf_pool_run_named((n), (task), (arg), #task)

/* Nonzero while every worker is awake (spinning after a job, or working): a call made
 * now starts on all threads within a microsecond instead of after a futex wake-up. */
int mlpf_pool_awake(void);

/* Wakes the workers up to thread n - 1 (starting them if need be) with an empty job, unless
 * all are awake already; they then spin as after any job. Returns 1 when it ran that job. */
int mlpf_pool_wake(int n);

#endif
