"""Datasets: ``mnist()`` returns arrays; dataset objects plug into ``fit`` in place of (x, y),
and (x, y) arrays become an ``ArrayDataset``."""
import json
import zlib

import numpy as np

from .backend import get_backend
from .data.mnist import mnist  # noqa: F401
from .data.speech import SpeechFrames  # noqa: F401
from .losses import CrossEntropyLoss, check_labels
from .nn import DTYPES, check_samples

# The dataset protocol fit, evaluate and the backends' steps read:
#     __len__()                          number of samples
#     num_features                       columns of one sample
#     num_classes                        number of classes (labels lie in [0, num_classes))
#     gather_batch(index, x_out, y_out)  fill x_out (B, num_features) float32/float64 and
#                                        y_out (B,) int64 with the samples ``index`` (B,) int64
#     arrays (optional)                  (x, y) NumPy arrays a step may gather from itself


class ArrayDataset:
    """(x, y) arrays seen through the dataset protocol; checks everything up front.
    ``name`` and ``y_name`` are the arguments' names in error messages. Boolean x and
    floats other than float32/float64 are converted to ``dtype`` once (integers are
    gathered as they are)."""

    def __init__(self, x, y, num_features=None, num_classes=None, name="x", gather=None,
                 y_name="y", dtype=np.float32):
        x = check_samples(x, num_features, name, dtype)
        if x.dtype.kind == "b" or (x.dtype.kind == "f" and x.dtype not in DTYPES):
            x = x.astype(dtype)
        if y is None:
            raise ValueError(f"{y_name} is missing: pass labels for {name}, or a dataset as "
                             f"{name}")
        y = np.asarray(y)
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"len({name}) = {x.shape[0]} but len({y_name}) = "
                             f"{y.shape[0] if y.ndim else 0}: every sample needs one label")
        if y.dtype.kind in "iu" and y.ndim == 1:
            if num_classes is not None:
                check_labels(y, y.shape[0], num_classes, y_name)
            y = y.astype(np.int64, copy=False)
        elif y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise ValueError(f"{y_name} contains NaN or inf")
        else:
            raise TypeError(f"{y_name} must be integer labels (N,) or float targets, got "
                            f"{y.dtype} of shape {y.shape}")
        # contiguous once here, so that gathering a batch never copies the whole dataset
        self.x, self.y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        self.num_features = x.shape[1]
        self.num_classes = num_classes
        self._gather = gather if gather is not None else get_backend("numpy").gather

    @property
    def arrays(self):
        return self.x, self.y

    def __len__(self):
        return self.x.shape[0]

    def gather_batch(self, index, x_out, y_out):
        self._gather(self.x, index, x_out)
        self._gather(self.y, index, y_out)


def contents_digest(dataset):
    """What identifies a dataset's contents: CRC-32s of its arrays, else what its
    ``fingerprint()`` returns as it reads back from JSON (tuples become lists), else None
    (a dataset object without one). Checkpoints and distributed fit compare it."""
    arrays = getattr(dataset, "arrays", None)
    if arrays is not None:
        return [zlib.crc32(np.ascontiguousarray(a)) for a in arrays]
    fingerprint = getattr(dataset, "fingerprint", None)
    if fingerprint is None:
        return None
    value = fingerprint()
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{type(dataset).__name__}.fingerprint() must return a JSON value "
                        f"(None, bool, int, finite float, str, lists and dicts of them), got "
                        f"{value!r} ({e})") from None


def as_dataset(model, x, y, name="x", y_name="y"):
    """x/y arrays or a dataset object, checked against the model's input and output sizes
    (``name``, ``y_name``: the arguments' names in error messages)."""
    if hasattr(x, "gather_batch"):
        if y is not None:
            raise ValueError(f"{name} is a dataset, so y must be omitted")
        if len(x) == 0:
            raise ValueError(f"dataset {name} is empty")
        if model.in_features is not None and x.num_features != model.in_features:
            raise ValueError(f"dataset {name} has {x.num_features} features but the model "
                             f"expects {model.in_features}")
        if getattr(x, "num_classes", None) and model.out_features is not None \
                and x.num_classes > model.out_features:
            raise ValueError(f"dataset {name} has {x.num_classes} classes but the model has "
                             f"{model.out_features} outputs")
        return x
    backend = model.backend
    gather = backend.gather if backend.device == "cpu" else None
    return ArrayDataset(x, y, model.in_features, model.out_features, name, gather, y_name,
                        model.dtype)


def check_targets(loss_fn, dataset, model, name):
    """Float targets fit MSELoss only, with one column per model output."""
    if not isinstance(dataset, ArrayDataset) or dataset.y.dtype.kind != "f":
        return
    if isinstance(loss_fn, CrossEntropyLoss):
        raise TypeError(f"{name} holds float values ({dataset.y.dtype}) but CrossEntropyLoss "
                        f"needs integer class labels")
    expected = (len(dataset), model.out_features)
    if model.out_features is not None and dataset.y.shape != expected:
        raise ValueError(f"{name} must have shape {expected} (one target per model output) "
                         f"for MSELoss, got {dataset.y.shape}")


def has_labels(dataset):
    """Whether the dataset's targets are class labels (accuracy has a meaning)."""
    return not isinstance(dataset, ArrayDataset) or dataset.y.dtype == np.int64
