"""Speech features: pre-emphasis, power spectrum, log-mel filterbank, MFCC, deltas, CMVN.

The pipeline for one utterance, signal (n,) at sample rate sr:

    y[n]   = x[n] - a x[n-1]   (y[0] = x[0])            pre-emphasis, a = 0.97
    frame t = y[t*hop : t*hop + L] * hamming(L)          L = 25 ms, hop = 10 ms, T frames
    P[t,k] = |sum_n frame_t[n] exp(-2 pi i k n / N)|^2   power spectrum, N = n_fft, k <= N/2
    E[t,m] = log(max(sum_k M[m,k] P[t,k], floor))        log-mel, M = triangular mel filters
    C[t,c] = sum_m D[c,m] E[t,m]                         MFCC, D = orthonormal DCT-II rows
    T = 1 + (n - L) // hop  (0 when n < L): only whole windows, no padding.

Features are computed at the file's own sample rate: L, hop and n_fft (the next power
of two >= L) follow from sr, and the mel filters span [fmin, fmax] (fmax = sr/2 unless
given), so no resampling kernel is needed. ``make_spec`` holds these per-rate constants,
and its ``warp`` moves the mel filters along a piecewise-linear frequency warp (vocal tract
length normalization: warp > 1 reads a shorter vocal tract like a longer one).

Versions:
    numpy   the references: one NumPy expression per step (np.fft.rfft, matrix products)
    numba   one fused pass per frame (prange over frames): pre-emphasis + window +
            real FFT (a radix-2 complex FFT of half the size) + power + sparse mel + log +
            DCT, no (T, L) frame matrix;
            deltas and CMVN as parallel loops

``VARIANTS[variant]`` maps op names to functions; outputs have the input's dtype
(computed in float64 inside) and are written into ``out`` when given:
    "preemphasis"     f(signal, coef=0.97, out=None)  -> (n,)
    "power_spectrum"  f(signal, spec, out=None)       -> (T, n_fft//2 + 1)   (pre-emphasis included)
    "log_mel"         f(signal, spec, out=None)       -> (T, n_mels)
    "mfcc"            f(signal, spec, out=None)       -> (T, n_mfcc)
    "deltas"          f(features, width=2, out=None)  -> (T, F)
        d[t] = sum_{w=1..W} w (c[t+w] - c[t-w]) / (2 sum_{w=1..W} w^2), indices clamped to [0, T-1]
    "cmvn"            f(features, eps=1e-8, out=None) -> (T, F)   (out may be features)
        per column: (c - mean) / sqrt(var + eps), statistics over the T frames
"""
import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import _numba_config
from ._checks import check_float_array, check_out


# --- per-rate constants -------------------------------------------------------------

def hz_to_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def vtln_warp(hz, warp, fmax):
    """Piecewise-linear frequency warp: w(f) = warp*f up to f_b = 0.85*fmax*min(1, 1/warp),
    then the straight line from (f_b, warp*f_b) to (fmax, fmax); w(0) = 0, w(fmax) = fmax."""
    hz = np.asarray(hz, dtype=np.float64)
    f_b = 0.85 * fmax * min(1.0, 1.0 / warp)
    upper = warp * f_b + (fmax - warp * f_b) * (hz - f_b) / (fmax - f_b)
    return np.where(hz <= f_b, warp * hz, upper)


def mel_filterbank(sample_rate, n_fft, n_mels, fmin=0.0, fmax=None, warp=1.0):
    """(n_mels, n_fft//2 + 1) triangular filters, edges equally spaced on the mel scale.

    Filter m rises from edge m to 1 at edge m+1 and falls to 0 at edge m+2, evaluated at
    the bin frequencies k * sr / n_fft (no area normalization, peak 1). ``warp`` != 1 moves
    the edges to ``vtln_warp(edge, warp, fmax)``: with warp > 1 each filter listens higher,
    as for a speaker with a shorter vocal tract (vocal tract length normalization).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2 = {sample_rate / 2}, "
                         f"got fmin={fmin}, fmax={fmax}")
    if not 0.5 <= warp <= 2.0:
        raise ValueError(f"warp must lie in [0.5, 2], got {warp}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    if warp != 1.0:
        edges = vtln_warp(edges, warp, fmax)
    bin_hz = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    rising = (bin_hz - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - bin_hz) / (edges[2:] - edges[1:-1])[:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(filters.max(axis=1) == 0.0)
    if empty.size:
        raise ValueError(f"n_mels={n_mels} is too many for n_fft={n_fft} at {sample_rate} Hz: "
                         f"mel filter {empty[0]} covers no FFT bin; use fewer mels")
    return filters


def dct_matrix(n_out, n_in):
    """(n_out, n_in) rows of the orthonormal DCT-II: D[c,m] = s_c cos(pi c (m + 1/2) / n_in),
    s_0 = sqrt(1/n_in), s_c = sqrt(2/n_in)."""
    c = np.arange(n_out)[:, None]
    m = np.arange(n_in)[None, :]
    d = np.sqrt(2.0 / n_in) * np.cos(np.pi * c * (m + 0.5) / n_in)
    d[0] /= np.sqrt(2.0)
    return d


@dataclass(frozen=True, eq=False)
class FeatureSpec:
    """Constants of the feature pipeline at one sample rate (build with ``make_spec``)."""
    sample_rate: int
    frame_length: int          # L, samples per window
    hop_length: int            # samples between window starts
    n_fft: int                 # power of two >= L
    preemphasis: float
    log_floor: float
    window: np.ndarray         # (L,) Hamming, float64
    mel_filters: np.ndarray    # (n_mels, n_fft//2 + 1) float64
    mel_first: np.ndarray      # (n_mels,) int64 first nonzero bin of each filter
    mel_stop: np.ndarray       # (n_mels,) int64 one past its last nonzero bin
    dct: np.ndarray            # (n_mfcc, n_mels) float64
    bit_reverse: np.ndarray    # (n_fft//2,) int64 input permutation of the half-size FFT
    twiddle_cos: np.ndarray    # (n_fft//2,) cos(2 pi j / n_fft)
    twiddle_sin: np.ndarray    # (n_fft//2,) sin(2 pi j / n_fft)

    @property
    def n_mels(self):
        return self.mel_filters.shape[0]

    @property
    def n_mfcc(self):
        return self.dct.shape[0]

    @property
    def n_bins(self):
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples):
        """T = 1 + (n - L) // hop whole windows, 0 when n < L."""
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.hop_length

    def frame_centers(self, num_frames):
        """(T,) sample index at the centre of each window: t*hop + L//2."""
        return np.arange(num_frames, dtype=np.int64) * self.hop_length + self.frame_length // 2


def make_spec(sample_rate, n_mfcc=28, n_mels=40, window_ms=25.0, hop_ms=10.0, preemphasis=0.97,
              fmin=0.0, fmax=None, log_floor=1e-10, warp=1.0):
    """FeatureSpec for ``sample_rate`` Hz: L = round(window_ms * sr / 1000), likewise hop;
    ``warp``: the VTLN factor of the mel filters (see ``mel_filterbank``)."""
    for name, value in (("sample_rate", sample_rate), ("n_mfcc", n_mfcc), ("n_mels", n_mels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_mfcc > n_mels:
        raise ValueError(f"n_mfcc must be <= n_mels={n_mels}, got {n_mfcc}")
    for name, value in (("window_ms", window_ms), ("hop_ms", hop_ms), ("log_floor", log_floor)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    frame_length = int(round(window_ms * sample_rate / 1000.0))
    hop_length = int(round(hop_ms * sample_rate / 1000.0))
    if frame_length < 2 or hop_length < 1:
        raise ValueError(f"window_ms={window_ms} and hop_ms={hop_ms} give windows of "
                         f"{frame_length} and hops of {hop_length} samples at {sample_rate} Hz")
    if not 0.0 <= preemphasis < 1.0:
        raise ValueError(f"preemphasis must lie in [0, 1), got {preemphasis}")
    n_fft = 1 << (frame_length - 1).bit_length()
    filters = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, warp)
    nonzero = filters > 0.0
    mel_first = nonzero.argmax(axis=1).astype(np.int64)
    mel_stop = (filters.shape[1] - nonzero[:, ::-1].argmax(axis=1)).astype(np.int64)
    bits = n_fft.bit_length() - 2                       # log2(n_fft / 2)
    bit_reverse = np.array([int(format(i, f"0{bits}b")[::-1], 2) if bits else 0
                            for i in range(n_fft // 2)], dtype=np.int64)
    angles = 2.0 * np.pi * np.arange(n_fft // 2) / n_fft
    return FeatureSpec(sample_rate=int(sample_rate), frame_length=frame_length,
                       hop_length=hop_length, n_fft=n_fft, preemphasis=float(preemphasis),
                       log_floor=float(log_floor), window=np.hamming(frame_length),
                       mel_filters=filters, mel_first=mel_first, mel_stop=mel_stop,
                       dct=dct_matrix(n_mfcc, n_mels), bit_reverse=bit_reverse,
                       twiddle_cos=np.cos(angles), twiddle_sin=np.sin(angles))


# --- argument checks ------------------------------------------------------------------

def _check_signal(signal, spec=None):
    check_float_array(signal, "signal", 1)
    if spec is not None and not isinstance(spec, FeatureSpec):
        raise TypeError(f"spec must be a FeatureSpec (see make_spec), got {type(spec).__name__}")


def _check_width(width):
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")


def _result(values, out):
    if out is None:
        return values
    out[...] = values
    return out


# --- numpy: the references ------------------------------------------------------------

def preemphasis_ref(signal, coef=0.97, out=None):
    _check_signal(signal)
    check_out(out, signal.shape, signal.dtype, inputs=(("signal", signal),))
    x = signal.astype(np.float64)
    y = np.concatenate([x[:1], x[1:] - coef * x[:-1]])
    return _result(y.astype(signal.dtype), out)


def _frames_ref(signal, spec):
    """(T, L) windowed frames of the pre-emphasized signal, float64."""
    y = preemphasis_ref(signal.astype(np.float64), spec.preemphasis)
    t = spec.num_frames(signal.shape[0])
    starts = np.arange(t)[:, None] * spec.hop_length
    return y[starts + np.arange(spec.frame_length)[None, :]] * spec.window


def _power_ref(signal, spec):
    return np.abs(np.fft.rfft(_frames_ref(signal, spec), n=spec.n_fft, axis=1)) ** 2


def _log_mel_ref(signal, spec):
    return np.log(np.maximum(_power_ref(signal, spec) @ spec.mel_filters.T, spec.log_floor))


def power_spectrum_ref(signal, spec, out=None):
    _check_signal(signal, spec)
    check_out(out, (spec.num_frames(signal.shape[0]), spec.n_bins), signal.dtype)
    return _result(_power_ref(signal, spec).astype(signal.dtype), out)


def log_mel_ref(signal, spec, out=None):
    _check_signal(signal, spec)
    check_out(out, (spec.num_frames(signal.shape[0]), spec.n_mels), signal.dtype)
    return _result(_log_mel_ref(signal, spec).astype(signal.dtype), out)


def mfcc_ref(signal, spec, out=None):
    _check_signal(signal, spec)
    check_out(out, (spec.num_frames(signal.shape[0]), spec.n_mfcc), signal.dtype)
    return _result((_log_mel_ref(signal, spec) @ spec.dct.T).astype(signal.dtype), out)


def deltas_ref(features, width=2, out=None):
    check_float_array(features, "features", 2)
    _check_width(width)
    check_out(out, features.shape, features.dtype, inputs=(("features", features),))
    c = features.astype(np.float64)
    t = np.arange(c.shape[0])
    last = max(c.shape[0] - 1, 0)
    d = sum(w * (c[np.minimum(t + w, last)] - c[np.maximum(t - w, 0)])
            for w in range(1, width + 1))
    d = d / (2.0 * sum(w * w for w in range(1, width + 1)))
    return _result(np.asarray(d, dtype=features.dtype).reshape(features.shape), out)


def _check_cmvn_args(features, out):
    check_float_array(features, "features", 2)
    # out may be features itself (in place), but no other view of it
    check_out(out, features.shape, features.dtype,
              inputs=() if out is features else (("features", features),))


def cmvn_ref(features, eps=1e-8, out=None):
    _check_cmvn_args(features, out)
    c = features.astype(np.float64)
    if c.shape[0] == 0:
        return _result(features.copy(), out)
    normalized = (c - c.mean(axis=0)) / np.sqrt(c.var(axis=0) + eps)
    return _result(normalized.astype(features.dtype), out)


# --- numba: one fused pass per frame ---------------------------------------------------

@njit(cache=True, fastmath=True)
def _frame_power_numba(x, start, coef, window, bit_reverse, cos_t, sin_t, re, im, power):
    """power[k] = |X[k]|^2, X = FFT of the pre-emphasized x[start:start+L] * window,
    zero-padded to N = n_fft, for k = 0..N/2.

    The N real samples y are packed as M = N/2 complex ones, z[m] = y[2m] + i y[2m+1],
    and transformed by an iterative radix-2 FFT of size M (load in bit-reversed order,
    then log2(M) butterfly stages; the stage of span h pairs (j, j+h) with twiddle
    exp(-2 pi i j / 2h)). The even/odd split then gives, with Z[M] = Z[0]:
        X[k] = E[k] + exp(-2 pi i k / N) O[k],
        E[k] = (Z[k] + conj Z[M-k]) / 2,   O[k] = (Z[k] - conj Z[M-k]) / 2i
    """
    m_size = re.shape[0]
    length = window.shape[0]
    for i in range(m_size):
        re[i] = 0.0
        im[i] = 0.0
    for i in range(length):
        n = start + i
        y = x[n] - coef * x[n - 1] if n > 0 else x[0]
        if i % 2 == 0:
            re[bit_reverse[i // 2]] = y * window[i]
        else:
            im[bit_reverse[i // 2]] = y * window[i]
    half = 1
    while half < m_size:
        step = m_size // half                    # twiddle index stride in the N-point table
        for block in range(0, m_size, 2 * half):
            for j in range(half):
                wr = cos_t[j * step]
                wi = -sin_t[j * step]
                a = block + j
                b = a + half
                tr = wr * re[b] - wi * im[b]
                ti = wr * im[b] + wi * re[b]
                re[b] = re[a] - tr
                im[b] = im[a] - ti
                re[a] += tr
                im[a] += ti
        half *= 2
    for k in range(m_size + 1):
        zr, zi = re[k % m_size], im[k % m_size]
        cr, ci = re[(m_size - k) % m_size], -im[(m_size - k) % m_size]   # conj Z[M-k]
        er, ei = 0.5 * (zr + cr), 0.5 * (zi + ci)
        o_r, o_i = 0.5 * (zi - ci), -0.5 * (zr - cr)                      # (Z - conj) / 2i
        wr, wi = (cos_t[k], -sin_t[k]) if k < m_size else (-1.0, 0.0)
        xr = er + wr * o_r - wi * o_i
        xi = ei + wr * o_i + wi * o_r
        power[k] = xr * xr + xi * xi


@njit(parallel=True, cache=True)
def _frames_numba(x, hop, coef, window, bit_reverse, cos_t, sin_t, mel, mel_first, mel_stop,
                  floor, dct, stage, out):
    """stage 0: out (T, n_bins) power; 1: out (T, n_mels) log-mel; 2: out (T, n_mfcc) MFCC."""
    m_size = bit_reverse.shape[0]               # n_fft / 2
    n_bins = m_size + 1
    n_mels = mel.shape[0]
    for t in prange(out.shape[0]):
        re = np.empty(m_size)
        im = np.empty(m_size)
        power = np.empty(n_bins)
        _frame_power_numba(x, t * hop, coef, window, bit_reverse, cos_t, sin_t, re, im, power)
        if stage == 0:
            for k in range(n_bins):
                out[t, k] = power[k]
            continue
        log_mel = np.empty(n_mels)
        for m in range(n_mels):                  # E[m] = log(max(sum_k M[m,k] P[k], floor))
            energy = 0.0
            for k in range(mel_first[m], mel_stop[m]):
                energy += mel[m, k] * power[k]
            log_mel[m] = math.log(max(energy, floor))
        if stage == 1:
            for m in range(n_mels):
                out[t, m] = log_mel[m]
            continue
        for c in range(dct.shape[0]):            # C[c] = sum_m D[c,m] E[m]
            acc = 0.0
            for m in range(n_mels):
                acc += dct[c, m] * log_mel[m]
            out[t, c] = acc


def _run_frames_numba(signal, spec, stage, out):
    _check_signal(signal, spec)
    width = (spec.n_bins, spec.n_mels, spec.n_mfcc)[stage]
    shape = (spec.num_frames(signal.shape[0]), width)
    check_out(out, shape, signal.dtype)
    if out is None:
        out = np.empty(shape, dtype=signal.dtype)
    _numba_config.parallel_call(
        _frames_numba, signal, spec.hop_length, spec.preemphasis, spec.window, spec.bit_reverse,
        spec.twiddle_cos, spec.twiddle_sin, spec.mel_filters, spec.mel_first, spec.mel_stop,
        spec.log_floor, spec.dct, stage, out, work=_numba_config.ALL_THREADS)
    return out


def power_spectrum_numba(signal, spec, out=None):
    return _run_frames_numba(signal, spec, 0, out)


def log_mel_numba(signal, spec, out=None):
    return _run_frames_numba(signal, spec, 1, out)


def mfcc_numba(signal, spec, out=None):
    return _run_frames_numba(signal, spec, 2, out)


@njit(cache=True)
def _preemphasis_numba(x, coef, out):
    if x.shape[0]:
        out[0] = x[0]
    for n in range(1, x.shape[0]):
        out[n] = x[n] - coef * x[n - 1]


def preemphasis_numba(signal, coef=0.97, out=None):
    _check_signal(signal)
    check_out(out, signal.shape, signal.dtype, inputs=(("signal", signal),))
    if out is None:
        out = np.empty_like(signal)
    _preemphasis_numba(signal, coef, out)
    return out


@njit(parallel=True, cache=True)
def _deltas_numba(c, width, out):
    frames, dims = c.shape
    norm = 0.0
    for w in range(1, width + 1):
        norm += 2.0 * w * w
    for t in prange(frames):
        for f in range(dims):
            acc = 0.0
            for w in range(1, width + 1):
                acc += w * (c[min(t + w, frames - 1), f] - c[max(t - w, 0), f])
            out[t, f] = acc / norm


def deltas_numba(features, width=2, out=None):
    check_float_array(features, "features", 2)
    _check_width(width)
    check_out(out, features.shape, features.dtype, inputs=(("features", features),))
    if out is None:
        out = np.empty_like(features)
    _numba_config.parallel_call(_deltas_numba, features, width, out, work=_numba_config.ALL_THREADS)
    return out


@njit(parallel=True, cache=True)
def _cmvn_numba(c, eps, out):
    frames, dims = c.shape
    for f in prange(dims):
        mean = 0.0
        for t in range(frames):
            mean += c[t, f]
        mean /= frames
        var = 0.0
        for t in range(frames):
            diff = c[t, f] - mean
            var += diff * diff
        scale = 1.0 / math.sqrt(var / frames + eps)
        for t in range(frames):
            out[t, f] = (c[t, f] - mean) * scale


def cmvn_numba(features, eps=1e-8, out=None):
    _check_cmvn_args(features, out)
    if out is None:
        out = np.empty_like(features)
    if features.shape[0]:
        _numba_config.parallel_call(_cmvn_numba, features, eps, out, work=_numba_config.ALL_THREADS)
    return out


VARIANTS = {
    "numpy": {"preemphasis": preemphasis_ref, "power_spectrum": power_spectrum_ref,
              "log_mel": log_mel_ref, "mfcc": mfcc_ref, "deltas": deltas_ref, "cmvn": cmvn_ref},
    "numba": {"preemphasis": preemphasis_numba, "power_spectrum": power_spectrum_numba,
              "log_mel": log_mel_numba, "mfcc": mfcc_numba, "deltas": deltas_numba,
              "cmvn": cmvn_numba},
}

_numba_config.stamp_kernel_caches(globals())
