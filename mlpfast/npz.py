"""Header-first reading of .npy and .npz files that may be corrupt or crafted.

Used by ``mlpfast.load``, ``read_checkpoint`` and ``SpeechFrames.from_folder``. Each array
is read in two steps. First its .npy header: the magic, the version, and at most
MAX_HEADER_BYTES of Python literal giving dtype, shape and order. The header is checked
against what the caller expects (``Expect``: dtype, shape, a cap on its bytes) and
against the bytes the file holds for it. Only then its data: exactly the declared bytes,
into one array. So a crafted file is refused before any large allocation, and

- nothing is unpickled: object, structured and sub-array dtypes are refused;
- nothing is decompressed: .npz members must be stored (ZIP_STORED, as ``np.savez`` writes
  them), since a compressed member can expand about 1000-fold; the sizes of the stored
  members may not add up to more than the file's size, so directory entries that overlap
  cannot multiply its data either.

Every problem is a ValueError naming the file (and the member) and what was expected.
"""
import ast
import json
import math
import os
import struct
import zipfile
from collections import namedtuple

import numpy as np

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10_000       # NumPy's own limit for headers it parses safely
MAX_ARRAY_BYTES = 1 << 31       # 2 GiB per array, as parse_idx allows per IDX file
MAX_META_BYTES = 16 << 20       # a JSON metadata entry
PLAIN_KINDS = "biufU"           # bool, integers, floats, unicode strings
_CHUNK = 1 << 20

Header = namedtuple("Header", ["shape", "dtype", "fortran", "offset", "nbytes"])
Header.__doc__ = """A parsed .npy header; offset: bytes before the data; nbytes: data bytes."""


class Expect(namedtuple("Expect", ["kinds", "dtype", "shape", "max_bytes"])):
    """What an array may be: dtype kinds (e.g. "f"), or one exact ``dtype`` (either byte
    order); ``shape`` a tuple whose None entries take any length (None: any shape);
    ``max_bytes`` a cap on its data."""

    def __new__(cls, kinds=PLAIN_KINDS, dtype=None, shape=None, max_bytes=MAX_ARRAY_BYTES):
        return super().__new__(cls, kinds, None if dtype is None else np.dtype(dtype),
                               shape, max_bytes)

    def describe(self):
        what = str(self.dtype) if self.dtype is not None else f"dtype kind in {self.kinds!r}"
        if self.shape is None:
            return what
        sizes = ["*" if s is None else str(s) for s in self.shape]
        return f"{what} of shape ({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"


def read_header(f, where):
    """The Header of the .npy stream ``f`` (at its start); leaves ``f`` at the data."""
    prefix = f.read(len(MAGIC) + 2)
    if len(prefix) < len(MAGIC) + 2 or prefix[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{where}: not a .npy array (starts with {prefix[:8]!r})")
    version = (prefix[-2], prefix[-1])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"{where}: unsupported .npy version {version[0]}.{version[1]}")
    length_format = "<H" if version == (1, 0) else "<I"
    raw_length = f.read(struct.calcsize(length_format))
    if len(raw_length) < struct.calcsize(length_format):
        raise ValueError(f"{where}: truncated .npy header")
    (length,) = struct.unpack(length_format, raw_length)
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"{where}: .npy header of {length} bytes (at most {MAX_HEADER_BYTES}"
                         f" are read)")
    text = f.read(length)
    if len(text) < length:
        raise ValueError(f"{where}: truncated .npy header")
    try:
        fields = ast.literal_eval(text.decode("utf8" if version == (3, 0) else "latin1"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError,
            UnicodeDecodeError) as e:
        raise ValueError(f"{where}: corrupt .npy header ({type(e).__name__})") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{where}: corrupt .npy header (not a dict of descr, fortran_order "
                         f"and shape)")
    shape, fortran, descr = fields["shape"], fields["fortran_order"], fields["descr"]
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{where}: corrupt .npy header (shape {shape!r})")
    if not isinstance(fortran, bool):
        raise ValueError(f"{where}: corrupt .npy header (fortran_order {fortran!r})")
    dtype = _plain_dtype(descr, where)
    return Header(shape, dtype, fortran, len(prefix) + len(raw_length) + length,
                  math.prod(shape) * dtype.itemsize)


def _plain_dtype(descr, where):
    """The dtype ``descr`` names when it is a plain number or string type, else ValueError
    (objects would need unpickling; structured types are never written by mlpfast)."""
    try:
        dtype = np.dtype(descr) if isinstance(descr, str) else None
    except (TypeError, ValueError, OverflowError):
        dtype = None
    if dtype is None or dtype.kind not in PLAIN_KINDS or dtype.names or dtype.subdtype:
        name = descr if dtype is None else dtype
        raise ValueError(f"{where}: dtype {name} is not allowed (only plain numbers and "
                         f"strings are read; nothing is unpickled)")
    return dtype


def check_header(header, expect, where, available):
    """Refuse ``header`` unless it is what ``expect`` allows and its data is exactly the
    ``available`` bytes that follow it in the file."""
    dtype = header.dtype.newbyteorder("=")
    dtype_ok = dtype == expect.dtype if expect.dtype is not None else dtype.kind in expect.kinds
    shape_ok = expect.shape is None or (len(header.shape) == len(expect.shape) and all(
        want is None or got == want for got, want in zip(header.shape, expect.shape)))
    if not (dtype_ok and shape_ok):
        raise ValueError(f"{where}: expected {expect.describe()}, the file holds "
                         f"{header.dtype} of shape {header.shape}")
    if header.nbytes > expect.max_bytes:
        raise ValueError(f"{where}: {header.shape} of {header.dtype} is {header.nbytes} bytes,"
                         f" more than the {expect.max_bytes} allowed")
    if header.nbytes != available:
        raise ValueError(f"{where}: header says {header.shape} of {header.dtype} "
                         f"({header.nbytes} bytes) but {available} bytes follow (truncated "
                         f"or corrupt)")


def read_data(f, header, where):
    """The array of ``header``: its nbytes read from ``f`` into one native-order array."""
    try:
        out = np.empty(header.shape[::-1] if header.fortran else header.shape, header.dtype)
    except (ValueError, MemoryError) as e:
        raise ValueError(f"{where}: cannot hold {header.shape} of {header.dtype} ({e})") \
            from None
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < header.nbytes:
        count = f.readinto(buffer[done:done + _CHUNK])
        if not count:
            raise ValueError(f"{where}: {done} of {header.nbytes} data bytes (truncated)")
        done += count
    if f.read(1):
        raise ValueError(f"{where}: data past the {header.nbytes} bytes of its header")
    out = out.T if header.fortran else out
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def load_npy(path, expect):
    """The array in the .npy file ``path``, its header checked against ``expect`` first."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        header = read_header(f, where)
        check_header(header, expect, where, os.fstat(f.fileno()).st_size - header.offset)
        return read_data(f, header, where)


class NpzReader:
    """The members of an .npz file (a zip of stored .npy files), read header-first.

    ``with NpzReader(path, "model") as npz:`` lists ``npz.names`` (member names without
    .npy); ``npz.read(name, expect)`` reads one member, ``npz.read_all({name: expect})``
    checks every header before it reads any data. ``what`` names the kind of file in
    errors ("... is not a readable model file").
    """

    def __init__(self, path, what):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":
                    raise ValueError(f"{self.path} is not a {what} file (not a zip/npz file)")
                file_size = os.fstat(f.fileno()).st_size
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
                NotImplementedError, RuntimeError) as e:
            raise ValueError(f"{self.path} is not a readable {what} file: {e}") from None
        try:
            self._members = self._check_directory(file_size, what)
        except BaseException:
            self._zip.close()
            raise
        self.names = list(self._members)

    def _check_directory(self, file_size, what):
        members, stored = {}, 0
        for info in self._zip.infolist():
            where = f"{self.path}:{info.filename}"
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where}: unexpected entry (an npz holds .npy files)")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{where}: entry is compressed; {what} files are written "
                                 f"uncompressed (a compressed entry can expand far beyond "
                                 f"the file's size)")
            name = info.filename[:-len(".npy")]
            if name in members:
                raise ValueError(f"{where}: duplicate entry")
            stored += info.compress_size
            if info.file_size != info.compress_size or stored > file_size:
                raise ValueError(f"{where}: entry sizes do not fit in the {file_size}-byte "
                                 f"file (corrupt or overlapping entries)")
            members[name] = info
        return members

    def read(self, name, expect):
        return self.read_all({name: expect})[name]

    def read_json(self, name, what):
        """The JSON value held by the uint8 entry ``name`` (at most MAX_META_BYTES);
        ``what`` names it in errors ("checkpoint metadata")."""
        blob = self.read(name, Expect(dtype=np.uint8, shape=(None,), max_bytes=MAX_META_BYTES))
        try:
            return json.loads(blob.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"{self.path}: corrupt {what} ({e})") from None

    def read_all(self, expected):
        """{name: array} of the members named in ``expected`` ({name: Expect}); every
        header is checked before any data is read."""
        for name in expected:
            if name not in self._members:
                raise ValueError(f"{self.path}: no entry {name + '.npy'!r}")
        opened, headers = [], {}
        try:
            for name, expect in expected.items():
                info, where = self._members[name], f"{self.path}:{name}.npy"
                stream = self._call(self._zip.open, info)
                opened.append(stream)
                header = self._call(read_header, stream, where)
                check_header(header, expect, where, info.file_size - header.offset)
                headers[name] = (stream, header, where)
            return {name: self._call(read_data, *args) for name, args in headers.items()}
        finally:
            for stream in opened:
                stream.close()

    def _call(self, function, *args):
        """function(*args), with the zip module's errors (bad CRC, truncated member) as
        ValueError naming the file."""
        try:
            return function(*args)
        except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError,
                RuntimeError) as e:
            raise ValueError(f"{self.path} is corrupt: {e}") from None

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def state_layout(architecture, where):
    """{name: (shape, role)} of the state_dict a Sequential architecture
    (``model.architecture()``) declares, in PyTorch's names. role: "parameter" or
    "buffer" (in the model's dtype), or "counter" (int64). Layer i
    Linear(in, out, bias): "i.weight" (out, in), "i.bias" (out,) parameters;
    BatchNorm1d(F, affine): "i.weight", "i.bias" (F,) parameters when affine,
    "i.running_mean", "i.running_var" (F,) buffers, "i.num_batches_tracked" () counter.
    Other layers hold no state. ValueError naming ``where`` for a malformed one."""
    layers = architecture.get("layers") if isinstance(architecture, dict) else None
    if not isinstance(layers, list):
        raise ValueError(f"{where}: the architecture has no list of layers")
    layout = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
            raise ValueError(f"{where}: layer {i} is not a layer description: {layer!r}")
        if layer["type"] == "Linear":
            sizes = _declared(where, i, layer, ("in_features", "out_features"), "bias")
            layout[f"{i}.weight"] = (sizes[::-1], "parameter")
            if layer["bias"]:
                layout[f"{i}.bias"] = (sizes[1:], "parameter")
        elif layer["type"] == "BatchNorm1d":
            sizes = _declared(where, i, layer, ("num_features",), "affine")
            names = (("weight", "parameter"), ("bias", "parameter")) if layer["affine"] else ()
            for name, role in names + (("running_mean", "buffer"), ("running_var", "buffer")):
                layout[f"{i}.{name}"] = (sizes, role)
            layout[f"{i}.num_batches_tracked"] = ((), "counter")
    return layout


def _declared(where, i, layer, size_keys, flag_key):
    """The positive integer sizes ``size_keys`` of a layer description whose ``flag_key``
    is true/false, else ValueError."""
    sizes = tuple(layer.get(key) for key in size_keys)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes) \
            or not isinstance(layer.get(flag_key), bool):
        given = ", ".join(f"{key}={layer.get(key)!r}" for key in size_keys + (flag_key,))
        raise ValueError(f"{where}: layer {i} is declared {layer['type']}({given}); expected "
                         f"positive integers and true/false")
    return sizes


def expect_state(layout, dtype):
    """{name: Expect} of a state layout (``state_layout``) for a model of ``dtype``."""
    return {name: Expect(dtype=np.int64 if role == "counter" else dtype, shape=shape)
            for name, (shape, role) in layout.items()}
