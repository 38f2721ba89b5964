"""Speech feature and context-window kernels: every variant, validated, then timed.

Features: 10 s of 16 kHz noise -> MFCC (28 of 40 mels) or log-mel; reported as audio
seconds per wall second (``audio_s_per_s``) and GB/s of signal read + features written.
Context gather: a batch of 256 frames with +-10 neighbours of 28 features out of
100,000 frames in 300-frame utterances; reported as frames per second and GB/s written.
"""
import numpy as np
import pytest
from _common import assert_close, run_benchmark

from mlpfast.kernels import context, features

SECONDS = 10.0
SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def signal():
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(SECONDS * SAMPLE_RATE))).astype(np.float32)


@pytest.mark.parametrize("variant", list(features.VARIANTS))
@pytest.mark.parametrize("op", ["mfcc", "log_mel"])
def test_feature_extraction(benchmark, variant, op, signal):
    spec = features.make_spec(SAMPLE_RATE)
    fn = features.VARIANTS[variant][op]
    expected = features.VARIANTS["numpy"][op](signal.astype(np.float64), spec)
    out = np.empty(expected.shape, np.float32)
    assert_close(fn(signal, spec, out=out), expected, 1e-5 * np.abs(expected).max(), 1e-5,
                 f"{variant} {op}")
    run_benchmark(benchmark, lambda: fn(signal, spec, out=out), shape=f"{SECONDS:g}s@16kHz",
                  variant=variant, nbytes=signal.nbytes + out.nbytes)
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["audio_s_per_s"] = SECONDS / benchmark.extra_info["median_s"]


@pytest.mark.parametrize("variant", list(context.VARIANTS))
def test_context_gather(benchmark, variant):
    rng = np.random.default_rng(0)
    frames, dims, k, batch = 100_000, 28, 10, 256
    feats = rng.standard_normal((frames, dims)).astype(np.float32)
    offsets = np.append(np.arange(0, frames, 300), frames).astype(np.int64)
    index = rng.integers(0, frames, batch)
    out = np.empty((batch, (2 * k + 1) * dims), np.float32)
    fn = context.VARIANTS[variant]["context_gather"]
    if variant == "numpy":             # the reference builds all N x (2K+1) x F windows
        feats, offsets, index = feats[:3000], offsets[:11], rng.integers(0, 3000, batch)
    expected = context.context_gather_ref(feats, offsets, index, k)
    assert_close(fn(feats, offsets, index, k, out), expected, 0.0, 0.0, f"{variant} gather")
    run_benchmark(benchmark, lambda: fn(feats, offsets, index, k, out),
                  shape=f"{batch}x{2 * k + 1}x{dims}", variant=variant, nbytes=2 * out.nbytes)
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["frames_per_s"] = batch / benchmark.extra_info["median_s"]
