"""Speech frames for phoneme classification: audio, alignments, features, context windows.

Inputs, either of:
  * audio files (FLAC or WAV, read with soundfile; several channels are averaged to mono),
    each with a TIMIT-style ``.PHN`` file beside it (same stem): one ``start end phone``
    per line, in samples of that file, end exclusive, in time order. Gaps are allowed;
    overlaps, malformed lines and segments past the audio's end are errors.
  * a folder of precomputed features (``FEATURE_DIR``/``LABEL_DIR`` layout below).

Features are computed at each file's own sample rate (25 ms Hamming windows every 10 ms,
see ``mlpfast.kernels.features``): there is no resampling. Default: 28 MFCC from 40 mel
bands, optionally with deltas, normalized per utterance to zero mean and unit variance.

Frame labels (the rule): frame t covers samples [t*hop, t*hop + L) and takes the phone
whose segment [start, end) contains its centre sample t*hop + L//2. Frames whose centre
lies in no segment (gaps, before the first or after the last) are *unlabeled*: they are
still neighbours in the context windows but are not samples.

Precomputed layout: ``DIR/mfcc/<name>.npy`` (T, F) float features and
``DIR/transcript/<name>.npy`` (T,) with one phone per frame, as strings ('' = unlabeled)
or as integer indices into ``DIR/phones.txt`` (-1 = unlabeled). ``save_feature_folder``
writes this layout from a ``SpeechFrames``.

``SpeechFrames`` is a dataset that ``mlpfast.fit``/``evaluate`` take in place of (x, y):
sample i is a labeled frame with its +-K neighbours, (2K+1)*F values, gathered straight
into the batch buffer by the context kernel (``mlpfast.kernels.context``).
"""
import os
import random
import time
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np

from .. import npz
from ..kernels import context as context_kernels
from ..kernels import features as feature_kernels

AUDIO_SUFFIXES = (".flac", ".wav")
FEATURE_DIR = "mfcc"
LABEL_DIR = "transcript"
PHONES_FILE = "phones.txt"
FEATURE_KINDS = ("mfcc", "log_mel")

Segment = namedtuple("Segment", ["start", "end", "phone"])


# --- files ---------------------------------------------------------------------------

def read_audio(path):
    """(signal (n,) float32 in [-1, 1], sample_rate) of a FLAC/WAV file, channels averaged."""
    import soundfile

    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise ValueError(f"audio file must end in one of {AUDIO_SUFFIXES}, got {str(path)!r}")
    data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    signal = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(signal), int(sample_rate)


def phn_path(audio_path):
    """The alignment beside an audio file: same stem, suffix .PHN (or .phn)."""
    audio_path = Path(audio_path)
    for suffix in (".PHN", ".phn"):
        candidate = audio_path.with_suffix(suffix)
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no alignment for {audio_path}: expected "
                            f"{audio_path.with_suffix('.PHN')}")


def parse_phn(text, num_samples=None, source="<PHN>"):
    """Segments of a .PHN text: 'start end phone' per line, in samples, end exclusive.

    Errors (ValueError, naming source:line): a line without exactly three fields, non-integer
    or negative samples, end <= start, a segment starting before the previous one ends
    (overlap or wrong order), an end past num_samples, no segment at all.
    """
    segments = []
    previous_line = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{source}:{line_number}"
        if len(fields) != 3:
            raise ValueError(f"{where}: expected 'start_sample end_sample phone', got {line!r}")
        try:
            start, end = int(fields[0]), int(fields[1])
        except ValueError:
            raise ValueError(f"{where}: start and end must be integer sample indices, "
                             f"got {line!r}") from None
        if start < 0 or end <= start:
            raise ValueError(f"{where}: need 0 <= start < end, got start={start} end={end}")
        if segments and start < segments[-1].end:
            raise ValueError(f"{where}: segment {start}-{end} starts before the segment on "
                             f"line {previous_line} ends ({segments[-1].end}): overlapping or "
                             f"out of order")
        if num_samples is not None and end > num_samples:
            raise ValueError(f"{where}: segment ends at sample {end}, past the end of the "
                             f"audio ({num_samples} samples)")
        segments.append(Segment(start, end, fields[2]))
        previous_line = line_number
    if not segments:
        raise ValueError(f"{source}: no segments")
    return segments


def read_phn(path, num_samples=None):
    path = Path(path)
    return parse_phn(path.read_text(), num_samples, source=str(path))


def write_phn(path, segments):
    Path(path).write_text("".join(f"{s.start} {s.end} {s.phone}\n" for s in segments))


def frame_phones(segments, centers):
    """(T,) phone of each frame by its centre sample ('' where no segment holds it)."""
    starts = np.array([s.start for s in segments], dtype=np.int64)
    ends = np.array([s.end for s in segments], dtype=np.int64)
    names = np.array([s.phone for s in segments] + [""])
    which = np.searchsorted(starts, centers, side="right") - 1    # last segment starting <= c
    inside = (which >= 0) & (centers < ends[np.maximum(which, 0)])
    return names[np.where(inside, which, len(segments))]


def find_audio(paths):
    """Audio files under the given files/folders (recursively), sorted, each folder in turn."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def split_by_utterance(files, holdout, seed=0):
    """(train, held_out) lists: a ``holdout`` fraction of the files of each folder (speaker),
    rounded, at least one and at most all but one (a folder of one file stays in train), so
    that every speaker is in the training set."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must lie in (0, 1), got {holdout}")
    by_folder = {}
    for f in files:
        by_folder.setdefault(Path(f).parent, []).append(f)
    rng = random.Random(seed)
    train, held_out = [], []
    for folder in sorted(by_folder):
        group = sorted(by_folder[folder])
        rng.shuffle(group)
        n_held = min(len(group) - 1, max(1, int(round(holdout * len(group)))))
        held_out += group[:n_held]
        train += group[n_held:]
    return train, held_out


def read_phone_list(path):
    phones = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not phones:
        raise ValueError(f"{path}: no phones")
    return phones


# --- features of one utterance ---------------------------------------------------------

_SPECS = {}


def feature_spec(sample_rate, n_mfcc=28, n_mels=40, warp=1.0):
    key = (sample_rate, n_mfcc, n_mels, warp)
    if key not in _SPECS:
        _SPECS[key] = feature_kernels.make_spec(sample_rate, n_mfcc=n_mfcc, n_mels=n_mels,
                                                warp=warp)
    return _SPECS[key]


def utterance_features(signal, spec, features="mfcc", deltas=0, normalize=True,
                       variant="numba"):
    """(T, F) float32: MFCC (F = n_mfcc) or log-mel (F = n_mels), then ``deltas`` orders of
    deltas appended (F times 1 + deltas), then per-utterance CMVN when ``normalize``."""
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    if deltas not in (0, 1, 2):
        raise ValueError(f"deltas must be 0, 1 or 2, got {deltas!r}")
    ops = feature_kernels.VARIANTS[variant]
    base = ops[features](np.asarray(signal, dtype=np.float32), spec)
    blocks = [base]
    for _ in range(deltas):
        blocks.append(ops["deltas"](blocks[-1]))
    out = np.ascontiguousarray(np.concatenate(blocks, axis=1) if deltas else base)
    if normalize:
        ops["cmvn"](out, out=out)
    return out


# --- the dataset ------------------------------------------------------------------------

class SpeechFrames:
    """Labeled speech frames with +-``context`` neighbours, for ``mlpfast.fit``/``evaluate``.

    ``SpeechFrames(files, context=10, n_mfcc=28, phones=None)`` reads each audio file and its
    .PHN, computes features (``features``="mfcc" or "log_mel", ``n_mels``, ``deltas``,
    ``normalize`` per utterance, ``warp`` the VTLN factor of the mel filters, or a list of
    factors: each utterance is then read once per factor, a data augmentation) and keeps
    them as one (frames, F) float32 array.
    ``phones``: the class list (index = label); None takes the sorted phones of these files.
    Build a held-out set on the same classes with ``SpeechFrames(test_files, phones=train.phones)``.

    Attributes: ``phones`` (tuple), ``num_classes``, ``num_features`` = (2K+1)*F,
    ``feature_dim`` F, ``names`` (one per utterance), ``labels`` (samples,) int64,
    ``audio_seconds`` (the audio put through feature extraction: once per warp factor) and
    ``extract_seconds`` (the time that took, wall clock).
    """

    def __init__(self, files, context=10, n_mfcc=28, phones=None, *, features="mfcc", n_mels=40,
                 deltas=0, normalize=True, warp=1.0, variant="numba"):
        if isinstance(files, (str, os.PathLike)):
            raise TypeError("files must be a list of audio paths, got a single path; "
                            "use mlpfast.data.speech.find_audio(folder) to list a folder")
        files = [Path(f) for f in files]
        if not files:
            raise ValueError("files must list at least one audio file, got none")
        if variant not in feature_kernels.VARIANTS:
            raise ValueError(f"variant must be one of {sorted(feature_kernels.VARIANTS)}, "
                             f"got {variant!r}")
        warps = [float(w) for w in (warp if np.ndim(warp) else [warp])]
        feats, labels, names = [], [], []
        audio_seconds = extract_seconds = 0.0
        for path in files:
            signal, rate = read_audio(path)
            segments = read_phn(phn_path(path), num_samples=signal.shape[0])
            for w in warps:                    # several warps: each a copy of the utterance
                spec = feature_spec(rate, n_mfcc, n_mels, w)
                start = time.perf_counter()
                feats.append(utterance_features(signal, spec, features, deltas, normalize,
                                                variant))
                extract_seconds += time.perf_counter() - start
                audio_seconds += signal.shape[0] / rate
                labels.append(frame_phones(segments, spec.frame_centers(feats[-1].shape[0])))
                names.append(str(path) if len(warps) == 1 else f"{path} (warp {w:g})")
        self.audio_seconds = audio_seconds
        self.extract_seconds = extract_seconds
        self._build(names, feats, labels, context, phones, variant)

    @classmethod
    def from_arrays(cls, features, labels, context=10, phones=None, *, names=None,
                    normalize=False, variant="numba"):
        """From per-utterance arrays: features[i] (T_i, F), labels[i] (T_i,) phone strings
        ('' = unlabeled) or integer indices into ``phones`` (-1 = unlabeled)."""
        if len(features) != len(labels) or not features:
            raise ValueError(f"features and labels must be non-empty lists of equal length, "
                             f"got {len(features)} and {len(labels)}")
        if names is None:
            names = [f"utterance {i}" for i in range(len(features))]
        elif isinstance(names, str) or len(names) != len(features):
            got = "a string" if isinstance(names, str) else f"{len(names)} names"
            raise ValueError(f"names must list one name per utterance ({len(features)}), "
                             f"got {got}")
        feats = []
        for name, f in zip(names, features):
            f = np.asarray(f)
            if f.ndim != 2 or f.dtype.kind != "f":
                raise ValueError(f"{name}: features must be a 2-D float array (T, F), "
                                 f"got {f.dtype} {f.shape}")
            f = np.array(f, dtype=np.float32, order="C")        # a copy: CMVN works in place
            if normalize:
                feature_kernels.VARIANTS[variant]["cmvn"](f, out=f)
            feats.append(f)
        self = cls.__new__(cls)
        self.audio_seconds = self.extract_seconds = 0.0
        self._build(list(names), feats, [np.asarray(y) for y in labels], context, phones, variant)
        return self

    @classmethod
    def from_folder(cls, folder, context=10, phones=None, *, stems=None, normalize=True,
                    variant="numba"):
        """From the precomputed layout: folder/mfcc/*.npy with folder/transcript/*.npy
        (and folder/phones.txt, used when ``phones`` is None and the file exists).
        ``stems``: the utterances to load (file names without .npy); None loads all.
        Each .npy header is checked before its data is read (``mlpfast.npz``): features
        2-D float, labels as many integers or strings as the features have frames."""
        folder = Path(folder)
        feature_files = sorted((folder / FEATURE_DIR).glob("*.npy"))
        if stems is not None:
            wanted = set(map(str, stems))
            missing = sorted(wanted - {p.stem for p in feature_files})
            if missing:
                raise FileNotFoundError(f"no {FEATURE_DIR}/<stem>.npy under {folder} for stems "
                                        f"{missing[:5]}")
            feature_files = [p for p in feature_files if p.stem in wanted]
        if not feature_files:
            raise FileNotFoundError(f"no {FEATURE_DIR}/*.npy under {folder}")
        if phones is None and (folder / PHONES_FILE).exists():
            phones = read_phone_list(folder / PHONES_FILE)
        features, labels = [], []
        for path in feature_files:
            label_path = folder / LABEL_DIR / path.name
            if not label_path.exists():
                raise FileNotFoundError(f"{path} has no matching {label_path}")
            features.append(npz.load_npy(path, npz.Expect("f", shape=(None, None))))
            labels.append(npz.load_npy(label_path, npz.Expect(
                "iuU", shape=(features[-1].shape[0],))))
        return cls.from_arrays(features, labels, context, phones, names=[str(p) for p in
                                                                       feature_files],
                               normalize=normalize, variant=variant)

    def _build(self, names, feats, labels, context, phones, variant):
        if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
            raise ValueError(f"context must be a non-negative integer, got {context!r}")
        dims = {f.shape[1] for f in feats}
        if len(dims) != 1:
            raise ValueError(f"all utterances must have the same feature count, got {sorted(dims)}")
        for name, f, y in zip(names, feats, labels):
            if not np.isfinite(f).all():
                raise ValueError(f"{name}: features contain NaN or inf")
            if y.shape != (f.shape[0],):
                raise ValueError(f"{name}: need one label per frame ({f.shape[0]}), "
                                 f"got labels of shape {y.shape}")
        if isinstance(phones, str):
            raise ValueError(f"phones must be a list of phone names, got the string {phones!r}")
        if not any((y >= 0 if y.dtype.kind in "iu" else y != "").any() for y in labels):
            raise ValueError(_no_labeled_frames(names, feats))
        if phones is None:
            if any(y.dtype.kind in "iu" for y in labels):
                raise ValueError("integer labels need the phone list: pass phones=[...]")
            phones = sorted(set().union(*(set(y.tolist()) for y in labels)) - {""})
        phones = tuple(str(p) for p in phones)
        if len(set(phones)) != len(phones) or "" in phones or not phones:
            raise ValueError(f"phones must be distinct non-empty names, got {phones}")
        lookup = {p: i for i, p in enumerate(phones)}
        lookup[""] = -1
        frame_labels = []
        for name, y in zip(names, labels):
            if y.dtype.kind in "iu":
                if y.size and (y.min() < -1 or y.max() >= len(phones)):
                    raise ValueError(f"{name}: integer labels must lie in [-1, {len(phones)}), "
                                     f"got [{y.min()}, {y.max()}]")
                frame_labels.append(y.astype(np.int64))
                continue
            unknown = sorted(set(y.tolist()) - set(lookup))
            if unknown:
                raise ValueError(f"{name}: phones {unknown} are not in the phone set "
                                 f"({len(phones)} phones: {' '.join(phones)})")
            frame_labels.append(np.array([lookup[p] for p in y.tolist()], dtype=np.int64))
        self.names = names
        self.phones = phones
        self.num_classes = len(phones)
        self.context = int(context)
        self.feature_dim = feats[0].shape[1]
        self.num_features = (2 * self.context + 1) * self.feature_dim
        self.variant = variant
        self.features = np.ascontiguousarray(np.concatenate(feats), dtype=np.float32)  # (N, F)
        self.offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in feats])]).astype(
            np.int64)                                                                 # (U+1,)
        self.frame_labels = np.concatenate(frame_labels)                               # (N,)
        self.sample_frames = np.flatnonzero(self.frame_labels >= 0).astype(np.int64)  # (S,)
        self.labels = self.frame_labels[self.sample_frames]                            # (S,)
        self._gather = context_kernels.VARIANTS[variant]["context_gather"]
        self._frame_scratch = np.empty(0, dtype=np.int64)

    def __len__(self):
        return self.sample_frames.shape[0]

    @property
    def num_utterances(self):
        return self.offsets.shape[0] - 1

    def gather_batch(self, index, x_out, y_out):
        """x_out[b] = context window of sample index[b], y_out[b] = its phone index (x_out
        float32, or float64 for a float64 model)."""
        batch = index.shape[0]
        if x_out.shape != (batch, self.num_features) or y_out.shape != (batch,):
            raise ValueError(f"x_out and y_out must have shapes ({batch}, {self.num_features}) "
                             f"and ({batch},), got {x_out.shape} and {y_out.shape}")
        if batch and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"index must lie in [0, {len(self)}), got values in "
                             f"[{index.min()}, {index.max()}]")
        if self._frame_scratch.shape[0] < batch:
            self._frame_scratch = np.empty(batch, dtype=np.int64)
        frames = self._frame_scratch[:batch]
        np.take(self.sample_frames, index, out=frames)
        if x_out.dtype == np.float32:
            self._gather(self.features, self.offsets, frames, self.context, out=x_out)
        else:                               # a float64 model's batch: gathered, then widened
            x_out[...] = self._gather(self.features, self.offsets, frames, self.context)
        np.take(self.labels, index, out=y_out)

    def fingerprint(self):
        """CRC-32s of the frames, their labels and the phone list, and the context: equal
        for datasets that give the same batches (distributed fit compares it over ranks)."""
        return {"features": zlib.crc32(self.features), "labels": zlib.crc32(self.frame_labels),
                "phones": zlib.crc32("\n".join(self.phones).encode()), "context": self.context}

    def __repr__(self):
        return (f"SpeechFrames({len(self)} frames, {self.num_utterances} utterances, "
                f"context={self.context}, feature_dim={self.feature_dim}, "
                f"{self.num_classes} phones)")


def _no_labeled_frames(names, feats):
    """Why a dataset of these utterances would hold no sample."""
    empty = [name for name, f in zip(names, feats) if f.shape[0] == 0]
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    why = (f"; {len(empty)} of them have no frames at all (audio shorter than one analysis "
           f"window), e.g. {empty[0]}" if empty else "")
    return (f"no labeled frames in {names[0]}{more}: a sample is a frame whose centre sample "
            f"lies in a .PHN segment{why}")


def save_feature_folder(dataset, folder):
    """Write ``dataset`` in the precomputed layout: folder/mfcc/<i>.npy (T, F) float32,
    folder/transcript/<i>.npy (T,) phone strings ('' = unlabeled), folder/phones.txt."""
    folder = Path(folder)
    (folder / FEATURE_DIR).mkdir(parents=True, exist_ok=True)
    (folder / LABEL_DIR).mkdir(parents=True, exist_ok=True)
    names = np.array(dataset.phones + ("",))
    width = len(str(dataset.num_utterances))
    for u in range(dataset.num_utterances):
        rows = slice(dataset.offsets[u], dataset.offsets[u + 1])
        stem = f"{u:0{width}d}.npy"
        np.save(folder / FEATURE_DIR / stem, dataset.features[rows])
        np.save(folder / LABEL_DIR / stem, names[dataset.frame_labels[rows]])
    (folder / PHONES_FILE).write_text("".join(p + "\n" for p in dataset.phones))
