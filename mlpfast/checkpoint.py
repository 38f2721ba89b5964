"""Training checkpoints: one file, replaced atomically, read without unpickling.

A checkpoint is an uncompressed ``.npz`` (a zip of ``.npy`` entries, ZIP_STORED):

    __checkpoint__     uint8 bytes of the JSON object below
    model/<name>       each parameter and buffer in PyTorch's layout ("0.weight" is (out, in))
    best/<name>        the same for early stopping's best model (when it has one)
    optimizer/<name>   each flat optimizer state array ("exp_avg", "momentum_buffer", ...)
    order              int64 (N,): the sample order of the epoch in progress (mid-epoch only)

    {"format": "mlpfast.checkpoint", "version": 1,
     "architecture": model.architecture(),        # layers, dtype and precision
     "optimizer": {"type", "step", "hyper"},
     "loss": "CrossEntropyLoss" | "MSELoss",
     "data": {"n", "num_features", "batch_size", "shuffle", "precision", "contents"},
                                                  # the run's precision (absent: "fp32");
                                                  # contents: CRC-32s of x and y, or a
                                                  # dataset's fingerprint() (or null)
     "progress": {"epochs_done", "batches_done", "global_step", "loss_sum", "correct",
                  "seconds"},                     # batches_done: of epoch epochs_done + 1
     "rng": numpy bit_generator.state,            # after drawing the order of that epoch
     "history": [per-epoch records of the finished epochs],
     "sha256": {entry: SHA-256 of its array bytes}}

Writing (``atomic_write``): a temporary file in the same directory, flush, fsync, rename
over the target, fsync the directory. A crash at any moment leaves either the old file or
the new one, never a mixture. Reading (``read_checkpoint``, through ``mlpfast.npz``)
checks the schema of the JSON entry, then each array entry's ``.npy`` header against the
layout it implies (names, dtype, shapes from the architecture) and against its size,
before any array data is read; then the zip CRCs and every SHA-256. Any problem raises a
``ValueError`` naming it. The digests detect corruption, not tampering: whoever can write
the file can write matching digests.
"""
import errno
import hashlib
import json
import math
import os
import re
import secrets

import numpy as np

from . import npz
from .backend import to_numpy

FORMAT, VERSION = "mlpfast.checkpoint", 1
META_ENTRY = "__checkpoint__"
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


# --- atomic replacement ----------------------------------------------------------------

def atomic_write(path, write):
    """Replace ``path`` by what ``write(file)`` writes, atomically and durably.

    The bytes go to ``.<name>.<pid>.<random>.tmp`` beside ``path`` (same filesystem, so
    the rename is atomic), are flushed and fsync'ed, then renamed over ``path``; the
    directory is fsync'ed so the rename itself survives a power loss. Temporary files
    left by killed writers of the same target are removed first.

    If anything fails (a full disk, a read-only folder, an error in ``write``), the
    temporary file is removed and ``path`` keeps its previous contents; an OSError is
    raised again as an OSError of the same errno (and subclass) naming ``path``.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"could not write {path}: no directory "
                                              f"{directory}")
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _remove_stale_temporaries(directory, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode honours umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:             # never created; else a later write removes it
            pass
        if isinstance(e, OSError):
            raise _naming(path, e) from e
        raise
    _fsync_directory(directory)


def unwritable_file(label, path):
    """Why ``path`` cannot be written as a file, as a message naming it ``label`` (an
    argument or option), or None: its folder must exist and the path not be a folder."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        return f"{label} {path}: directory {directory} {problem}"
    if os.path.isdir(path):
        return f"{label} {path} is a directory; give a file path"
    return None


def _naming(path, error):
    """The OSError ``error`` again with a message naming ``path``: same errno, so the same
    subclass (PermissionError for EACCES, ...)."""
    message = f"could not write {path}: {error.strerror or error}; the file is unchanged"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:                 # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory, name):
    """Delete ``.<name>.<pid>.<hex>.tmp`` files whose writing process no longer exists
    (exactly that form: ``.run.9.<pid>.<hex>.tmp`` belongs to the target ``run.9``)."""
    temporary = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[0-9a-f]+\.tmp")
    for entry in os.listdir(directory):
        match = temporary.fullmatch(entry)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_exists(pid):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except FileNotFoundError:
            pass


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- writing -------------------------------------------------------------------------------

def write_checkpoint(path, meta, arrays):
    """Write ``arrays`` ({entry: NumPy array}) and the JSON-able ``meta`` to ``path``.

    Adds the format, version and the SHA-256 of every array to ``meta``.
    """
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}   # 0-d stays 0-d
    meta = dict(meta, format=FORMAT, version=VERSION,
                sha256={name: _digest(a) for name, a in arrays.items()})
    # non-finite floats (a validation loss that overflowed) as NaN / Infinity, which
    # Python's json reads back
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if blob.nbytes > npz.MAX_META_BYTES:
        raise ValueError(f"checkpoint {os.fspath(path)}: its JSON entry would take "
                         f"{blob.nbytes} bytes, more than the {npz.MAX_META_BYTES} that "
                         f"reading accepts (the history holds "
                         f"{len(meta.get('history', ()))} epochs); the file is unchanged")

    def write(f):
        np.savez(f, **{META_ENTRY: blob}, **arrays)

    atomic_write(path, write)


def training_arrays(model, optimizer, order=None):
    """{entry: host array} of the parameters and buffers (model.state_dict()), the optimizer
    state and the data order."""
    arrays = {f"model/{name}": a for name, a in model.state_dict().items()}
    arrays.update({f"optimizer/{name}": to_numpy(a)
                   for name, a in optimizer.state_dict()["state"].items()})
    if order is not None:
        arrays["order"] = np.asarray(order, dtype=np.int64)
    return arrays


def _digest(a):
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


# --- reading -------------------------------------------------------------------------------

class Checkpoint:
    """A verified checkpoint: ``meta`` (the JSON object) and ``arrays`` ({entry: array})."""

    def __init__(self, path, meta, arrays):
        self.path, self.meta, self.arrays = path, meta, arrays

    @property
    def progress(self):
        return self.meta["progress"]

    def model_state(self):
        """The parameters and buffers as a state_dict ({"0.weight": array, ...})."""
        return {k[len("model/"):]: a for k, a in self.arrays.items() if k.startswith("model/")}

    def optimizer_state(self):
        """The optimizer's state_dict as ``Optimizer.load_state_dict`` takes it."""
        opt = self.meta["optimizer"]
        return {"type": opt["type"], "step": opt["step"], "hyper": opt["hyper"],
                "state": {k[len("optimizer/"):]: a for k, a in self.arrays.items()
                          if k.startswith("optimizer/")}}

    def __repr__(self):
        p = self.progress
        return (f"Checkpoint({self.path!r}, epochs_done={p['epochs_done']}, "
                f"batches_done={p['batches_done']}, global_step={p['global_step']})")


def read_checkpoint(path):
    """The ``Checkpoint`` at ``path``, fully verified; ``ValueError`` if anything is wrong.

    Header-first (``mlpfast.npz``): the metadata entry is read and its schema checked, then
    every array's .npy header against the layout the metadata implies (names, dtypes,
    shapes from the architecture, the data size), before any array data is read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with npz.NpzReader(path, "checkpoint") as reader:
        if META_ENTRY not in reader.names:
            raise ValueError(f"{path} is not an mlpfast checkpoint (no {META_ENTRY!r} entry)")
        meta = reader.read_json(META_ENTRY, "checkpoint metadata")
        _check_meta(path, meta)
        arrays = [name for name in reader.names if name != META_ENTRY]     # written order
        entries = reader.read_all(_expected_entries(path, meta, arrays))
    _check_arrays(path, meta, entries)
    return Checkpoint(path, meta, entries)


def _expected_entries(path, meta, names):
    """{entry: npz.Expect} of every array entry, from the metadata: the parameters and
    buffers from the architecture (model/ and best/), optimizer state as long as the
    parameters at most, the order."""
    arch = meta["architecture"]
    _require(path, arch.get("dtype") in ("float32", "float64"),
             "architecture.dtype must be 'float32' or 'float64'")
    dtype = np.dtype(arch["dtype"])
    layout = npz.state_layout(arch, f"{path}: corrupt checkpoint metadata")
    _require(path, set(names) == set(meta["sha256"]),
             f"entries {sorted(names)} do not match the digests {sorted(meta['sha256'])}")
    model = npz.expect_state(layout, dtype)
    parameters = sum(math.prod(shape) for shape, role in layout.values() if role == "parameter")
    expected = {}
    for name in names:
        kind, _, key = name.partition("/")
        if kind in ("model", "best") and key in model:     # best/: early stopping's best
            expected[name] = model[key]
        elif kind == "optimizer" and key:
            expected[name] = npz.Expect(dtype=dtype, shape=(None,),
                                        max_bytes=parameters * dtype.itemsize)
        elif name == "order":
            expected[name] = npz.Expect(dtype=np.int64, shape=(meta["data"]["n"],))
        else:
            raise ValueError(f"{path}: unexpected entry {name!r} (the architecture has "
                             f"parameters and buffers {sorted(layout)})")
    return expected


def _require(path, condition, message):
    if not condition:
        raise ValueError(f"{path}: corrupt checkpoint ({message})")


def _is_int(v, low=0):
    """An int in [low, 2^63): counts and steps that int64 and float64 hold as they are."""
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < 2 ** 63


def _is_number(v, finite=True):
    """A float (finite, unless ``finite`` is False) or an int of magnitude below 2^63."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) < 2 ** 63
    return isinstance(v, float) and (not finite or math.isfinite(v))


def _check_meta(path, meta):
    """The schema of the module docstring (before any array is read)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mlpfast checkpoint (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')!r} is not "
                         f"supported (this mlpfast reads version {VERSION})")
    for key, kind in (("architecture", dict), ("optimizer", dict), ("data", dict),
                      ("progress", dict), ("rng", dict), ("history", list), ("sha256", dict),
                      ("loss", str)):
        _require(path, isinstance(meta.get(key), kind), f"{key!r} must be a {kind.__name__}")
    data, progress, opt = meta["data"], meta["progress"], meta["optimizer"]
    for key in ("n", "num_features", "batch_size"):
        _require(path, _is_int(data.get(key), 1), f"data.{key} must be a positive integer")
    _require(path, isinstance(data.get("shuffle"), bool), "data.shuffle must be true/false")
    for key in ("epochs_done", "batches_done", "global_step", "correct"):
        _require(path, _is_int(progress.get(key)), f"progress.{key} must be an integer >= 0")
    for key in ("loss_sum", "seconds"):
        _require(path, _is_number(progress.get(key)), f"progress.{key} must be a number")
    steps_per_epoch = -(-data["n"] // data["batch_size"])
    _require(path, progress["batches_done"] <= steps_per_epoch,
             f"progress.batches_done {progress['batches_done']} > {steps_per_epoch} batches")
    _require(path, isinstance(opt.get("type"), str) and _is_int(opt.get("step"))
             and isinstance(opt.get("hyper"), dict), "optimizer must have type, step, hyper")
    _require(path, progress["batches_done"] == 0 or "order" in meta["sha256"],
             "mid-epoch checkpoint without an order")
    _require(path, meta["rng"].get("bit_generator") in BIT_GENERATORS,
             f"rng.bit_generator must be one of {BIT_GENERATORS}")
    history = meta["history"]
    _require(path, len(history) == progress["epochs_done"],
             f"history holds {len(history)} records for {progress['epochs_done']} epochs done")
    for epoch, record in enumerate(history, 1):
        _require(path, isinstance(record, dict) and record.get("epoch") == epoch
                 and _is_number(record.get("loss"), finite=False)
                 and all(isinstance(k, str) and (v is None or _is_number(v, finite=False))
                         for k, v in record.items()),
                 f"history record {epoch} must hold its epoch, loss and numbers or null")


def _check_arrays(path, meta, entries):
    """Every digest, and the order (a permutation of the samples)."""
    for name, a in entries.items():
        if _digest(a) != meta["sha256"][name]:
            raise ValueError(f"{path}: entry {name!r} fails its SHA-256 check (corrupt file)")
    order = entries.get("order")
    _require(path, order is None or np.array_equal(np.sort(order), np.arange(len(order))),
             "order is not a permutation of the samples")
