"""Batch gather (rows of x by a shuffled index into a preallocated buffer), GB/s."""
import numpy as np
import pytest
from _common import run_benchmark

from mlpfast.kernels import data


@pytest.mark.parametrize("src_dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("batch", [256, 16384])
@pytest.mark.parametrize("variant", list(data.VARIANTS))
def test_gather(benchmark, variant, batch, src_dtype):
    rng = np.random.default_rng(0)
    src = (rng.random((60000, 784)) * 255).astype(src_dtype)        # MNIST-sized
    index = rng.permutation(60000)[:batch]
    out = np.empty((batch, 784), np.float32)
    gather = data.VARIANTS[variant]["gather"]
    gather(src, index, out)
    assert np.array_equal(out, src[index].astype(np.float32))
    run_benchmark(benchmark, lambda: gather(src, index, out),
                  nbytes=batch * 784 * (src.itemsize + 4), shape=f"{batch}x784",
                  variant=variant, src=np.dtype(src_dtype).name)
