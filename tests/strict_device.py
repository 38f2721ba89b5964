"""A strict stand-in for numba-cuda's DeviceNDArray, for the CUDA simulator runs.

The simulator's device array (``FakeCUDAArray``) wraps a NumPy array and forwards everything
to it: Ellipsis keys, fancy indexing, arithmetic, ``.fill``, ``np.isfinite``. A real
``DeviceNDArray`` (numba-cuda 0.30, ``numba/cuda/cudadrv/devicearray.py`` and
``dummyarray.py``) refuses most of that, so code that passed the simulator crashed on a GPU.
``StrictDeviceArray`` refuses what the real one refuses, and accepts what it accepts:

    keys         ints and slices, or a tuple of them, at most one per axis; no Ellipsis,
                 None, lists, arrays or booleans (dummyarray.Array.__getitem__), no
                 negative steps (the real view of one fails at indexing and copies)
    __setitem__  the same keys; the value a scalar, a contiguous host array or a device
                 array, of at most the target's ndim and broadcastable to it, a device array
                 of fewer axes contiguous (the real one copies it to the device, reshapes it
                 to the target's axes and runs an assignment kernel)
    arithmetic   none: no operators, comparisons, ufuncs or NumPy functions (DeviceNDArray
                 defines none; NumPy falls back to ``__array__``, which here is refused)
    __array__    refused: the real one copies to the host silently; mlpfast copies
                 explicitly (``copy_to_host``, ``mf.to_numpy``)
    reshape      to the same shape given as a tuple, or of an array contiguous in the
                 order asked (the real one gives the result that order's strides whatever
                 the array's own, reordering the elements), else NotImplementedError
                 ("operation requires copying"); ravel only when contiguous; view(dtype) of
                 another size only when C-contiguous
    transpose    a copy (the real one runs a transpose kernel into a new array), never a view
    attributes   only DeviceNDArray's: shape, strides, dtype, size, ndim, nbytes, flags (a
                 dict), __cuda_array_interface__, copy_to_host, copy_to_device, ...; no
                 ``.fill``, ``.sum``, ``.astype``, ``.copy``, ``.data``, ``__array_interface__``

    copy_to_device  as numba-cuda: both sides contiguous, then the same dtype (TypeError),
                 and the same shape and strides once axes of length 1 are dropped
                 (ValueError); a host source loses its broadcast axes, then is made
                 contiguous in the target's order
    copy_to_host    into a given array as numba-cuda checks: the same dtype, shape and
                 strides once axes of length 1 are dropped
    device_array    uninitialized, as on a GPU: NaN in floats, 0x7F bytes in integers
                 (``poisoned``), never the zeros the simulator's np.empty often gives

``install()`` makes ``numba.cuda.to_device``, ``device_array`` and ``device_array_like`` return
these, and kernel launches refuse NumPy arguments and grids or blocks beyond a GPU's limits,
and blocks whose threads pass different numbers of ``syncthreads()``, and data races: two
threads of a block touching one element, one writing, with no barrier between, or two blocks
of one launch (tests/race_checker.py; simulator only).
Inside kernels the simulator indexes them with ints, as a GPU does.
"""
import numpy as np

import race_checker

ERR_CONTIGUOUS = ("Array contains non-contiguous buffer and cannot be transferred as a single "
                  "memory region. Please ensure contiguous buffer with numpy "
                  ".ascontiguousarray()")
ALLOWED_ARRAY_ATTRIBUTES = ("strides", "dtype", "size", "ndim")    # read from the wrapped array


def _fake_cuda_array():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return FakeCUDAArray


def check_key(key, ndim):
    """The keys a DeviceNDArray takes: an int or slice, or a tuple of them, one per axis;
    no negative steps (numba-cuda makes the view, but then cannot index or copy it)."""
    items = key if type(key) is tuple else (key,)
    if len(items) > ndim:
        raise IndexError(f"{len(items) - ndim} extra indices given")
    for item in items:
        kind = type(item)
        if kind is slice and item.step is not None and item.step < 0:
            raise NotImplementedError(f"a device array takes no negative slice steps, got "
                                      f"{key!r}")
        if kind is int or kind is slice:
            continue
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"a device array takes only int and slice keys, got "
                            f"{type(item).__name__} in {key!r} (no Ellipsis, None, lists, "
                            f"arrays or booleans)")


def _require_contiguous(a):
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        raise ValueError(ERR_CONTIGUOUS)


def _core(a):
    """numba-cuda's array_core: a broadcast array without its repeated (stride 0) axes."""
    if not a.strides or not a.size:
        return a
    return a[tuple(0 if stride == 0 else slice(None) for stride in a.strides)]


def _check_compatible(target, source):
    """numba-cuda's check_array_compatibility: the same dtype, and the same shape and
    strides once axes of length 1 are dropped (strides only when there are elements)."""
    if target.dtype != source.dtype:
        raise TypeError(f"incompatible dtype: {target.dtype} vs. {source.dtype}")
    target_squeezed, source_squeezed = target.squeeze(), source.squeeze()
    if target_squeezed.shape != source_squeezed.shape:
        raise ValueError(f"incompatible shape: {target.shape} vs. {source.shape}")
    if target.size and target_squeezed.strides != source_squeezed.strides:
        raise ValueError(f"incompatible strides: {target.strides} vs. {source.strides}")


def _refuse(operation):
    def refused(self, *args, **kwargs):
        raise TypeError(f"a CUDA device array does not support {operation}: run a kernel, or "
                        f"copy_to_host() first")
    refused.__name__ = operation
    return refused


def make_strict_class():
    FakeCUDAArray = _fake_cuda_array()

    class StrictDeviceArray(FakeCUDAArray):
        """A device array as strict as numba-cuda's DeviceNDArray (see the module docstring)."""
        __array_ufunc__ = None                   # NumPy: operands do not support ufuncs
        __hash__ = object.__hash__               # hashable, as DeviceNDArray

        def __getattr__(self, name):
            if name in ALLOWED_ARRAY_ATTRIBUTES:
                return getattr(self._ary, name)
            raise AttributeError(f"'DeviceNDArray' object has no attribute {name!r}")

        def __array__(self, dtype=None, copy=None):
            raise TypeError("implicit copy of a CUDA device array to the host (np.asarray, a "
                            "NumPy function or operator): call copy_to_host() or mf.to_numpy()")

        @property
        def flags(self):
            return {"C_CONTIGUOUS": bool(self._ary.flags.c_contiguous),
                    "F_CONTIGUOUS": bool(self._ary.flags.f_contiguous)}

        @property
        def __cuda_array_interface__(self):
            a = self._ary
            return {"shape": tuple(a.shape),
                    "strides": None if a.flags.c_contiguous else tuple(a.strides),
                    "data": (a.__array_interface__["data"][0], False), "typestr": a.dtype.str,
                    "stream": None, "version": 3}

        def __getitem__(self, key):
            check_key(key, self._ary.ndim)
            got = self._ary[key]
            if isinstance(got, np.ndarray):
                return StrictDeviceArray(got, self.stream)
            race_checker.record_access("global", self, self._ary, key, False)
            return got

        def __setitem__(self, key, value):
            check_key(key, self._ary.ndim)
            race_checker.record_access("global", self, self._ary, key, True)
            if isinstance(value, (int, float, np.generic)):     # in kernels: one element
                self._ary[key] = value
                return
            target_ndim = np.ndim(self._ary[key])
            if isinstance(value, FakeCUDAArray):
                if not isinstance(value, StrictDeviceArray):
                    raise TypeError("mixing a strict device array with a simulator one")
                value = value._ary
                if value.ndim < target_ndim:     # numba-cuda reshapes it to target_ndim axes
                    StrictDeviceArray(value).reshape((1,) * (target_ndim - value.ndim)
                                                     + value.shape)
            elif isinstance(value, np.ndarray):
                _require_contiguous(value)
            if np.ndim(value) > target_ndim:
                raise ValueError(f"Can't assign {np.ndim(value)}-D array to {target_ndim}-D self")
            self._ary[key] = value

        def copy_to_device(self, ary, stream=0):
            if ary.size == 0:
                return
            _require_contiguous(self._ary)
            if isinstance(ary, StrictDeviceArray):             # device to device
                _require_contiguous(ary._ary)
                source = ary._ary
            elif isinstance(ary, FakeCUDAArray):
                raise TypeError("mixing a strict device array with a simulator one")
            else:                 # host: its core, made as contiguous as the target
                source = np.array(_core(ary), order="C" if self._ary.flags.c_contiguous else "F",
                                  copy=None)
            _check_compatible(_core(self._ary), _core(source))
            np.copyto(self._ary, source)

        def squeeze(self, axis=None, stream=0):
            return StrictDeviceArray(self._ary.squeeze(axis), stream or self.stream)

        def reshape(self, *shape, order="C"):
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = shape[0]
            if shape == self.shape:                  # a tuple (a list of it is refused)
                return StrictDeviceArray(self._ary, self.stream)
            # numba-cuda reshapes only contiguous arrays, giving the result the strides of
            # ``order`` whatever the array's own: NumPy's view only when the two agree
            flags = self._ary.flags
            if list(shape) == list(self.shape) or not {
                    "C": flags.c_contiguous, "F": flags.f_contiguous,
                    "A": flags.c_contiguous or flags.f_contiguous}[order]:
                raise NotImplementedError("operation requires copying")
            return StrictDeviceArray(np.reshape(self._ary, shape, order=order, copy=False),
                                     self.stream)

        def ravel(self, order="C", stream=0):
            flags = self._ary.flags
            if not (order in "CA" and flags.c_contiguous or order in "FA" and flags.f_contiguous):
                raise NotImplementedError("operation requires copying")
            return StrictDeviceArray(self._ary.ravel(order), stream or self.stream)

        def view(self, dtype):
            dtype = np.dtype(dtype)
            if dtype.itemsize != self.dtype.itemsize and not self._ary.flags.c_contiguous:
                raise ValueError("To change to a dtype of a different size, the array must "
                                 "be C-contiguous")
            return StrictDeviceArray(self._ary.view(dtype), self.stream)

        def transpose(self, axes=None):
            if axes and tuple(axes) == tuple(range(self.ndim)):
                return self
            if self.ndim != 2:
                raise NotImplementedError("transposing a non-2D DeviceNDArray isn't supported")
            return StrictDeviceArray(np.ascontiguousarray(self._ary.T), self.stream)

        @property
        def T(self):
            return self.transpose()

        def bind(self, stream=0):
            return StrictDeviceArray(self._ary, stream)

        def split(self, section, stream=0):
            return [StrictDeviceArray(part, stream or self.stream)
                    for part in np.split(self._ary, range(section, len(self), section))]

    for operator in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and",
                     "or", "xor", "lshift", "rshift"):
        for form in ("__{}__", "__r{}__", "__i{}__"):
            name = form.format(operator)
            setattr(StrictDeviceArray, name, _refuse(name))
    for name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__neg__",
                 "__pos__", "__abs__", "__invert__", "__float__", "__int__", "__index__"):
        setattr(StrictDeviceArray, name, _refuse(name))
    return StrictDeviceArray


def poisoned(ary):
    """``ary`` filled as a GPU's fresh allocation may be (whatever memory held before, where
    the simulator's np.empty often holds zeros): NaN in floats, 0x7F in every byte of
    integers (a large index), True in booleans. A kernel that reads an element no one wrote
    then shows it in its values."""
    if ary.dtype.kind in "fc":
        ary.fill(np.nan)
    elif ary.dtype.kind == "b":
        ary.fill(True)
    else:
        ary.fill(np.frombuffer(b"\x7f" * ary.dtype.itemsize, ary.dtype)[0])
    return ary


def install():
    """numba.cuda.to_device / device_array / device_array_like return StrictDeviceArray
    (under the CUDA simulator; returns the class)."""
    from numba import cuda
    strict = make_strict_class()
    simulator_to_device, simulator_device_array = cuda.to_device, cuda.device_array
    simulator_device_array_like = cuda.device_array_like

    def to_device(obj, stream=0, copy=True, to=None):
        if to is not None:                  # as numba-cuda: copies into ``to``, returns it
            if copy:
                to.copy_to_device(obj, stream)
            return to
        if isinstance(obj, strict):
            return obj                      # as numba-cuda: a device array is returned as is
        return strict(simulator_to_device(obj, stream, copy)._ary, stream)

    def device_array(*args, **kwargs):
        made = simulator_device_array(*args, **kwargs)
        return strict(poisoned(made._ary), made.stream)

    def device_array_like(ary, stream=0):   # the order of ``ary`` (C, F or its strides' order)
        return strict(poisoned(simulator_device_array_like(ary)._ary), stream)

    cuda.to_device, cuda.device_array, cuda.device_array_like = (to_device, device_array,
                                                                 device_array_like)
    _refuse_host_arrays_at_launch()
    _refuse_divergent_barriers()
    race_checker.install()
    return strict


GRID_LIMITS, BLOCK_LIMITS, MAX_THREADS = (2 ** 31 - 1, 65535, 65535), (1024, 1024, 64), 1024


def check_launch(name, grid, block):
    """The launch dimensions every CUDA GPU takes (a GPU fails the launch otherwise)."""
    if min(grid + block) < 1 or any(g > limit for g, limit in zip(grid, GRID_LIMITS)) \
            or any(b > limit for b, limit in zip(block, BLOCK_LIMITS)) \
            or block[0] * block[1] * block[2] > MAX_THREADS:
        raise ValueError(f"kernel {name}: grid {grid} and block {block} exceed what a GPU "
                         f"launches (grid x < 2^31, y and z <= 65535; at most {MAX_THREADS} "
                         f"threads per block, z <= 64)")


def _refuse_host_arrays_at_launch():
    """A kernel launched with a NumPy array raises: on a GPU numba-cuda copies it to the
    device and back at every launch (and refuses it when not contiguous). So does a launch
    beyond a GPU's grid and block limits."""
    from numba.cuda.simulator import kernel as simulated
    launch = simulated.FakeCUDAKernel.__call__
    if getattr(launch, "refuses_host_arrays", False):
        return

    def strict_launch(self, *args):
        if not (self._device or simulated._kernel_context):
            check_launch(self.fn.__name__, self.grid_dim, self.block_dim)
            for position, arg in enumerate(args):
                if isinstance(arg, np.ndarray) and arg.ndim > 0:
                    raise TypeError(f"kernel {self.fn.__name__}: argument {position} is a "
                                    f"host array ({arg.dtype} {arg.shape}); pass a device array")
        return launch(self, *args)
    strict_launch.refuses_host_arrays = True
    simulated.FakeCUDAKernel.__call__ = strict_launch


def _refuse_divergent_barriers():
    """A block whose threads passed different numbers of ``syncthreads()`` raises after it
    ran. On a GPU every thread of the block must reach each barrier (one inside ``if tid <
    half:`` hangs or is undefined); the simulator releases a barrier once every thread still
    running waits at it, so such a kernel runs there and may even give the right values."""
    from numba.cuda.simulator import kernel as simulated
    if getattr(simulated.BlockManager.run, "checks_barriers", False):
        return
    start, sync, run = (simulated.BlockThread.__init__, simulated.BlockThread.syncthreads,
                        simulated.BlockManager.run)

    def counting_start(self, f, manager, *args, **kwargs):
        start(self, f, manager, *args, **kwargs)
        self.barriers = 0
        manager.block_threads.append(self)

    def counting_sync(self):
        self.barriers += 1
        sync(self)

    def checking_run(self, grid_point, *args):
        self.block_threads = []
        run(self, grid_point, *args)
        passed = sorted({thread.barriers for thread in self.block_threads})
        if len(passed) > 1:
            raise RuntimeError(f"kernel {self._f.__name__}: the threads of block {grid_point} "
                               f"passed {' or '.join(map(str, passed))} syncthreads() barriers: "
                               f"every thread of a block must reach each barrier")
    checking_run.checks_barriers = True
    simulated.BlockThread.__init__ = counting_start
    simulated.BlockThread.syncthreads = counting_sync
    simulated.BlockManager.run = checking_run
