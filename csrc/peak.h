/* FMA-throughput probe (peak.c): measured fp32 peak of this machine. */
#ifndef MLPF_PEAK_H
#define MLPF_PEAK_H

#define MLPF_PEAK_MAX_THREADS 256

/* GFLOP/s of fp32 FMAs summed over `threads` threads, each running `milliseconds`.
 * Returns -1 on bad arguments, -2 when a thread could not be started. */
double mlpf_fma_peak_gflops(int threads, int milliseconds);

/* The ISA the probe runs: "avx512", "avx2" or "portable". */
const char *mlpf_fma_peak_isa(void);

#endif
