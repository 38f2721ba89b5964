"""The strict stand-in for device arrays (tests/strict_device.py) against numba-cuda's own
DeviceNDArray, without a GPU.

numba-cuda's DeviceNDArray decides what it accepts from metadata alone (shape, strides,
dtype; ``cudadrv/dummyarray.py``), so a real one over a fake allocation answers here, as on
a GPU, whether a key, a reshape, a ravel, a dtype view or a copy is accepted, and what
shape and strides a view gets. For every case below: what the real one refuses, the
stand-in refuses; what it accepts, the stand-in accepts with the same shape and strides.
The stand-in is stricter only where the real one gives a result NumPy would not (a reshape
that reorders the elements, bool keys read as ints): it refuses those.
"""
import ctypes
import importlib.util
import os

import numpy as np
import pytest

if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')", allow_module_level=True)
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    pytest.skip("needs numba-cuda's real device arrays (the simulator replaces them)",
                allow_module_level=True)

from numba.cuda.cudadrv import devicearray  # noqa: E402
from strict_device import make_strict_class  # noqa: E402

Strict = make_strict_class()


class FakeAllocation:
    """Device memory as DeviceNDArray sees it when it only takes views and pointers."""
    device_ctypes_pointer = ctypes.c_void_p(0)

    def view(self, start, stop=None):
        return self


class FakeContext:
    """A CUDA context that allocates fake memory and synchronizes nothing."""

    def memalloc(self, size):
        return FakeAllocation()

    def get_default_stream(self):
        return self

    def synchronize(self):
        pass


class FakeKernel:
    """numba-cuda's assignment kernel (setitem), launched on nothing."""

    def forall(self, *args, **kwargs):
        return lambda *arrays: None


@pytest.fixture(autouse=True)
def no_driver(monkeypatch):
    """Copies and element reads move no data, and empty arrays get no context: only the
    checks before them run."""
    for name in ("host_to_device", "device_to_host", "device_to_device"):
        monkeypatch.setattr(devicearray._driver, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(devicearray.devices, "get_context", lambda *args: FakeContext())
    monkeypatch.setattr(devicearray, "_assign_kernel", lambda ndim: FakeKernel())
    real = devicearray.DeviceNDArray
    monkeypatch.setattr(real, "__getitem__", real._do_getitem)        # without a context
    monkeypatch.setattr(real, "copy_to_device", real.copy_to_device.__wrapped__)


def real_like(host):
    return devicearray.DeviceNDArray(host.shape, host.strides, host.dtype,
                                     gpu_data=FakeAllocation())


def pair(host):
    """(real, strict) device arrays with the shape, strides and dtype of ``host`` (the
    stand-in over ``host`` itself)."""
    return real_like(host), Strict(host)


def outcome(operation):
    """('refused', exception type), ('view', shape, strides) or ('value',)."""
    try:
        got = operation()
    except (TypeError, ValueError, IndexError, NotImplementedError) as error:
        return ("refused", type(error).__name__)
    if hasattr(got, "copy_to_host"):       # strides of empty views and length-1 axes unused
        return ("view", tuple(got.shape), got.size and tuple(
            stride if size > 1 else None for size, stride in zip(got.shape, got.strides)))
    return ("value",)


def numpy_view(operation, strict):
    """outcome of ``operation`` on the stand-in's NumPy array as a view (refused when NumPy
    would need a copy)."""
    def view():
        got = operation(strict._ary)
        if not np.shares_memory(got, strict._ary) and got.size > 1:
            raise ValueError("a copy")
        return Strict(got)
    return outcome(view)


def assert_as_strict(on_real, on_strict, what, allowed_stricter=False):
    """The stand-in refuses what the real array refuses and gives its views; where
    ``allowed_stricter``, it may refuse what the real one accepts."""
    expected, got = outcome(on_real), outcome(on_strict)
    if expected[0] == "refused":
        assert got[0] == "refused", f"{what}: numba-cuda refuses ({expected[1]}), stand-in {got}"
    elif not (allowed_stricter and got[0] == "refused"):
        assert got == expected, f"{what}: numba-cuda gives {expected}, stand-in {got}"


BASE = np.arange(24, dtype=np.float32)
ARRAYS = {       # name -> (array to slice, key), both sides sliced by the same key
    "C (4, 6)": (BASE.reshape(4, 6), ()),
    "F (4, 6)": (np.asfortranarray(BASE.reshape(4, 6)), ()),
    "1-D": (BASE, ()),
    "3-D": (BASE.reshape(2, 3, 4), ()),
    "size-1 axis": (BASE.reshape(4, 1, 6), ()),
    "rows 1:3": (BASE.reshape(4, 6), (slice(1, 3),)),
    "columns 1:4": (BASE.reshape(4, 6), (slice(None), slice(1, 4))),
    "every other row": (BASE.reshape(4, 6), (slice(None, None, 2),)),
    "one column": (BASE.reshape(4, 6), (slice(None), 2)),
    "one column kept 2-D": (BASE.reshape(4, 6), (slice(None), slice(2, 3))),
    "one row": (BASE.reshape(4, 6), (1,)),
    "one row kept 2-D": (BASE.reshape(4, 6), (slice(1, 2),)),
    "F columns 1:4": (np.asfortranarray(BASE.reshape(4, 6)), (slice(None), slice(1, 4))),
    "F rows 1:3": (np.asfortranarray(BASE.reshape(4, 6)), (slice(1, 3),)),
}


def arrays():
    """(name, real, strict) for every entry of ARRAYS."""
    for name, (host, key) in ARRAYS.items():
        real, strict = pair(host.copy(order="K"))
        yield name, real._do_getitem(key) if key else real, strict[key] if key else strict


def test_views_and_flags_agree():
    for name, real, strict in arrays():
        assert (tuple(strict.shape), tuple(strict.strides)) == (real.shape, real.strides), name
        assert strict.flags == real.flags, name
        assert (strict.is_c_contiguous(), strict.is_f_contiguous()) == \
            (real.is_c_contiguous(), real.is_f_contiguous()), name


KEYS = [0, -1, 3, 4, -5, np.int64(2), np.int32(1), slice(1, 3), slice(None, None, 2),
        slice(3, 0, -1), slice(5, 9), (1, 2), (1, slice(2, 5)), (slice(None), 0),
        (slice(1, 3), slice(None, None, 3)), (0, 0, 0), (0, 0, 0, 0), 1.0, "a", Ellipsis,
        (Ellipsis, 0), None, (0, None), [0, 2], np.array([0, 2]), np.array([True, False]),
        True, (0, True)]


def test_keys():
    # numba-cuda reads a bool as an int, and makes views with negative steps that it then
    # cannot index or copy (below): the stand-in refuses both
    for name, real, strict in arrays():
        for key in KEYS:
            assert_as_strict(lambda: real._do_getitem(key), lambda: strict[key],
                             f"{name}[{key!r}]",
                             allowed_stricter="True" in repr(key) or "-1)" in repr(key))
    reversed_rows = real_like(BASE.reshape(4, 6))._do_getitem(slice(None, None, -1))
    with pytest.raises(IndexError):
        reversed_rows._do_getitem(0)
    with pytest.raises(NotImplementedError, match="negative strides"):
        devicearray.DeviceNDArray.copy_to_host.__wrapped__(reversed_rows)
    with pytest.raises(NotImplementedError, match="negative slice steps"):
        Strict(BASE.reshape(4, 6))[::-1]


def reshapes_of(shape):
    size = int(np.prod(shape))
    return [shape, list(shape), (size,), (-1,), (size, 1), (1, size), (2, size // 2),
            (size // 2, 2), (2, -1, 1), (2, 2, -1), (size + 1,), (-1, -1)]


def test_reshape_and_ravel():
    # numba-cuda gives a contiguous array the strides of the new order whatever its own (an
    # F-ordered array reshaped in C order reads its elements in another order than NumPy's);
    # the stand-in refuses those
    for name, real, strict in arrays():
        for shape in reshapes_of(tuple(real.shape)):
            for order in ("C", "F"):
                expected = outcome(lambda: real.reshape(shape, order=order))
                assert_as_strict(lambda: real.reshape(shape, order=order),
                                 lambda: strict.reshape(shape, order=order),
                                 f"{name}.reshape({shape!r}, order={order})",
                                 allowed_stricter=expected != numpy_view(
                                     lambda a: np.reshape(a, shape, order=order), strict))
        for order in "CFA":
            expected = outcome(lambda: real.ravel(order))
            assert_as_strict(lambda: real.ravel(order), lambda: strict.ravel(order),
                             f"{name}.ravel({order})",
                             allowed_stricter=expected != numpy_view(
                                 lambda a: np.ravel(a, order), strict))


def test_dtype_views_and_squeeze():
    for name, real, strict in arrays():
        for dtype in (np.int32, np.float64, np.uint8, np.float16):
            assert_as_strict(lambda: real.view(dtype), lambda: strict.view(dtype),
                             f"{name}.view({dtype.__name__})")
        assert_as_strict(real.squeeze, strict.squeeze, f"{name}.squeeze()")


def sources_for(shape, dtype=np.float32):
    """Host arrays to copy into a device array of ``shape``: every kind numba-cuda
    accepts or refuses."""
    size = int(np.prod(shape))
    values = np.arange(size, dtype=dtype).reshape(shape)
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype) if shape else values
    return {
        "C": values,
        "F": np.asfortranarray(values),
        "strided": wide[..., ::2] if shape else values,
        "float64": values.astype(np.float64),
        "int32": values.astype(np.int32),
        "flat": values.ravel(),
        "extra axis": values[None],
        "one short": np.arange(max(size - 1, 0), dtype=dtype),
        "broadcast": np.broadcast_to(values[..., :1], shape) if shape else values,
        "read-only": np.frombuffer(values.tobytes(), dtype).reshape(shape),
    }


def test_copy_to_device_from_the_host_and_the_device():
    copy = devicearray.DeviceNDArray.copy_to_device
    for name, real, strict in arrays():
        for source_name, source in sources_for(tuple(real.shape)).items():
            assert_as_strict(lambda: copy(real, source), lambda: strict.copy_to_device(source),
                             f"{name}.copy_to_device(host {source_name})")
            if source_name in ("broadcast", "read-only"):      # host arrays only
                continue
            real_source, strict_source = pair(source)
            assert_as_strict(lambda: copy(real, real_source),
                             lambda: strict.copy_to_device(strict_source),
                             f"{name}.copy_to_device(device {source_name})")


def test_copy_to_host_into_a_given_array():
    copy = devicearray.DeviceNDArray.copy_to_host.__wrapped__
    for name, real, strict in arrays():
        assert_as_strict(lambda: copy(real), strict.copy_to_host, f"{name}.copy_to_host()")
        for target_name, target in sources_for(tuple(real.shape)).items():
            if not target.flags.writeable:       # numba-cuda would write into it regardless
                continue
            assert_as_strict(lambda: copy(real, target), lambda: strict.copy_to_host(target),
                             f"{name}.copy_to_host({target_name})")


def test_setitem():
    real_row, strict_row = pair(np.zeros(12, np.float32)[::2])        # a strided (6,) view
    values = {"scalar": 1.5, "int": 2, "0-d": np.float32(3), "row": np.ones(6, np.float32),
              "row kept 2-D": np.ones((1, 6), np.float32), "block": np.ones((4, 6)),
              "column": np.ones((4, 1), np.float32), "3-D": np.ones((1, 4, 6), np.float32),
              "short row": np.ones(5, np.float32), "list": [1.0] * 6,
              "strided": np.ones(12, np.float32)[::2], "F block": np.ones((6, 4)).T}
    for name, real, strict in arrays():
        for key in ((), 0, slice(1, 3), (slice(None), 1), (1, 2), (slice(None), slice(1, 3))):
            for value_name, value in values.items():
                assert_as_strict(lambda: real._do_setitem(key, value),
                                 lambda: strict.__setitem__(key, value),
                                 f"{name}[{key!r}] = {value_name}")
            device = pair(np.ones(6, np.float32))
            for device_name, (real_value, strict_value) in (("device row", device),
                                                            ("strided device row",
                                                             (real_row, strict_row))):
                assert_as_strict(lambda: real._do_setitem(key, real_value),
                                 lambda: strict.__setitem__(key, strict_value),
                                 f"{name}[{key!r}] = {device_name}")
