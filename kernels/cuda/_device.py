"""What the CUDA kernel modules share: argument checks on device arrays, launch sizes,
and reused device scratch buffers.

Float tensors passed to a CUDA kernel must already live on the device (``numba.cuda``
device arrays, e.g. from ``cuda.to_device``); a NumPy array there is a TypeError, never a
silent copy. Integer index and label arrays come from the host and are copied into a
reused device buffer (see ``ScratchBuffers``).
"""
import numpy as np
from numba import cuda

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def simulator_enabled():
    """True when Numba runs CUDA kernels in its Python simulator (NUMBA_ENABLE_CUDASIM=1)."""
    try:
        from numba.cuda.core import config      # numba-cuda
    except ImportError:
        from numba.core import config           # the CUDA target built into older Numba
    return bool(config.ENABLE_CUDASIM)


# Launch sizes of the elementwise and per-row kernels; grid-stride loops cover the rest.
# The simulator runs one Python thread per CUDA thread, so there launches stay small.
THREADS_PER_BLOCK, MAX_BLOCKS = (32, 4) if simulator_enabled() else (256, 65535)


def probe_kernel(x, out):
    """out = 2 x + 1 (float32, (n,)): the kernel mlpfast.backend compiles and runs once to
    decide whether the GPU is usable."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = 2 * x[i] + 1


def is_device_array(a):
    return hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)


def blocks_for(n, threads=THREADS_PER_BLOCK):
    """Blocks for n work items, one per thread, capped (kernels use grid-stride loops)."""
    return max(1, min(MAX_BLOCKS, -(-n // threads)))


def check_device_float(a, name, ndim=None):
    if not is_device_array(a):
        raise TypeError(f"{name} must be a CUDA device array (numba.cuda.to_device), "
                        f"got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")


def _extent(a):
    """[first byte, last byte + 1) of the memory a device array spans."""
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__  # simulator
    start = end = iface["data"][0]
    strides = iface["strides"] or tuple(int(np.prod(a.shape[i + 1:])) * a.dtype.itemsize
                                        for i in range(a.ndim))
    for size, stride in zip(a.shape, strides):
        if size == 0:
            return start, start
        if stride < 0:
            start += (size - 1) * stride
        else:
            end += (size - 1) * stride
    return start, end + a.dtype.itemsize


def overlaps(a, b):
    a_start, a_end = _extent(a)
    b_start, b_end = _extent(b)
    return a_start < b_end and b_start < a_end and a_start < a_end and b_start < b_end


def check_device_out(out, shape, dtype, name="out", inputs=()):
    """out must be a device array of the given shape/dtype that overlaps no input."""
    if out is None:
        return
    if not is_device_array(out):
        raise TypeError(f"{name} must be a CUDA device array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {out.dtype}")
    for other_name, other in inputs:
        if other is not None and overlaps(out, other):
            raise ValueError(f"{name} must not overlap input {other_name}")


def check_same_device_shape(a, a_name, b, b_name):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{b_name} must have the shape of {a_name} {tuple(a.shape)}, "
                         f"got {tuple(b.shape)}")


def check_host_indices(values, length, bound, name, what):
    """values: a host integer array of shape (length,) in [0, bound)."""
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "iu" or values.ndim != 1:
        raise TypeError(f"{name} must be a 1-D NumPy integer array on the host, got "
                        f"{getattr(values, 'dtype', type(values).__name__)} "
                        f"{getattr(values, 'shape', '')}")
    if length is not None and values.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {values.shape}")
    if values.size and (values.min() < 0 or values.max() >= bound):
        bad = values[(values < 0) | (values >= bound)][0]
        raise ValueError(f"{name} must lie in [0, {bound}) ({what}), found {bad}")


class ScratchBuffers:
    """Device buffers reused across calls, one per name, grown to the largest size asked.

    ``get(name, rows, dtype, cols)`` returns a (rows,) or (rows, cols) view of the buffer, so
    a training loop copies each batch's labels or indices without a device allocation.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, rows, dtype, cols=None):
        dtype = np.dtype(dtype)
        buf = self._buffers.get(name)
        trailing = () if cols is None else (cols,)
        if buf is None or buf.shape[0] < rows or buf.shape[1:] != trailing or buf.dtype != dtype:
            buf = cuda.device_array((max(rows, 1),) + trailing, dtype=dtype)
            self._buffers[name] = buf
        return buf[:rows]

    def upload(self, name, host):
        """A device copy of a 1-D host array, in the reused buffer ``name``."""
        view = self.get(name, host.shape[0], host.dtype)
        if host.shape[0]:
            view.copy_to_device(np.ascontiguousarray(host))
        return view
