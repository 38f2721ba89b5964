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


def test_missing_files_without_download_say_where_to_put_them(tmp_path):
    with pytest.raises(RuntimeError, match=f"not in {tmp_path}"):
        mnist_mod.mnist(root=str(tmp_path), download=False)


def test_files_with_wrong_checksum_are_not_used(tmp_path, monkeypatch):
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    assert mnist_mod._find(str(tmp_path), "train-labels-idx1-ubyte") is None
    # with every fetcher failing, the error names the folder and the files
    monkeypatch.setattr(mnist_mod, "MIRRORS", ())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="Put the raw or .gz IDX files"):
        mnist_mod.fetch(str(tmp_path))


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
