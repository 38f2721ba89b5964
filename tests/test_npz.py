"""Untrusted files (mlpfast/npz.py): ``mlpfast.load``, ``read_checkpoint`` and
``SpeechFrames.from_folder`` read each .npy header first and refuse a crafted file before
reading its data: a 2 MB model or checkpoint whose compressed member expands to 2 GiB is
refused in under 100 ms with under 300 MB of peak RSS (measured in a subprocess), headers
that lie about shape, dtype or size are refused, nothing is unpickled."""
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

import mlpfast as mf
from mlpfast import npz
from mlpfast.checkpoint import META_ENTRY, read_checkpoint
from mlpfast.data import speech

MB = 1 << 20


# --- crafted zip files ---------------------------------------------------------------------

def npy_text(fields, pad_to=None, version=1):
    """A .npy header holding the literal ``fields`` (any dict), padded to 64 bytes or to a
    text of exactly ``pad_to`` bytes."""
    text = repr(fields).encode()
    length_format = "<H" if version == 1 else "<I"
    if pad_to is None:
        pad_to = len(text) + 1 + (-(6 + 2 + struct.calcsize(length_format) + len(text) + 1)
                                  % 64)
    text += b" " * (pad_to - len(text) - 1) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length_format, len(text)) + text


def npy_header(shape, descr="<f4", version=1):
    """The bytes of a .npy header declaring ``shape`` of ``descr``."""
    return npy_text({"descr": descr, "fortran_order": False, "shape": tuple(shape)},
                    version=version)


def npy_bytes(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def zip_bytes(members):
    """A zip of ``members``: (name, data bytes) stored, or (name, Deflated) as given."""
    body, directory = b"", b""
    for name, data in members:
        if isinstance(data, Deflated):
            method, crc, raw, size = 8, data.crc, data.compressed, data.size
        else:
            method, crc, raw, size = 0, zlib.crc32(data), data, len(data)
        name = name.encode()
        fields = (20, 0, method, 0, 0x21, crc, len(raw), size, len(name))
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0,
                                 len(body)) + name
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + name + raw
    return body + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members),
                                          len(members), len(directory), len(body), 0)


class Deflated:
    """A deflated .npy member: ``header`` then ``zero_blocks`` x 16 MiB of zero bytes, made
    of one 16 KiB block repeated (each block starts a fresh deflate dictionary)."""

    def __init__(self, header, zero_blocks):
        block, zeros = 1 << 24, bytes(1 << 24)
        first = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = first.compress(header) + first.flush(zlib.Z_FULL_FLUSH)
        again = zlib.compressobj(9, zlib.DEFLATED, -15)
        repeated = again.compress(zeros) + again.flush(zlib.Z_FULL_FLUSH)
        self.compressed = head + repeated * zero_blocks + again.flush()
        self.size = len(header) + block * zero_blocks
        self.crc = zlib.crc32(header)
        for _ in range(zero_blocks):
            self.crc = zlib.crc32(zeros, self.crc)


BOMB_BLOCKS = 128            # 2 GiB of zeros in ~2 MB
BOMB_SHAPE = (1 << 15, 1 << 14)    # float32: exactly 2 GiB


def model_meta(layers, dtype="float32"):
    arch = {"format": "mlpfast.Sequential", "version": 1, "dtype": dtype, "layers": layers}
    return npy_bytes(np.frombuffer(json.dumps(arch).encode(), np.uint8))


def linear(n_in, n_out, bias=False):
    return {"type": "Linear", "in_features": n_in, "out_features": n_out, "bias": bias}


@pytest.fixture(scope="module")
def bomb():
    return Deflated(npy_header(BOMB_SHAPE), BOMB_BLOCKS)


@pytest.fixture(scope="module")
def checkpoint_members(tmp_path_factory):
    """(name, bytes) of the members of a real checkpoint of a 4-3 linear model."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    rng = np.random.default_rng(0)
    model = mf.MLP([4, 3], backend="numpy", seed=0)
    mf.fit(model, mf.optim.Adam(model.parameters()), mf.CrossEntropyLoss(),
           rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8), epochs=1,
           batch_size=4, progress=False, checkpoint=path)
    with zipfile.ZipFile(path) as zf:
        return [(n, zf.read(n)) for n in zf.namelist()]


# --- the must-show: 2 GiB bombs refused fast and small ---------------------------------------

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import mlpfast as mf
    from mlpfast.checkpoint import read_checkpoint
    warm, cases = sys.argv[1], json.loads(sys.argv[2])
    mf.load(warm, backend="numpy")                       # the code paths warm
    for kind, path in cases:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            (mf.load if kind == "model" else read_checkpoint)(path)
            error = None
        except ValueError as e:
            error = str(e)
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before   # KiB
        print(json.dumps([path, seconds, grown * 1024, error]))
""")


def test_2gib_bombs_are_refused_in_milliseconds_without_allocating(tmp_path, bomb,
                                                                   checkpoint_members):
    warm = tmp_path / "warm.npz"
    mf.MLP([4, 3], backend="numpy", seed=0).save(warm)
    stored_liar = npy_header(BOMB_SHAPE) + bytes(64)        # claims 2 GiB, holds 64 bytes
    files = {
        # the weight of a 4 -> 3 layer, compressed, expanding to 2 GiB
        "model-bomb": [("__mlpfast__.npy", model_meta([linear(4, 3)])),
                       ("0.weight.npy", bomb)],
        # the same, with an architecture that declares the 2 GiB weight
        "model-bomb-declared": [("__mlpfast__.npy", model_meta([linear(*BOMB_SHAPE[::-1])])),
                                ("0.weight.npy", bomb)],
        "model-stored-liar": [("__mlpfast__.npy", model_meta([linear(*BOMB_SHAPE[::-1])])),
                              ("0.weight.npy", stored_liar)],
        "checkpoint-bomb": [(n, bomb if n == "model/0.weight.npy" else data)
                            for n, data in checkpoint_members],
        "checkpoint-stored-liar": [(n, stored_liar if n == "model/0.weight.npy" else data)
                                   for n, data in checkpoint_members],
    }
    cases = []
    for name, members in files.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(zip_bytes(members))
        assert path.stat().st_size < 3 * MB
        cases.append([name.split("-")[0], str(path)])
    done = subprocess.run([sys.executable, "-c", MEASURE, str(warm), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(cases)
    for path, seconds, grown, error in results:
        print(f"{os.path.basename(path)}: {seconds * 1e3:.1f} ms, peak RSS +{grown / MB:.1f} MB:"
              f" {error}")
        assert error is not None, f"{path} was loaded"
        assert seconds < 0.1 and grown < 300 * MB, (path, seconds, grown, error)


def test_a_real_deflated_bomb_would_expand(bomb):
    # the bomb is what it claims: its stream inflates to the declared 2 GiB, with that CRC
    stream, total, crc = zlib.decompressobj(-15), 0, 0
    data = bomb.compressed
    while data:
        chunk = stream.decompress(data, 1 << 26)
        total, crc = total + len(chunk), zlib.crc32(chunk, crc)
        data = stream.unconsumed_tail
    assert stream.eof and total == bomb.size == 2 ** 31 + len(npy_header(BOMB_SHAPE))
    assert crc == bomb.crc


# --- headers that lie ------------------------------------------------------------------------

def write_model(tmp_path, weight, layers=None, extra=()):
    path = tmp_path / "m.npz"
    members = [("__mlpfast__.npy", model_meta(layers or [linear(4, 3)])),
               ("0.weight.npy", weight), *extra]
    path.write_bytes(zip_bytes(members))
    return path


@pytest.mark.parametrize("weight,message", [
    (npy_header((1 << 20, 1 << 20)) + bytes(48),
     r"0.weight.npy: expected float32 of shape \(3, 4\), the file holds float32 of shape "
     r"\(1048576, 1048576\)"),
    (npy_bytes(np.zeros((3, 4))), r"expected float32 of shape \(3, 4\), the file holds float64"),
    (npy_header((3, 4)) + bytes(40), r"header says \(3, 4\) of float32 \(48 bytes\) but 40 "
                                     r"bytes follow"),
    (npy_header((3, 4)) + bytes(52), r"but 52 bytes follow"),
    (npy_header((3, 4), descr="|O") + bytes(48), "dtype object is not allowed .*nothing is "
                                                 "unpickled"),
    (npy_header((3, 4), descr=[("a", "<f4")]) + bytes(48), "is not allowed"),
    (b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 31) + b"{", "header of 2147483648 bytes"),
    (b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"__import__('os')   \n",
     "corrupt .npy header"),
    (b"not a numpy array", "not a .npy array"),
], ids=["4-TiB-shape", "float64", "truncated", "trailing-bytes", "object", "structured",
        "2-GiB-header", "code-in-header", "not-npy"])
def test_model_weights_are_checked_from_their_header(tmp_path, weight, message):
    with pytest.raises(ValueError, match=message):
        mf.load(write_model(tmp_path, weight), backend="numpy")


def test_model_entries_must_be_the_architectures(tmp_path):
    good = npy_bytes(np.zeros((3, 4), np.float32))
    extra = [("0.bias.npy", npy_bytes(np.zeros(3, np.float32)))]   # the layer has no bias
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['0.bias'\]"):
        mf.load(write_model(tmp_path, good, extra=extra), backend="numpy")
    with pytest.raises(ValueError, match=r"layer 0 is declared Linear\(in_features=4, "
                                         r"out_features=3.0, bias=False\)"):
        mf.load(write_model(tmp_path, good, layers=[linear(4, 3.0)]), backend="numpy")
    model = mf.load(write_model(tmp_path, good), backend="numpy")     # the honest file
    assert np.array_equal(model.state_dict()["0.weight"], np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("name,data,message", [
    (None, None, None),
    ("1.num_batches_tracked.npy", npy_bytes(np.float64(3.0)),
     r"1.num_batches_tracked.npy: expected int64 of shape \(\), the file holds float64"),
    ("1.running_var.npy", npy_header((1 << 40,)) + bytes(12),
     r"1.running_var.npy: expected float32 of shape \(3,\)"),
], ids=["honest", "float-counter", "4-TiB-running-var"])
def test_batchnorm_state_is_checked_from_its_header(tmp_path, name, data, message):
    model = mf.MLP([4, 3, 2], batchnorm=True, seed=0, backend="numpy")
    model.save(tmp_path / "bn.npz")
    if name is None:
        loaded = mf.load(tmp_path / "bn.npz", backend="numpy").state_dict()
        for key, a in model.state_dict().items():
            assert loaded[key].dtype == a.dtype and np.array_equal(loaded[key], a), key
        return
    with zipfile.ZipFile(tmp_path / "bn.npz") as zf:
        members = [(n, data if n == name else zf.read(n)) for n in zf.namelist()]
    (tmp_path / "bn.npz").write_bytes(zip_bytes(members))
    with pytest.raises(ValueError, match=message):
        mf.load(tmp_path / "bn.npz", backend="numpy")


def test_entries_that_overlap_or_exceed_the_file_are_refused(tmp_path):
    # sizes in the zip directory beyond the file: refused before a member is opened
    path = write_model(tmp_path, npy_bytes(np.ones((3, 4), np.float32)))
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")                     # the weight's directory entry
    struct.pack_into("<2L", data, entry + 20, 1 << 31, 1 << 31)   # compressed and raw size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="0.weight.npy: entry sizes do not fit in the"):
        mf.load(path, backend="numpy")
    # three directory entries for one 1.7 KB member (an overlap bomb multiplies the data)
    blob = zip_bytes([("__mlpfast__.npy", model_meta([linear(20, 20)] * 3)),
                      ("0.weight.npy", npy_bytes(np.ones((20, 20), np.float32)))])
    entry, end = blob.rindex(b"PK\x01\x02"), blob.index(b"PK\x05\x06")
    directory = blob[blob.index(b"PK\x01\x02"):end] + b"".join(
        blob[entry:end].replace(b"0.weight", f"{i}.weight".encode()) for i in (1, 2))
    start = blob.index(b"PK\x01\x02")
    path.write_bytes(blob[:start] + directory + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, 4, 4, len(directory), start, 0))
    with pytest.raises(ValueError, match="entry sizes do not fit in the .*overlapping"):
        mf.load(path, backend="numpy")


# --- checkpoints -----------------------------------------------------------------------------

def write_checkpoint_with(tmp_path, members, name, data):
    path = tmp_path / "c.ckpt"
    path.write_bytes(zip_bytes([(n, data if n == name else d) for n, d in members]
                               + ([] if name in dict(members) else [(name, data)])))
    return path


@pytest.mark.parametrize("name,data,message", [
    ("model/0.weight.npy", npy_header((1 << 20, 1 << 20)) + bytes(48),
     r"model/0.weight.npy: expected float32 of shape \(3, 4\)"),
    ("model/0.bias.npy", npy_bytes(np.zeros(3, np.float64)), "expected float32 of shape"),
    ("optimizer/exp_avg.npy", npy_header((1 << 30,)) + bytes(60),
     r"is 4294967296 bytes, more than the 60 allowed"),
    ("order.npy", npy_bytes(np.arange(8)), "entries .* do not match the digests"),
    ("__checkpoint__.npy", npy_header((1 << 30,), descr="|u1") + bytes(10),
     "more than the 16777216 allowed"),
    ("__checkpoint__.npy", npy_bytes(np.zeros(3, np.int64)),
     r"expected uint8 of shape \(\*,\)"),
], ids=["4-TiB-weight", "float64-bias", "optimizer-state-too-long", "unlisted-order",
        "1-GiB-metadata", "int64-metadata"])
def test_checkpoint_entries_are_checked_from_their_header(tmp_path, checkpoint_members, name,
                                                          data, message):
    with pytest.raises(ValueError, match=message):
        read_checkpoint(write_checkpoint_with(tmp_path, checkpoint_members, name, data))


def test_checkpoint_architecture_gives_the_parameter_shapes(tmp_path, checkpoint_members):
    members = dict(checkpoint_members)
    meta = json.loads(np.load(io.BytesIO(members[META_ENTRY + ".npy"])).tobytes())
    meta["architecture"]["layers"][0]["in_features"] = 5          # 0.weight is (3, 4)
    blob = npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    path = write_checkpoint_with(tmp_path, checkpoint_members, META_ENTRY + ".npy", blob)
    with pytest.raises(ValueError, match=r"expected float32 of shape \(3, 5\), the file holds "
                                         r"float32 of shape \(3, 4\)"):
        read_checkpoint(path)
    (tmp_path / "honest.ckpt").write_bytes(zip_bytes(checkpoint_members))
    assert read_checkpoint(tmp_path / "honest.ckpt").progress["global_step"] == 2


# --- speech feature folders ------------------------------------------------------------------

def feature_folder(tmp_path, features, labels):
    for sub, data in (("mfcc", features), ("transcript", labels)):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / "u.npy").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("features,labels,message", [
    (npy_header((1 << 40, 28)) + bytes(112), npy_bytes(np.array(["a"] * 4)),
     r"mfcc/u.npy: \(1099511627776, 28\) of float32 is 123145302310912 bytes, more than the "
     r"2147483648 allowed"),
    (npy_header((1 << 20, 28)) + bytes(112), npy_bytes(np.array(["a"] * 4)),
     r"mfcc/u.npy: header says \(1048576, 28\) of float32 .* but 112 bytes follow"),
    (npy_bytes(np.zeros((4, 3), np.int64)), npy_bytes(np.array(["a"] * 4)),
     r"mfcc/u.npy: expected dtype kind in 'f' of shape \(\*, \*\)"),
    (npy_bytes(np.zeros((4, 3), np.float32)), npy_bytes(np.array(["a"] * 5)),
     r"transcript/u.npy: expected dtype kind in 'iuU' of shape \(4,\), the file holds <U1 of "
     r"shape \(5,\)"),
    (npy_bytes(np.zeros((4, 3), np.float32)), npy_header((4,), descr="|O") + bytes(32),
     "transcript/u.npy: dtype object is not allowed"),
], ids=["over-the-cap", "truncated", "integer-features", "labels-of-another-length",
        "pickled-labels"])
def test_feature_folder_files_are_checked_from_their_header(tmp_path, features, labels,
                                                            message):
    folder = feature_folder(tmp_path, features, labels)
    with pytest.raises(ValueError, match=message):
        speech.SpeechFrames.from_folder(folder, context=1, phones=["a"])


def test_feature_folder_reads_big_endian_and_fortran_files_like_numpy(tmp_path, rng):
    features = np.asfortranarray(rng.standard_normal((6, 3)).astype(">f4"))
    folder = feature_folder(tmp_path, npy_bytes(features), npy_bytes(np.array([0, 1, -1] * 2)))
    data = speech.SpeechFrames.from_folder(folder, context=0, phones=["a", "b"],
                                           normalize=False)
    assert np.array_equal(data.features, features.astype(np.float32))
    assert data.labels.tolist() == [0, 1, 0, 1]


def test_npy_reader_round_trips_what_numpy_writes(tmp_path, rng):
    for array in (rng.standard_normal((3, 5)).astype(np.float32), np.arange(7),
                  np.array(["sil", "aa"]), np.zeros((0, 4)), np.float64(2.5),
                  np.asfortranarray(rng.standard_normal((4, 2))), np.array([True, False])):
        np.save(tmp_path / "a.npy", array)
        got = npz.load_npy(tmp_path / "a.npy", npz.Expect())
        assert got.dtype == array.dtype and np.array_equal(got, array)


# --- mutation-testing gaps: the version byte, the max_bytes cap at its boundary ----------

def test_npy_versions_2_and_3_read_and_other_versions_are_refused(tmp_path):
    array = np.arange(6.0).reshape(2, 3)
    for version in ((2, 0), (3, 0)):
        f = io.BytesIO()
        np.lib.format.write_array(f, array, version=version)
        (tmp_path / "a.npy").write_bytes(f.getvalue())
        assert np.array_equal(npz.load_npy(tmp_path / "a.npy", npz.Expect()), array)
    v1 = npy_bytes(array)
    for major in (0, 4):
        (tmp_path / "a.npy").write_bytes(v1[:6] + bytes([major, 0]) + v1[8:])
        with pytest.raises(ValueError, match=rf"unsupported \.npy version {major}\.0"):
            npz.load_npy(tmp_path / "a.npy", npz.Expect())


def test_max_bytes_is_a_cap_on_the_data_bytes(tmp_path):
    np.save(tmp_path / "ten.npy", np.zeros(10))                   # 80 bytes
    np.save(tmp_path / "eleven.npy", np.zeros(11))                # 88 bytes
    assert npz.load_npy(tmp_path / "ten.npy", npz.Expect(max_bytes=80)).shape == (10,)
    with pytest.raises(ValueError, match=r"eleven.npy: \(11,\) of float64 is 88 bytes, more "
                                         r"than the 80 allowed"):
        npz.load_npy(tmp_path / "eleven.npy", npz.Expect(max_bytes=80))


def test_an_exact_dtype_is_accepted_in_either_byte_order(tmp_path, rng):
    array = rng.standard_normal((3, 4))
    np.save(tmp_path / "big.npy", array.astype(">f8"))
    got = npz.load_npy(tmp_path / "big.npy", npz.Expect(dtype=np.float64, shape=(3, 4)))
    assert got.dtype == np.float64 and got.dtype.isnative and np.array_equal(got, array)
    with pytest.raises(ValueError, match=r"expected float32 of shape \(3, 4\), the file holds "
                                         r">f8"):
        npz.load_npy(tmp_path / "big.npy", npz.Expect(dtype=np.float32, shape=(3, 4)))


def test_a_member_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.npz"
    path.write_bytes(zip_bytes([("w.npy", npy_bytes(np.zeros(3))),
                                ("w.npy", npy_bytes(np.ones(3)))]))
    with pytest.raises(ValueError, match=r"twice.npz:w.npy: duplicate entry"):
        npz.NpzReader(path, "model")


# --- mutation-testing gaps: headers NumPy refuses, the header cap, the zip directory -------

GOOD = {"descr": "<f4", "fortran_order": False, "shape": (3,)}


@pytest.mark.parametrize("fields", [
    dict(GOOD, extra=1), {"descr": "<f4", "shape": (3,)}, dict(GOOD, fortran_order=0),
    dict(GOOD, fortran_order="no"), dict(GOOD, shape=(True, 3)), dict(GOOD, shape=[3]),
    dict(GOOD, shape=(-1,)),
], ids=["extra-key", "missing-key", "fortran-0", "fortran-text", "bool-size", "list-shape",
        "negative-size"])
def test_headers_numpy_refuses_are_refused(tmp_path, fields):
    data = npy_text(fields) + bytes(12)                           # 3 float32 values
    with pytest.raises((ValueError, TypeError)):                  # the reference
        np.load(io.BytesIO(data), allow_pickle=False)
    (tmp_path / "a.npy").write_bytes(data)
    with pytest.raises(ValueError, match=r"a.npy: corrupt \.npy header"):
        npz.load_npy(tmp_path / "a.npy", npz.Expect())


def test_a_header_of_max_header_bytes_is_read_and_one_more_is_refused(tmp_path):
    # NumPy's own limit: a header text of 10000 bytes loads, of 10001 it refuses
    for length in (npz.MAX_HEADER_BYTES, npz.MAX_HEADER_BYTES + 1):
        data = npy_text(GOOD, pad_to=length, version=2) + np.arange(3, dtype="<f4").tobytes()
        (tmp_path / "a.npy").write_bytes(data)
        if length == npz.MAX_HEADER_BYTES:
            expected = np.load(io.BytesIO(data), allow_pickle=False)
            got = npz.load_npy(tmp_path / "a.npy", npz.Expect(dtype=np.float32, shape=(3,)))
            assert np.array_equal(got, expected) and np.array_equal(got, [0, 1, 2])
            continue
        with pytest.raises(ValueError, match="large"):
            np.load(io.BytesIO(data), allow_pickle=False)
        with pytest.raises(ValueError, match=r"\.npy header of 10001 bytes \(at most 10000"):
            npz.load_npy(tmp_path / "a.npy", npz.Expect())


def test_a_file_ending_inside_its_header_is_truncated(tmp_path):
    whole = npy_bytes(np.zeros(3, np.float32))               # header text: 118 bytes
    (tmp_path / "a.npy").write_bytes(whole[:60])
    with pytest.raises(ValueError, match=r"a.npy: truncated \.npy header"):
        npz.load_npy(tmp_path / "a.npy", npz.Expect())


def test_an_array_of_another_rank_is_refused_even_with_the_same_bytes(tmp_path):
    # (3, 4, 1) and (12,) hold the 48 bytes of a (3, 4) float32 array
    for shape in ((3, 4, 1), (12,), (3,)):
        np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
        with pytest.raises(ValueError, match=rf"expected float32 of shape \(3, 4\), the file "
                                             rf"holds float32 of shape {re.escape(str(shape))}"):
            npz.load_npy(tmp_path / "a.npy", npz.Expect(dtype=np.float32, shape=(3, 4)))
    np.save(tmp_path / "a.npy", np.ones((3, 7), np.float32))        # None: any length
    assert npz.load_npy(tmp_path / "a.npy", npz.Expect(shape=(3, None))).shape == (3, 7)


def test_a_stored_entry_whose_sizes_disagree_is_refused_before_it_is_opened(tmp_path):
    # the directory says the stored (uncompressed) entry expands to 1 GiB: a stored entry
    # holds as many bytes as it takes, so file_size must equal compress_size
    path = tmp_path / "liar.npz"
    data = bytearray(zip_bytes([("w.npy", npy_header((1 << 28,)) + bytes(64))]))
    entry = data.rindex(b"PK\x01\x02")
    struct.pack_into("<L", data, entry + 24, (1 << 30) + 128)            # file_size only
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:                                    # the reference
        info = zf.getinfo("w.npy")
        assert info.file_size == (1 << 30) + 128 and info.compress_size < 300
    with pytest.raises(ValueError, match="liar.npz:w.npy: entry sizes do not fit in the"):
        npz.NpzReader(path, "model")


def test_reading_an_entry_the_file_lacks_names_it(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, w=np.arange(3.0))
    with npz.NpzReader(path, "model") as reader:
        assert reader.names == ["w"]
        assert np.array_equal(reader.read("w", npz.Expect()), np.arange(3.0))
        with pytest.raises(ValueError, match=r"a.npz: no entry 'b.npy'"):
            reader.read_all({"w": npz.Expect(), "b": npz.Expect()})


@pytest.mark.parametrize("layer", [
    linear(4, 3, bias=1), linear(4, 3, bias="yes"), linear(4, 3, bias=None),
    {"type": "BatchNorm1d", "num_features": 3, "affine": 0},
], ids=["bias-1", "bias-text", "bias-null", "affine-0"])
def test_layer_flags_must_be_true_or_false(layer):
    with pytest.raises(ValueError, match=r"w: layer 0 is declared .*expected positive "
                                         r"integers and true/false"):
        npz.state_layout({"layers": [layer]}, "w")
    honest = dict(layer, **{"bias" if "bias" in layer else "affine": True})
    assert sorted(npz.state_layout({"layers": [honest]}, "w"))[0].startswith("0.")
