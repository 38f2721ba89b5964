"""Checkpoint files: atomic replacement, verification on read, no pickles, and a writer
killed with SIGKILL at random moments always leaving the previous checkpoint intact."""
import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib

import numpy as np
import pytest

import mlpfast as mf
from mlpfast import npz
from mlpfast.checkpoint import (META_ENTRY, atomic_write, read_checkpoint, training_arrays,
                                write_checkpoint)


def _arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 3, 50)


def _trained(tmp_path, every="epoch", epochs=2):
    x, y = _arrays()
    model = mf.MLP([6, 8, 3], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-2)
    path = tmp_path / "run.ckpt"
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=epochs, batch_size=16, seed=1,
           progress=False, checkpoint=path, checkpoint_every=every)
    return model, opt, path


def test_checkpoint_holds_model_optimizer_progress_rng(tmp_path):
    model, opt, path = _trained(tmp_path)
    ckpt = read_checkpoint(path)
    for name, p in model.named_parameters():
        assert np.array_equal(ckpt.model_state()[name], p.data)
    assert list(ckpt.model_state()) == list(model.state_dict())     # the model's order
    flat = np.concatenate([a.ravel() for a in ckpt.model_state().values()])
    assert np.array_equal(flat, model.flat_data)
    state = ckpt.optimizer_state()
    assert state["type"] == "Adam" and state["step"] == opt.step_count == 8
    for name, a in opt.state_dict()["state"].items():
        assert np.array_equal(state["state"][name], a)
    assert ckpt.progress == {**ckpt.progress, "epochs_done": 2, "batches_done": 0,
                             "global_step": 8}
    x, y = _arrays()
    assert ckpt.meta["data"] == {"n": 50, "num_features": 6, "batch_size": 16, "shuffle": True,
                                 "precision": "fp32",
                                 "contents": [zlib.crc32(x), zlib.crc32(y.astype(np.int64))]}
    assert ckpt.meta["rng"]["bit_generator"] == "PCG64"
    assert [r["epoch"] for r in ckpt.meta["history"]] == [1, 2]
    assert "order" not in ckpt.arrays          # epoch boundary: the next order is not drawn


def test_mid_epoch_checkpoint_holds_the_epoch_order(tmp_path):
    _, _, path = _trained(tmp_path, every=3, epochs=1)     # 4 steps: written at 3, then final
    ckpt = read_checkpoint(path)
    assert (ckpt.progress["epochs_done"], ckpt.progress["batches_done"]) == (1, 0)
    _, _, path = _trained(tmp_path, every=3, epochs=2)     # 8 steps: 3, 6, final
    ckpt = read_checkpoint(path)
    assert ckpt.progress["global_step"] == 8
    model = mf.MLP([6, 8, 3], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-2)
    write_checkpoint(tmp_path / "mid.ckpt", dict(ckpt.meta, history=ckpt.meta["history"][:1],
                                                progress=dict(ckpt.progress, epochs_done=1,
                                                              batches_done=2)), training_arrays(
        model, opt, order=np.arange(50)[::-1]))
    mid = read_checkpoint(tmp_path / "mid.ckpt")
    assert np.array_equal(mid.arrays["order"], np.arange(50)[::-1])


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_run_whose_validation_loss_overflows_still_checkpoints_and_resumes(tmp_path):
    """A float32 overflow in the validation logits gives a non-finite val_loss: the history
    holds it as fit returns it, written and read back (NaN / Infinity in the JSON)."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.arange(8) % 2
    val = (np.full((8, 4), 3e38, np.float32), np.zeros(8, np.int64))
    model = mf.MLP([4, 2], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.ckpt"
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=4,
                     val=val, progress=False, checkpoint=path)
    assert not np.isfinite(history["val_loss"][0])
    np.testing.assert_equal(read_checkpoint(path).meta["history"][0]["val_loss"],
                            history["val_loss"][0])
    resumed = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=4,
                     val=val, progress=False, checkpoint=path, resume=path)
    assert len(resumed["val_loss"]) == 2 and read_checkpoint(path).progress["epochs_done"] == 2


def test_metadata_too_long_to_read_back_is_refused_before_writing(tmp_path):
    model, opt, path = _trained(tmp_path)
    before = path.read_bytes()
    meta = dict(read_checkpoint(path).meta, history=[{"note": "x" * 1000}] * 17000)
    with pytest.raises(ValueError, match=r"run.ckpt: its JSON entry would take \d+ bytes, "
                                         r"more than the 16777216 that reading accepts \(the "
                                         r"history holds 17000 epochs\); the file is unchanged"):
        write_checkpoint(path, meta, training_arrays(model, opt))
    assert path.read_bytes() == before


def test_checkpoint_is_a_plain_npz_without_pickles(tmp_path):
    _, _, path = _trained(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert META_ENTRY in npz.files and "model/0.weight" in npz.files
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]           # the temporary file is gone
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def _fail_with(error_number):
    def fail(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))
    return fail


class _FillingDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: a write past them fails with ENOSPC."""
    room = 100

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("fault", ["write", "fsync", "rename", "open", "read-only"])
def test_a_failing_write_raises_a_clear_oserror_and_keeps_the_checkpoint(tmp_path, fault,
                                                                         monkeypatch):
    _, _, path = _trained(tmp_path)
    before = path.read_bytes()
    ckpt = read_checkpoint(path)
    error_number = errno.EACCES if fault in ("open", "read-only") else errno.ENOSPC
    if fault == "write":              # the disk fills up halfway through the zip
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: io.BufferedWriter(
            _FillingDisk(fd, "wb")))
    elif fault == "read-only":
        os.chmod(tmp_path, 0o555)
        if os.access(tmp_path, os.W_OK):
            os.chmod(tmp_path, 0o755)
            pytest.skip("this user (root) can write into a read-only folder")
    else:
        monkeypatch.setattr(os, {"fsync": "fsync", "rename": "replace", "open": "open"}[fault],
                            _fail_with(error_number))
    try:
        with pytest.raises(OSError) as raised:
            write_checkpoint(path, ckpt.meta, ckpt.arrays)
    finally:
        monkeypatch.undo()
        os.chmod(tmp_path, 0o755)
    assert raised.value.errno == error_number
    assert str(raised.value) == (f"[Errno {error_number}] could not write {path}: "
                                 f"{os.strerror(error_number)}; the file is unchanged")
    assert type(raised.value) is (PermissionError if fault in ("open", "read-only")
                                  else OSError)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.ckpt"]
    assert read_checkpoint(path).progress == ckpt.progress


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".f.bin.{dead.pid}.0000.tmp"
    live = tmp_path / f".f.bin.{os.getppid()}.0000.tmp"     # a writer that still runs
    other = tmp_path / f".g.bin.{dead.pid}.0000.tmp"         # another target's
    # a live writer of the target f"f.bin.{dead.pid}", whose name begins like a stale one
    sibling = tmp_path / f".f.bin.{dead.pid}.{os.getppid()}.0000.tmp"
    for p in (stale, live, other, sibling):
        p.write_bytes(b"partial")
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert not stale.exists() and live.exists() and other.exists() and sibling.exists()


def test_a_write_into_a_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"could not write .*x\.npz: no directory "):
        atomic_write(tmp_path / "no" / "x.npz", lambda f: f.write(b"x"))
    with pytest.raises(FileNotFoundError, match="no directory"):
        mf.MLP([2, 2], backend="numpy", seed=0).save(tmp_path / "no" / "model.npz")


@pytest.mark.parametrize("damage,message", [
    ("flip", "SHA-256|Bad CRC|corrupt"),
    ("truncate", "not a readable checkpoint|corrupt|File is not a zip"),
    ("garbage", "not a checkpoint"),
    ("empty", "not a checkpoint"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, message):
    _, _, path = _trained(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":                  # one bit inside the first weight's values
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("model/0.weight.npy")
        data[info.header_offset + 30 + len(info.filename) + 200] ^= 0x10
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all" * 10)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=message):
        read_checkpoint(path)


def test_digest_catches_a_consistent_rewrite_of_one_array(tmp_path):
    """An entry replaced by a valid .npy with other values (CRC fine) fails its SHA-256."""
    _, _, path = _trained(tmp_path)
    ckpt = read_checkpoint(path)
    arrays = {f"{k}": v for k, v in ckpt.arrays.items()}
    arrays["model/0.bias"] = arrays["model/0.bias"] + 1
    blob = np.frombuffer(__import__("json").dumps(ckpt.meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "forged.npz", **{META_ENTRY: blob}, **arrays)
    with pytest.raises(ValueError, match="'model/0.bias' fails its SHA-256"):
        read_checkpoint(tmp_path / "forged.npz")


def test_pickled_compressed_and_foreign_files_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", **{META_ENTRY: np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="dtype object is not allowed"):
        read_checkpoint(tmp_path / "obj.npz")
    np.savez_compressed(tmp_path / "z.npz", **{META_ENTRY: np.zeros(3, np.uint8)})
    with pytest.raises(ValueError, match="compressed"):
        read_checkpoint(tmp_path / "z.npz")
    model = mf.MLP([2, 2], backend="numpy", seed=0)
    model.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="not an mlpfast checkpoint"):
        read_checkpoint(tmp_path / "model.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_bad_checkpoint_arguments_are_refused_before_training(tmp_path):
    model = mf.MLP([2, 2], backend="numpy", seed=0)
    opt = mf.optim.SGD(model.parameters(), lr=0.1)
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    before = model.flat_data.copy()
    for every in (0, -1, 1.5, "step", True):
        with pytest.raises(ValueError, match="checkpoint_every must be"):
            mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=2,
                   checkpoint=tmp_path / "c", checkpoint_every=every, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=2,
               checkpoint=tmp_path / "no" / "such" / "dir" / "c", progress=False)
    with pytest.raises(ValueError, match="is a directory"):
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=2,
               checkpoint=tmp_path, progress=False)
    assert np.array_equal(model.flat_data, before) and opt.step_count == 0


# --- SIGKILL while writing ---------------------------------------------------------------

KILLS = 20
CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import mlpfast as mf
    path, epochs = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 64)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    model = mf.MLP([64, 256, 256, 10], backend="numpy", seed=0)   # 85k params: 1 MB files
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    print("ready", flush=True)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=epochs, batch_size=4, seed=7,
           progress=False, checkpoint=path, checkpoint_every=1,
           resume=path if os.path.exists(path) else None)
""")


def test_sigkill_during_checkpoint_writes_never_corrupts_and_resume_is_exact(tmp_path):
    """Kill a training run that writes a checkpoint after every step, KILLS times at random
    moments; after each kill the file must verify (zip CRCs + SHA-256 + schema), never go
    back in time, and the run resumed after all kills must equal an uninterrupted one."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "run.ckpt"
    epochs = 10                                   # 24 steps per epoch, 240 in all
    rng = np.random.default_rng(2024)
    steps_seen, during_write, kills = [], 0, 0
    for _ in range(3 * KILLS):
        if kills == KILLS:
            break
        child = subprocess.Popen([sys.executable, str(script), str(path), str(epochs)],
                                 stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        finished = child.poll() is not None
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        if finished:                  # a fast machine finished the run: start a new one
            assert child.returncode == 0 and read_checkpoint(path).progress[
                "global_step"] == epochs * 24
            path.unlink()
            steps_seen.append("restart")
            continue
        kills += 1
        during_write += any(name.endswith(".tmp") for name in os.listdir(tmp_path))
        if path.exists():
            step = read_checkpoint(path).progress["global_step"]
            assert not steps_seen or steps_seen[-1] == "restart" or step >= steps_seen[-1]
            steps_seen.append(step)
    assert kills == KILLS
    # the last run completes from whatever the kills left
    subprocess.run([sys.executable, str(script), str(path), str(epochs)], check=True,
                   stdout=subprocess.DEVNULL)
    final = read_checkpoint(path)
    assert final.progress["global_step"] == epochs * 24

    rng_data = np.random.default_rng(0)
    x = rng_data.normal(size=(96, 64)).astype(np.float32)
    y = rng_data.integers(0, 10, 96)
    model = mf.MLP([64, 256, 256, 10], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=epochs, batch_size=4,
                     seed=7, progress=False)
    for name, p in model.named_parameters():
        assert np.array_equal(final.model_state()[name], p.data), name
    for name, a in opt.state_dict()["state"].items():
        assert np.array_equal(final.optimizer_state()["state"][name], a), name
    assert [r["loss"] for r in final.meta["history"]] == history["loss"]
    print(f"\n{KILLS} kills, {during_write} left a partial temporary file (killed mid-write), "
          f"{sum(isinstance(s, int) for s in steps_seen)} found a checkpoint; steps at "
          f"kills: {steps_seen}")
    assert during_write >= 1, "no kill landed inside a write: the test proves nothing"


def test_model_save_is_atomic_too(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    model = mf.MLP([3, 2], backend="numpy", seed=0)
    model.save(path)
    before = path.read_bytes()

    def crash_mid_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        mf.MLP([3, 2], backend="numpy", seed=1).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.npz"]
    monkeypatch.undo()
    assert np.array_equal(mf.load(path, backend="numpy").flat_data, model.flat_data)


# --- mutation-testing gaps: what read_checkpoint refuses, at its boundaries ------------------

def _rewritten(tmp_path, meta_edit=None, arrays_edit=None):
    """The checkpoint of ``_trained`` (2 epochs of 4 steps, 50 samples) written again with
    its metadata and arrays edited; write_checkpoint computes the digests anew."""
    _, _, path = _trained(tmp_path)
    ckpt = read_checkpoint(path)
    meta = json.loads(json.dumps({k: v for k, v in ckpt.meta.items() if k != "sha256"}))
    arrays = {name: a.copy() for name, a in ckpt.arrays.items()}
    (meta_edit or (lambda m: None))(meta)
    (arrays_edit or (lambda a: None))(arrays)
    write_checkpoint(path, meta, arrays)
    return path


def _mid_epoch(meta, batches_done=2):
    meta["progress"].update(epochs_done=1, batches_done=batches_done)
    del meta["history"][1:]


def test_metadata_of_exactly_the_readable_size_is_written_and_read_back(tmp_path):
    # the writer's cap is the reader's: a JSON entry of MAX_META_BYTES (16 MiB) reads back
    model, opt, path = _trained(tmp_path)
    arrays = training_arrays(model, opt)
    meta = dict(read_checkpoint(path).meta, note="")
    digests = {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
               for name, a in arrays.items()}
    size = len(json.dumps(dict(meta, sha256=digests)).encode())
    meta["note"] = "x" * (npz.MAX_META_BYTES - size)
    write_checkpoint(path, meta, arrays)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(META_ENTRY + ".npy").file_size == 128 + npz.MAX_META_BYTES
    assert read_checkpoint(path).meta["note"] == meta["note"]
    meta["note"] += "x"                                     # one byte more: refused
    with pytest.raises(ValueError, match=r"would take 16777217 bytes, more than the 16777216"):
        write_checkpoint(path, meta, arrays)


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_a_checkpoint_of_another_dtype_is_refused(tmp_path, dtype):
    def to_dtype(arrays):
        arrays.update({k: a.astype(dtype) for k, a in arrays.items() if "/" in k})
    path = _rewritten(tmp_path, lambda m: m["architecture"].update(dtype=dtype), to_dtype)
    with pytest.raises(ValueError, match=r"architecture.dtype must be 'float32' or 'float64'"):
        read_checkpoint(path)


def test_an_entry_with_a_digest_but_missing_from_the_file_is_refused(tmp_path):
    _, _, path = _trained(tmp_path)
    ckpt = read_checkpoint(path)
    blob = np.frombuffer(json.dumps(ckpt.meta).encode(), dtype=np.uint8)
    arrays = {k: a for k, a in ckpt.arrays.items() if k != "optimizer/exp_avg_sq"}
    np.savez(tmp_path / "short.npz", **{META_ENTRY: blob}, **arrays)
    with pytest.raises(ValueError, match=r"entries \[.*\] do not match the digests \[.*"
                                         r"'optimizer/exp_avg_sq'"):
        read_checkpoint(tmp_path / "short.npz")


@pytest.mark.parametrize("name", ["model/1.weight", "best/9.bias", "optimizer/", "extra"])
def test_an_entry_the_architecture_does_not_declare_is_refused(tmp_path, name):
    # layers of MLP([6, 8, 3]): 0 Linear, 1 ReLU (no state), 2 Linear
    path = _rewritten(tmp_path, arrays_edit=lambda a: a.update({name: np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=rf"unexpected entry '{name}' \(the architecture has "
                                         rf"parameters and buffers \['0.bias', '0.weight', "
                                         rf"'2.bias', '2.weight'\]\)"):
        read_checkpoint(path)


@pytest.mark.parametrize("length", [49, 51])
def test_the_order_must_hold_one_index_per_sample(tmp_path, length):
    path = _rewritten(tmp_path, _mid_epoch, lambda a: a.update(order=np.arange(length)))
    with pytest.raises(ValueError, match=rf"order.npy: expected int64 of shape \(50,\), the "
                                         rf"file holds int64 of shape \({length},\)"):
        read_checkpoint(path)
    path = _rewritten(tmp_path, _mid_epoch, lambda a: a.update(order=np.arange(50)[::-1]))
    assert np.array_equal(read_checkpoint(path).arrays["order"], np.arange(50)[::-1])


def test_a_mid_epoch_checkpoint_without_its_order_is_refused(tmp_path):
    path = _rewritten(tmp_path, _mid_epoch)
    with pytest.raises(ValueError, match="mid-epoch checkpoint without an order"):
        read_checkpoint(path)
    # the last batch of an epoch (batches_done == 4 of 4 steps) is mid-epoch too
    path = _rewritten(tmp_path, lambda m: _mid_epoch(m, 4), lambda a: a.update(
        order=np.arange(50)))
    assert read_checkpoint(path).progress["batches_done"] == 4


@pytest.mark.parametrize("epochs", [[2, 1], [1, 1], [0, 1]])
def test_history_records_are_numbered_from_one(tmp_path, epochs):
    def renumber(meta):
        for record, epoch in zip(meta["history"], epochs):
            record["epoch"] = epoch
    path = _rewritten(tmp_path, renumber)
    first_bad = next(i for i, e in enumerate(epochs, 1) if e != i)
    with pytest.raises(ValueError, match=rf"history record {first_bad} must hold its epoch"):
        read_checkpoint(path)


def test_counts_up_to_the_int64_maximum_are_read(tmp_path):
    largest = int(np.iinfo(np.int64).max)                            # 2**63 - 1
    path = _rewritten(tmp_path, lambda m: m["progress"].update(global_step=largest))
    assert read_checkpoint(path).progress["global_step"] == largest
    path = _rewritten(tmp_path, lambda m: m["progress"].update(global_step=largest + 1))
    with pytest.raises(ValueError, match="progress.global_step must be an integer >= 0"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["model/2.weight", "best/0.bias", "optimizer/exp_avg",
                                  "optimizer/exp_avg_sq", "order"])
def test_every_entry_is_checked_against_its_digest(tmp_path, name):
    """Each kind of entry replaced by a valid .npy of other values (zip CRC fine) fails its
    SHA-256: the model, early stopping's best model, the optimizer state, the order."""
    def add_best_and_order(arrays):
        arrays.update({"best/" + k[len("model/"):]: a * 2 for k, a in arrays.items()
                       if k.startswith("model/")}, order=np.arange(50))
    path = _rewritten(tmp_path, _mid_epoch, add_best_and_order)
    ckpt = read_checkpoint(path)
    arrays = dict(ckpt.arrays)
    arrays[name] = arrays[name][::-1].copy()        # the order stays a permutation
    blob = np.frombuffer(json.dumps(ckpt.meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "forged.npz", **{META_ENTRY: blob}, **arrays)
    with pytest.raises(ValueError, match=rf"entry '{name}' fails its SHA-256 check"):
        read_checkpoint(tmp_path / "forged.npz")
