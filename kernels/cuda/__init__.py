"""mlpfast.kernels.cuda: Numba CUDA kernels, one module per op family, mirroring kernels/.

    gemm         tiled GEMM with register blocking, every transpose case, fused epilogue
    linear       linear_forward (GEMM + bias + activation in one kernel), bias_grad
    activations  every activation forward and backward (device functions the GEMM reuses)
    losses       softmax cross-entropy (+ gradient, + correct count), mean squared error
    optim        SGD and Adam/AdamW steps over a flat parameter buffer, max-norm per row
    data         batch gather from a device-resident dataset
    batchnorm    BatchNorm1d forward (training, eval) and backward
    dropout      inverted dropout, the same Philox mask as the CPU's

Each module has a ``VARIANTS`` registry with the entry ``"cuda"``, in the shape of its CPU
twin, and is checked against the same NumPy references (tests/test_cuda_sim.py, and at real
sizes on a GPU by bench/gpu_check.py). Importing these modules needs numba-cuda (the ``cuda``
extra); ``import mlpfast`` does not.
"""
