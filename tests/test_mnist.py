"""IDX parsing on generated files (raw, gzip, truncated, corrupt) and the MNIST loader."""
import gzip
import hashlib
import os
import struct

import numpy as np
import pytest

from mlpfast.data import mnist as mnist_mod


def idx_bytes(array, type_code=0x08):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_parse_raw_and_gzip(tmp_path, rng):
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    raw = idx_bytes(images)
    assert np.array_equal(mnist_mod.parse_idx(raw), images)
    assert np.array_equal(mnist_mod.parse_idx(gzip.compress(raw)), images)
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(raw))
    assert np.array_equal(mnist_mod.read_idx(path), images)
    floats = rng.standard_normal((4, 2)).astype(">f4")
    assert np.array_equal(mnist_mod.parse_idx(idx_bytes(floats, 0x0D)), floats)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b[:-1], "truncated or trailing"),
    (lambda b: b + b"\x00", "truncated or trailing"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b[:3], "too short"),
    (lambda b: b"\x01" + b[1:], "bad IDX magic"),
    (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX element type"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: gzip.compress(b)[:-8], "corrupt gzip"),
])
def test_corrupt_idx_files_get_clear_errors(mutate, message, rng):
    raw = idx_bytes(rng.integers(0, 256, (5, 28, 28)).astype(np.uint8))
    with pytest.raises(mnist_mod.IDXError, match=message):
        mnist_mod.parse_idx(mutate(raw))
    assert issubclass(mnist_mod.IDXError, ValueError)


def test_truncated_file_on_disk_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        mnist_mod.read_idx(path)


def small_cache(monkeypatch, tmp_path):
    """MNIST reduced to one small labels file (FILES patched): (root, name, its bytes)."""
    name, raw = "train-labels-idx1-ubyte", idx_bytes(np.arange(100, dtype=np.uint8) % 10)
    monkeypatch.setattr(mnist_mod, "FILES", {name: hashlib.sha256(raw).hexdigest()})
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://mirror.invalid/",))
    monkeypatch.setenv("PATH", "")                            # no npm
    return tmp_path, name, raw


def test_a_leading_tilde_in_mlpfast_data_or_root_is_the_home_folder(monkeypatch, tmp_path):
    # "~/data" was taken literally: a folder named "~" appeared in the working directory
    root, name, raw = small_cache(monkeypatch, tmp_path)
    home, cwd = root / "home", root / "cwd"
    (home / "data" / "mnist").mkdir(parents=True)
    (home / "data" / "mnist" / name).write_bytes(raw)
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLPFAST_DATA", "~/data")
    found = {name: str(home / "data" / "mnist" / name)}
    assert mnist_mod.default_root() == str(home / "data" / "mnist")
    assert mnist_mod.fetch(download=False) == found
    assert mnist_mod.fetch("~/data/mnist", download=False) == found
    with pytest.raises(FileNotFoundError, match=f"not in {home}/elsewhere and"):
        mnist_mod.fetch("~/elsewhere", download=False)
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("download", [True, False])
def test_a_root_that_is_a_file_is_named(tmp_path, download):
    # e.g. --data train-images-idx3-ubyte.gz: os.makedirs said "[Errno 17] File exists"
    # (download=False: "not in <file>")
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=f"MNIST folder {path} is a file: pass the "
                                                 f"folder that holds"):
        mnist_mod.mnist(root=str(path), download=download)
    assert path.read_bytes() == b"x" and os.listdir(tmp_path) == [path.name]


def test_missing_files_without_download_are_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"not in {tmp_path} and download=False"):
        mnist_mod.mnist(root=str(tmp_path), download=False)


@pytest.mark.parametrize("damage,detail", [
    ("truncate", r": 50 bytes, SHA-256 [0-9a-f]{64}, expected "),
    ("flip", r": 108 bytes, SHA-256 [0-9a-f]{64}, expected "),
    ("gzip of a truncated file", r": \d+ bytes, 50 decompressed, SHA-256 [0-9a-f]{64}, "
                                 r"expected "),
    ("truncated gzip", r": corrupt gzip stream \(truncated\) \(\d+ bytes\); expected the "
                       r"SHA-256 "),
], ids=["truncated", "flipped", "gzip-of-truncated", "truncated-gzip"])
def test_corrupt_or_truncated_file_in_the_cache_is_named(monkeypatch, tmp_path, damage, detail):
    # present but corrupt: a ValueError naming the file, its size and the expected SHA-256
    # (not "missing"), and with download=False nothing is fetched or changed
    root, name, raw = small_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(mnist_mod, "_download", lambda url: pytest.fail("fetched"))
    bad = {"truncate": raw[:50], "flip": raw[:20] + b"\x07" + raw[21:],
           "gzip of a truncated file": gzip.compress(raw[:50]),
           "truncated gzip": gzip.compress(raw)[:-10]}[damage]
    path = root / (name + (".gz" if "gzip" in damage else ""))
    path.write_bytes(bad)
    expected = mnist_mod.FILES[name]
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + detail + expected):
        mnist_mod.fetch(str(root), download=False)
    assert path.read_bytes() == bad and os.listdir(root) == [path.name]


def test_download_replaces_a_corrupt_file_atomically(monkeypatch, tmp_path):
    root, name, raw = small_cache(monkeypatch, tmp_path)
    path = root / name
    path.write_bytes(raw[:50])                              # a download that stopped early
    before = os.stat(path).st_ino
    fetched = []
    monkeypatch.setattr(mnist_mod, "_download",
                        lambda url: fetched.append(url) or gzip.compress(raw))
    assert mnist_mod.fetch(str(root)) == {name: str(path)}
    assert fetched == [f"https://mirror.invalid/{name}.gz"]
    assert path.read_bytes() == raw
    assert os.stat(path).st_ino != before                   # renamed over, not rewritten
    assert os.listdir(root) == [name]                       # no temporary left
    assert mnist_mod.fetch(str(root), download=False) == {name: str(path)}


def test_a_fetch_that_does_not_verify_leaves_the_corrupt_file(monkeypatch, tmp_path):
    root, name, raw = small_cache(monkeypatch, tmp_path)
    (root / name).write_bytes(raw[:50])
    monkeypatch.setattr(mnist_mod, "_download", lambda url: gzip.compress(raw[:-1] + b"\x08"))
    with pytest.raises(RuntimeError, match=r"(?s)mirror.invalid/train-labels-idx1-ubyte.gz: "
                                           r"SHA-256 mismatch.*Put the raw or .gz IDX files"):
        mnist_mod.fetch(str(root))
    assert (root / name).read_bytes() == raw[:50] and os.listdir(root) == [name]


def test_gz_in_the_cache_is_hashed_under_the_parse_idx_cap(monkeypatch, tmp_path):
    # 64 MiB of zeros compress to ~64 KiB; with a 1 MiB cap the hash stops early
    root, name, raw = small_cache(monkeypatch, tmp_path)
    (root / (name + ".gz")).write_bytes(gzip.compress(b"\0" * (64 << 20), compresslevel=1))
    monkeypatch.setattr(mnist_mod, "MAX_IDX_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"\.gz: decompresses to more than 1048576 bytes"):
        mnist_mod.fetch(str(root), download=False)


def test_real_mnist_loads_with_the_right_shapes_and_values():
    (x_train, y_train), (x_test, y_test) = mnist_mod.mnist()
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 == x_train.min() and x_train.max() == 1.0
    assert np.bincount(y_train).tolist()[:3] == [5923, 6742, 5958]
    assert y_train[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    root = mnist_mod.default_root()
    for name, digest in mnist_mod.FILES.items():
        path = mnist_mod._find(root, name)
        data = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        assert hashlib.sha256(data).hexdigest() == digest
    assert os.path.isdir(root)


def test_gzip_bomb_is_refused_without_inflating_it(monkeypatch):
    # 64 MiB of zeros compress to ~64 KiB; with a 1 MiB limit the parser stops early
    bomb = gzip.compress(b"\0\0\x08\x01" + b"\0" * (64 << 20))
    monkeypatch.setattr(mnist_mod, "MAX_IDX_BYTES", 1 << 20)
    with pytest.raises(mnist_mod.IDXError, match="decompresses to more than 1048576 bytes"):
        mnist_mod.parse_idx(bomb, "bomb.gz")


def test_concatenated_gzip_members_are_one_file(rng):
    images = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    raw = idx_bytes(images)
    assert np.array_equal(mnist_mod.parse_idx(gzip.compress(raw[:10]) + gzip.compress(raw[10:])),
                          images)


# --- mutation-testing gaps: element types, the magic's second byte, label range ---------

@pytest.mark.parametrize("type_code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, ">i2"),
                                             (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_every_idx_element_type_reads_big_endian(type_code, dtype, rng):
    """Values chosen so that a wrong byte order or signedness changes them."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = rng.standard_normal((2, 3, 5)) * 1e3
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, int(info.max) + 1, (2, 3, 5))
        values.flat[:2] = info.min, info.max
    array = values.astype(dtype)
    raw = struct.pack(">BBBB", 0, 0, type_code, 3) + struct.pack(">III", 2, 3, 5) + \
        array.astype(dtype.newbyteorder(">")).tobytes()
    parsed = mnist_mod.parse_idx(raw)
    assert parsed.shape == (2, 3, 5)
    assert np.array_equal(parsed.astype(np.float64), values.astype(dtype).astype(np.float64))


def test_idx_magic_needs_both_zero_bytes(rng):
    raw = idx_bytes(rng.integers(0, 256, (2, 3)).astype(np.uint8))
    with pytest.raises(mnist_mod.IDXError, match="bad IDX magic 0001"):
        mnist_mod.parse_idx(raw[:1] + b"\x01" + raw[2:])


def test_labels_outside_0_to_9_are_refused(monkeypatch, tmp_path):
    paths = {}
    for name, array in (("train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8)),
                        ("t10k-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8)),
                        ("train-labels-idx1-ubyte", np.array([3, 10], np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.array([1], np.uint8))):
        paths[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(idx_bytes(array))
    monkeypatch.setattr(mnist_mod, "fetch", lambda root, download: paths)
    with pytest.raises(mnist_mod.IDXError, match=r"expected 2 uint8 labels in 0\.\.9"):
        mnist_mod.mnist()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([3, 9], np.uint8)))
    (x, y), (x_test, y_test) = mnist_mod.mnist()
    assert y.tolist() == [3, 9] and y_test.tolist() == [1] and x.shape == (2, 784)
