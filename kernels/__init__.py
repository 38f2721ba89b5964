"""mlpfast.kernels: pure functions on arrays, one module per op family.

Each module holds the NumPy reference of its ops, the fast variants, and a
``VARIANTS`` registry that tests and benchmarks iterate over:

    gemm         matrix product C = alpha*op(A)@op(B) + beta*C (+ fused bias/activation)
    gemm_bf16    the same with bf16 products and float32 sums (AMX, AVX512-BF16), f'(Y) fused
    activations  identity, sigmoid, tanh, relu, leaky_relu, gelu (erf, tanh), softmax
    losses       softmax cross-entropy (+ gradient), mean squared error
    optim        SGD (momentum, Nesterov, weight decay), Adam, AdamW updates, max-norm
    data         batch gather (rows of x and y by an index)
    batchnorm    BatchNorm1d forward (training, eval) and backward
    dropout      inverted dropout with a counter-based (Philox) mask, forward and backward

The engine never imports these modules directly: it asks its backend
(``mlpfast.backend``), whose tables are built from these registries.
"""
# Numba settings (512-bit vectors, threading layer) must precede any Numba compilation.
from . import _numba_config  # noqa: F401,E402
