"""Block sizes and thresholds of the CPU kernels, one config per ISA.

The one source for both GEMMs: csrc/build_cgemm.py executes this file (it imports nothing)
and compiles every value into the C library as an ``MLPF_CFG_<ISA>_<KEY>`` macro; the Numba
GEMM (kernels/gemm.py) and the Numba passes read the same dicts. ``mlpf_config_value``
(csrc/gemm.h) reads a value back from the C library, and tests/test_cpu_config.py checks
that every value matches.

GEMM loop nest (csrc/gemm.c, kernels/gemm.py), outermost first:
    mc rows of op(A)     packed A block   mc x kc   in L3 (per thread)
    kc depth             (k is split evenly, each block near kc, rounded up to 8)
    nc columns of op(B)  packed B block   kc x nc   in L2 (fewer columns where kc x nc
                                                    would pass ``b_block_bytes``)
    mr rows              A micro-panel    mr x kc   in L1 (L2 at avx512's) for the inner loop
    nr columns           B micro-panel    kc x nr   streamed from L2 into the micro-kernel
The micro-kernel holds an mr x nr tile of C in registers; nr is two vectors of
``vector_bytes`` (float32: nr = 2 * vector_bytes / 4).

Shared schedule: when the threads split only columns (m <= mc) and op(A) packed for all of
k takes at most ``max_shared_a_bytes``, threads take column chunks from a shared counter:
``shared_chunks_l2`` chunks per thread while that packed op(A) fits in
``shared_a_l2_bytes``, else ``shared_chunks_l3`` (more where a chunk would be wider than a
B block, so that the count is a multiple of the threads; the panels spread evenly).

Thresholds (why each value: bench/README.md, "CPU thresholds"):
    min_parallel_fmas          a GEMM below this many multiply-adds runs on one thread ...
    min_parallel_fmas_awake    ... or below this one when the pool's workers still spin
    pass_min_parallel          a pass over a flat buffer (Adam, SGD, sum of squares,
    pass_min_parallel_asleep   gather), or a narrow product over its A, below this many
                               elements runs on one thread (the second value when the
                               workers sleep)
    parallel_min_elements      a Numba parallel kernel touching fewer elements runs on one
                               thread (MLPFAST_PARALLEL_MIN_ELEMENTS overrides it)
    stream_min_bytes           Numba softmax / cross-entropy outputs of this size and more
                               are written with streaming stores
    prefetch_min_bytes         Numba elementwise kernels prefetch arrays of this size and more
"""

THRESHOLDS = {
    "min_parallel_fmas": 1 << 22,
    "min_parallel_fmas_awake": 1 << 18,
    "pass_min_parallel": 1 << 15,
    "pass_min_parallel_asleep": 1 << 20,
    "parallel_min_elements": 1 << 21,
    "stream_min_bytes": 16 << 20,
    "prefetch_min_bytes": 4 << 20,
}

SHARED_SCHEDULE = {
    "max_shared_a_bytes": 32 << 20,
    "shared_a_l2_bytes": 1 << 20,
    "shared_chunks_l2": 4,
    "shared_chunks_l3": 2,
}

CONFIGS = {
    # Sapphire/Emerald Rapids, Zen 4/5, Skylake-X: k up to 1,535 in one block, so each tile
    # of C is stored once, not re-read and added to per k block; the A micro-panel (12 x
    # 1024 x 4 B = 48 KiB) and the B micro-panel (128 KiB) stream from L2 together. Faster
    # than kc = 384 at the wide MLP's shapes and square ones, as fast at the small MLP's
    # (bench/README.md, "Block depth kc"). A B block of at most 1 MiB (256 columns at kc =
    # 1024) stays in a 2 MiB L2 while every A micro-panel reads it: at k >= 784, 5-17%
    # faster on one Xeon thread than blocks of up to 768 columns (2-3 MiB) that spill out
    # of L2 (bench/README.md, "B block width")
    "avx512": {"mr": 12, "nr": 32, "vector_bytes": 64, "mc": 3072, "kc": 1024, "nc": 768,
               "b_block_bytes": 1 << 20, **SHARED_SCHEDULE, **THRESHOLDS},
    # BLIS's Haswell config transposed: A micro-panel 6 KiB in L1, B block 256 KiB in L2
    "avx2": {"mr": 6, "nr": 16, "vector_bytes": 32, "mc": 3072, "kc": 256, "nc": 256,
             "b_block_bytes": 1 << 20, **SHARED_SCHEDULE, **THRESHOLDS},
    # any CPU: moderate blocks for small caches (A micro-panel 1 KiB, B block 256 KiB)
    "portable": {"mr": 4, "nr": 8, "vector_bytes": 16, "mc": 1024, "kc": 256, "nc": 256,
                 "b_block_bytes": 1 << 20, **SHARED_SCHEDULE, **THRESHOLDS},
}

FAMILIES = tuple(CONFIGS)       # best first

# The bf16 GEMM (csrc/gemm_bf16.c, mlpf_sbgemm): its own kernels, the same loop nest with
# k packed in pairs (AVX512-BF16) or fours (AMX). A packed A block holds all of k, at most
# max_a_block_bytes (fewer rows when k is large), with 4 column chunks per thread while it
# fits in a_block_l2_bytes, else 2; a B chunk, all of k too, keeps within b_chunk_bytes.
BF16_BLOCKING = {
    "max_a_block_bytes": 32 << 20,
    "a_block_l2_bytes": 1 << 20,
    "b_chunk_bytes": 1 << 20,
}

BF16_CONFIGS = {
    # AMX tiles: A micro-panel 32 x 256 x 2 B = 16 KiB in L1; kc measured against 128,
    # 384, 512 and 1024 (bench/README.md, "AMX block depth kc")
    "amx_bf16": {"mr": 32, "nr": 32, "mc": 3072, "kc": 256, "nc": 512, **BF16_BLOCKING},
    # vdpbf16ps: A micro-panel 12 x 768 x 2 B = 18 KiB in L1
    "avx512_bf16": {"mr": 12, "nr": 32, "mc": 3072, "kc": 768, "nc": 768, **BF16_BLOCKING},
    # bf16 emulated in float32
    "portable_bf16": {"mr": 4, "nr": 16, "mc": 1024, "kc": 256, "nc": 256, **BF16_BLOCKING},
}


def c_macros():
    """[(name, value)]: every value as the MLPF_CFG_<FAMILY>_<KEY> macro of the C build."""
    return [(f"MLPF_CFG_{family.upper()}_{key.upper()}", str(value))
            for family, config in {**CONFIGS, **BF16_CONFIGS}.items()
            for key, value in config.items()]
