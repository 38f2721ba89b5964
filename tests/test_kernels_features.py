"""Speech feature kernels: every variant against the NumPy reference, and closed forms."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close

from mlpfast.kernels import features as K

VARIANTS = list(K.VARIANTS)
FRAME_OPS = ("power_spectrum", "log_mel", "mfcc")
# frame ops compute in float64 inside; float32 outputs differ by the final rounding only
FRAME_TOL = {np.float32: (1e-6, 1e-5), np.float64: (1e-10, 1e-9)}


def scaled_tol(dtype, scale):
    atol, rtol = FRAME_TOL[dtype]
    return atol * scale, rtol


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sample_rate", [16000, 8000, 22050, 44100])
@pytest.mark.parametrize("seconds", [0.0249, 0.025, 0.0349, 0.035, 0.3137])
@pytest.mark.parametrize("op", FRAME_OPS)
def test_frame_ops_match_reference(variant, dtype, sample_rate, seconds, op, rng):
    spec = K.make_spec(sample_rate)
    n = int(round(seconds * sample_rate))
    signal = (0.1 * rng.standard_normal(n)).astype(dtype)
    expected = K.VARIANTS["numpy"][op](signal.astype(np.float64), spec)
    actual = K.VARIANTS[variant][op](signal, spec)
    assert actual.dtype == dtype
    assert actual.shape[0] == spec.num_frames(n)
    scale = np.abs(expected).max() if expected.size else 1.0
    assert_close(actual, expected, tol=scaled_tol(dtype, scale), what=f"{variant} {op}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", FRAME_OPS)
def test_frame_ops_write_into_out(variant, op, rng):
    spec = K.make_spec(16000, n_mfcc=13, n_mels=26)
    signal = rng.standard_normal(3217).astype(np.float32)
    expected = K.VARIANTS["numpy"][op](signal, spec)
    out = np.full_like(expected, np.nan)
    assert K.VARIANTS[variant][op](signal, spec, out=out) is out
    assert_close(out, expected, tol=scaled_tol(np.float32, np.abs(expected).max()))


def test_frame_counts_and_centres():
    spec = K.make_spec(16000)
    assert (spec.frame_length, spec.hop_length, spec.n_fft) == (400, 160, 512)
    assert [spec.num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    assert spec.frame_centers(3).tolist() == [200, 360, 520]
    spec8 = K.make_spec(8000)
    assert (spec8.frame_length, spec8.hop_length, spec8.n_fft) == (200, 80, 256)


@pytest.mark.parametrize("variant", VARIANTS)
def test_power_spectrum_parseval(variant, rng):
    """P[0] + 2 sum P[1:N/2] + P[N/2] = N sum(frame^2), frame = pre-emphasized * window."""
    spec = K.make_spec(16000)
    x = rng.standard_normal(1000)
    power = K.VARIANTS[variant]["power_spectrum"](x, spec)
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    for t in range(power.shape[0]):
        frame = y[t * 160:t * 160 + 400] * np.hamming(400)
        one_sided = power[t, 0] + 2 * power[t, 1:-1].sum() + power[t, -1]
        assert one_sided == pytest.approx(512 * np.sum(frame ** 2), rel=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("band", [3, 12, 25, 38])
def test_pure_tone_peaks_in_its_mel_band(variant, band):
    spec = K.make_spec(16000, n_mels=40)
    edges = K.mel_to_hz(np.linspace(0.0, K.hz_to_mel(8000.0), 42))
    frequency = edges[band + 1]                        # centre of filter `band`
    t = np.arange(8000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * frequency * t)
    power = K.VARIANTS[variant]["power_spectrum"](tone, spec)
    peak_bin = int(round(frequency * 512 / 16000))
    assert np.all(np.abs(power.argmax(axis=1) - peak_bin) <= 1)
    log_mel = K.VARIANTS[variant]["log_mel"](tone, spec)
    assert np.all(log_mel.argmax(axis=1) == band)


def test_dct_is_orthonormal_so_full_mfcc_inverts_to_log_mel(rng):
    d = K.dct_matrix(40, 40)
    assert_close(d @ d.T, np.eye(40), tol=(1e-13, 0))
    spec = K.make_spec(16000, n_mfcc=40, n_mels=40)
    x = rng.standard_normal(4000)
    assert_close(K.mfcc_ref(x, spec) @ d, K.log_mel_ref(x, spec), tol=(1e-11, 1e-11))


def test_mel_filterbank_shape_peaks_and_edges():
    filters = K.mel_filterbank(16000, 512, 40)
    assert filters.shape == (40, 257)
    assert np.all(filters >= 0) and np.all(filters.max(axis=1) <= 1.0)
    centres = K.mel_to_hz(np.linspace(0.0, K.hz_to_mel(8000.0), 42))[1:-1]
    peak_hz = filters.argmax(axis=1) * 16000 / 512
    assert np.all(np.abs(peak_hz - centres) <= 16000 / 512)
    assert K.hz_to_mel(1000.0) == pytest.approx(999.99, abs=0.01)     # the HTK scale


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 17, 1601])
def test_preemphasis(variant, dtype, n, rng):
    x = rng.standard_normal(n).astype(dtype)
    expected = np.array([x[i] - 0.9 * x[i - 1] if i else x[0] for i in range(n)], np.float64)
    assert_close(K.VARIANTS[variant]["preemphasis"](x, 0.9), expected, dtype=dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frames,dims", [(0, 3), (1, 1), (2, 5), (7, 28), (101, 13)])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_deltas_match_reference(variant, dtype, frames, dims, width, rng):
    c = rng.standard_normal((frames, dims)).astype(dtype)
    expected = K.deltas_ref(c.astype(np.float64), width)
    assert_close(K.VARIANTS[variant]["deltas"](c, width), expected, dtype=dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_deltas_of_a_ramp(variant):
    """c[t] = 3t + 1, W = 2: slope 3 inside; at the clamped edges t = 0: (1*3 + 2*6) / 10
    and t = 1: (1*6 + 2*9) / 10."""
    c = (3.0 * np.arange(9) + 1.0)[:, None]
    d = K.VARIANTS[variant]["deltas"](c, 2)[:, 0]
    assert d[2:-2].tolist() == [3.0] * 5
    assert d[0] == pytest.approx(1.5) and d[-1] == pytest.approx(1.5)
    assert d[1] == pytest.approx(2.4) and d[-2] == pytest.approx(2.4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frames,dims", [(0, 4), (1, 3), (2, 1), (13, 28), (257, 7)])
def test_cmvn_matches_reference(variant, dtype, frames, dims, rng):
    c = (5.0 + 3.0 * rng.standard_normal((frames, dims))).astype(dtype)
    expected = K.cmvn_ref(c.astype(np.float64))
    assert_close(K.VARIANTS[variant]["cmvn"](c), expected, dtype=dtype)
    in_place = c.copy()
    K.VARIANTS[variant]["cmvn"](in_place, out=in_place)
    assert_close(in_place, expected, dtype=dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cmvn_gives_zero_mean_unit_variance(variant, rng):
    c = 4.0 + 2.5 * rng.standard_normal((500, 6))
    out = K.VARIANTS[variant]["cmvn"](c)
    assert_close(out.mean(axis=0), np.zeros(6), tol=(1e-12, 0))
    assert_close(out.std(axis=0), np.ones(6), tol=(1e-8, 0))
    assert np.all(K.VARIANTS[variant]["cmvn"](np.ones((1, 3))) == 0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_inputs_raise_clear_errors(variant, rng):
    ops = K.VARIANTS[variant]
    spec = K.make_spec(16000)
    with pytest.raises(ValueError, match="signal must be 1-D"):
        ops["mfcc"](np.zeros((10, 2)), spec)
    with pytest.raises(TypeError, match="signal must be float32 or float64"):
        ops["mfcc"](np.zeros(1000, dtype=np.int16), spec)
    with pytest.raises(TypeError, match="spec must be a FeatureSpec"):
        ops["log_mel"](np.zeros(1000), 16000)
    with pytest.raises(ValueError, match=r"out must have shape \(5, 28\)"):
        ops["mfcc"](np.zeros(1100), spec, out=np.zeros((4, 28)))
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ops["deltas"](np.zeros((3, 2)), 0)
    c = np.zeros((4, 3))
    with pytest.raises(ValueError, match="out must not overlap input features"):
        ops["cmvn"](c, out=c[::-1])


def test_spec_arguments_are_checked():
    with pytest.raises(ValueError, match="n_mfcc must be <= n_mels=20, got 28"):
        K.make_spec(16000, n_mfcc=28, n_mels=20)
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        K.make_spec(16000.0)
    with pytest.raises(ValueError, match="mel filter 0 covers no FFT bin"):
        K.make_spec(16000, n_mfcc=10, n_mels=200)
    with pytest.raises(ValueError, match="fmax"):
        K.make_spec(8000, fmax=8000)
    for name, value in (("log_floor", 0.0), ("log_floor", -1.0), ("hop_ms", float("nan")),
                        ("window_ms", float("inf")), ("hop_ms", "10")):
        with pytest.raises(ValueError, match=f"{name} must be a positive number, got"):
            K.make_spec(16000, **{name: value})


def test_vtln_warp_is_monotone_and_keeps_the_ends():
    hz = np.linspace(0.0, 8000.0, 801)
    for warp in (0.8, 1.0, 1.25):
        w = K.vtln_warp(hz, warp, 8000.0)
        assert w[0] == 0.0 and w[-1] == pytest.approx(8000.0)
        assert np.all(np.diff(w) > 0)
        low = hz <= 0.85 * 8000.0 * min(1.0, 1.0 / warp)
        assert_close(w[low], warp * hz[low], tol=(1e-9, 1e-12))
    spec = K.make_spec(16000, warp=1.0)
    assert np.array_equal(spec.mel_filters, K.make_spec(16000).mel_filters)
    with pytest.raises(ValueError, match=r"warp must lie in \[0.5, 2\], got 3"):
        K.make_spec(16000, warp=3)


@pytest.mark.parametrize("warp", [0.85, 1.2])
def test_warped_filters_hear_a_tone_at_the_warped_centre(warp):
    spec = K.make_spec(16000, n_mels=40, warp=warp)
    edges = K.mel_to_hz(np.linspace(0.0, K.hz_to_mel(8000.0), 42))
    band = 15
    t = np.arange(8000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * warp * edges[band + 1] * t)
    assert np.all(K.log_mel_numba(tone, spec).argmax(axis=1) == band)


# --- per-rate constants against formulas written out here (mutation-testing gaps: the
# --- tests above took mel_to_hz, frame lengths and n_fft from the kernel module itself)

def htk_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def htk_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def triangular_filters(sample_rate, n_fft, n_mels, fmin, fmax, warp=1.0):
    """librosa.filters.mel(htk=True, norm=None)'s construction, one filter at a time; warp != 1
    moves the edges along the VTLN line through (0, 0), (f_b, warp f_b), (fmax, fmax),
    f_b = 0.85 fmax min(1, 1/warp)."""
    edges = htk_hz(np.linspace(htk_mel(fmin), htk_mel(fmax), n_mels + 2))
    if warp != 1.0:
        knee = 0.85 * fmax * min(1.0, 1.0 / warp)
        edges = np.interp(edges, [0.0, knee, fmax], [0.0, warp * knee, fmax])
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    filters = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lower, centre, upper = edges[m:m + 3]
        up = (bins - lower) / (centre - lower)
        down = (upper - bins) / (upper - centre)
        filters[m] = np.clip(np.minimum(up, down), 0.0, None)
    return filters


def test_mel_scale_round_trips_and_known_values():
    assert K.hz_to_mel(700.0) == pytest.approx(2595.0 * np.log10(2.0), rel=1e-14)
    assert K.mel_to_hz(2595.0 * np.log10(2.0)) == pytest.approx(700.0, rel=1e-14)
    hz = np.array([0.0, 133.33, 1000.0, 4000.0, 11025.0])
    assert_close(K.mel_to_hz(htk_mel(hz)), hz, tol=(1e-9, 1e-12))
    assert_close(K.hz_to_mel(hz), htk_mel(hz), tol=(1e-9, 1e-12))


@pytest.mark.parametrize("sample_rate,n_fft,n_mels,fmin,fmax", [
    (16000, 512, 40, 0.0, None), (8000, 256, 23, 0.0, None), (22050, 1024, 64, 64.0, 8000.0),
    (44100, 2048, 80, 20.0, 16000.0)])
def test_mel_filterbank_matches_the_triangle_formula(sample_rate, n_fft, n_mels, fmin, fmax):
    filters = K.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    top = sample_rate / 2.0 if fmax is None else fmax
    expected = triangular_filters(sample_rate, n_fft, n_mels, fmin, top)
    assert_close(filters, expected, tol=(1e-12, 0))


@pytest.mark.parametrize("sample_rate,window_ms,hop_ms,frame_length,hop_length,n_fft", [
    (11025, 25.0, 10.0, 276, 110, 512),       # 275.625 rounds up, 110.25 down
    (16000, 32.0, 10.0, 512, 160, 512),       # a power of two is its own n_fft
    (16000, 32.0625, 12.5, 513, 200, 1024),
    (8000, 16.0, 8.0, 128, 64, 128),
    (22050, 20.0, 5.0, 441, 110, 512)])       # 110.25 rounds down
def test_frame_and_fft_lengths_follow_the_documented_rules(sample_rate, window_ms, hop_ms,
                                                           frame_length, hop_length, n_fft):
    spec = K.make_spec(sample_rate, window_ms=window_ms, hop_ms=hop_ms)
    assert (spec.frame_length, spec.hop_length, spec.n_fft) == (frame_length, hop_length, n_fft)
    assert spec.window.shape == (frame_length,)


@pytest.mark.parametrize("variant", VARIANTS)
def test_silence_hits_the_default_log_floor(variant):
    """log-mel of digital silence is log(1e-10) (make_spec's log_floor), its MFCC the DCT of
    that constant: c0 = sqrt(n_mels) log(1e-10), the rest 0."""
    spec = K.make_spec(16000, n_mfcc=13, n_mels=40)
    silence = np.zeros(1600)
    log_mel = K.VARIANTS[variant]["log_mel"](silence, spec)
    assert log_mel.shape == (8, 40)
    assert np.all(log_mel == np.log(1e-10))
    mfcc = K.VARIANTS[variant]["mfcc"](silence, spec)
    assert_close(mfcc[:, 0], np.full(8, np.sqrt(40) * np.log(1e-10)), tol=(1e-9, 1e-12))
    assert_close(mfcc[:, 1:], np.zeros((8, 12)), tol=(1e-9, 0))
    loud_floor = K.make_spec(16000, n_mfcc=13, n_mels=40, log_floor=1e-4)
    assert np.all(K.VARIANTS[variant]["log_mel"](silence, loud_floor) == np.log(1e-4))


def test_degenerate_filterbanks_are_refused():
    # at 8000 Hz, n_fft 256, 87 mels leave exactly one filter (the first) without a bin
    with pytest.raises(ValueError, match="mel filter 0 covers no FFT bin"):
        K.make_spec(8000, n_mfcc=13, n_mels=87)
    K.make_spec(8000, n_mfcc=13, n_mels=86)
    for fmin, fmax in ((4000.0, 4000.0), (5000.0, 4000.0), (-1.0, 4000.0)):
        with pytest.raises(ValueError, match=r"need 0 <= fmin < fmax <= sample_rate/2"):
            K.make_spec(16000, fmin=fmin, fmax=fmax)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_power_spectrum_uses_the_specs_preemphasis(variant, coef, rng):
    """|rfft(y[t*hop : t*hop + L] * hamming(L), 512)|^2 with y[n] = x[n] - coef x[n-1],
    written out with np.fft for a spec built with another coefficient than 0.97."""
    spec = K.make_spec(16000, preemphasis=coef)
    x = rng.standard_normal(1200)
    y = np.concatenate([x[:1], x[1:] - coef * x[:-1]])
    frames = np.stack([y[t * 160:t * 160 + 400] * np.hamming(400) for t in range(6)])
    expected = np.abs(np.fft.rfft(frames, n=512, axis=1)) ** 2
    power = K.VARIANTS[variant]["power_spectrum"](x, spec)
    assert_close(power, expected, tol=(1e-9 * expected.max(), 1e-9))


@pytest.mark.parametrize("fmax", [None, 6000.0])
@pytest.mark.parametrize("warp", [0.5, 1.2, 2.0])          # 0.5 and 2: the ends are allowed
def test_warped_filterbank_matches_the_warped_triangle_formula(warp, fmax):
    """The warp keeps its fixed point at fmax (the filterbank's own top, not sr/2): with
    fmax = 6000 Hz no warped filter reaches a bin above 6000 Hz."""
    spec = K.make_spec(16000, n_mels=40, fmax=fmax, warp=warp)
    top = 8000.0 if fmax is None else fmax
    expected = triangular_filters(16000, 512, 40, 0.0, top, warp=warp)
    assert_close(spec.mel_filters, expected, tol=(1e-12, 0))
    above = np.arange(257) * 16000 / 512 > top
    assert np.all(spec.mel_filters[:, above] == 0.0)


@pytest.mark.parametrize("arguments,message", [
    (dict(window_ms=0.0625), "give windows of 1 and hops of 160 samples"),   # L = 1: no FFT
    (dict(hop_ms=0.01), "give windows of 400 and hops of 0 samples"),
    (dict(preemphasis=1.0), r"preemphasis must lie in \[0, 1\), got 1.0"),
    (dict(preemphasis=-0.1), r"preemphasis must lie in \[0, 1\), got -0.1")])
def test_spec_refuses_one_sample_windows_zero_hops_and_preemphasis_of_one(arguments, message):
    with pytest.raises(ValueError, match=message):
        K.make_spec(16000, **arguments)
