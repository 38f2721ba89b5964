"""The speech recipe's analysis (an application on top of the engine): vocal tract length
normalization chosen without labels, per-phone accuracy, the most confused phones.

Features, frames and the dataset object live in ``mlpfast.data.speech``; ``mlpfast train
speech`` (cli.py) runs the recipe: features -> context frames -> training -> VTLN.
"""
import numpy as np

from .data.speech import SpeechFrames
from .train import predict_proba


VTLN_WARPS = tuple(round(0.8 + 0.05 * i, 2) for i in range(13))     # 0.80, 0.85, ..., 1.40


def estimate_warp(model, files, phones, warps=VTLN_WARPS, **options):
    """Vocal tract length normalization of one speaker, chosen without looking at labels.

    For each warp factor, the speaker's ``files`` are read with mel filters warped by it
    (``SpeechFrames(files, phones=phones, warp=w, **options)``) and the trained ``model``
    classifies every frame; the chosen warp is the one it is most confident on (highest
    mean max-softmax). Returns (warp, {warp: mean max-softmax}).
    """
    confidence = {}
    for warp in warps:
        data = SpeechFrames(files, phones=phones, warp=warp, **options)
        confidence[warp] = float(predict_proba(model, data).max(axis=1).mean())
    return max(confidence, key=confidence.get), confidence


def per_phone_accuracy(confusion):
    """(classes,) fraction of each true phone's frames predicted right (NaN where none);
    confusion[i, j] counts frames of phone i predicted as j."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def top_confusions(confusion, phones, count=10):
    """The ``count`` largest off-diagonal cells as (true phone, predicted phone, frames)."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:count]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(phones[i], phones[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]
