"""Resident memory stays flat over thousands of training steps, and over repeated calls of
fit / predict / checkpoint writes (Linux: RSS from /proc/self/statm)."""
import gc
import os
import weakref

import numpy as np
import pytest

import mlpfast as mf

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads RSS from /proc/self/statm (Linux)")
BACKENDS = mf.backends()
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampling:
    """A dataset recording RSS every 100 batches; batches of 64 x 128 float32 (32 KiB), so
    leaking one batch-sized array per step would add ~96 MB over the run. (A call may
    gather several batches: the cpu step's do.)"""

    def __init__(self, x, y):
        self.x, self.y, self.batches, self.samples = x, y, 0, []
        self.num_features, self.num_classes = x.shape[1], 10

    def __len__(self):
        return len(self.x)

    def gather_batch(self, index, x_out, y_out):
        before, self.batches = self.batches, self.batches + len(index) // 64
        if self.batches // 100 > before // 100:
            self.samples.append(rss())
        x_out[...] = self.x[index]
        y_out[...] = self.y[index]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rss_is_flat_over_3000_training_steps(backend, tmp_path):
    rng = np.random.default_rng(0)
    data = Sampling(rng.normal(size=(640, 128)).astype(np.float32), rng.integers(0, 10, 640))
    model = mf.MLP([128, 32, 10], backend=backend, seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-4)
    mf.fit(model, opt, mf.CrossEntropyLoss(), data, epochs=300, batch_size=64, seed=0,
           progress=False, checkpoint=tmp_path / "c", checkpoint_every=500)
    assert data.batches == 3000
    warm, end = data.samples[2], max(data.samples[-5:])
    print(f"\nRSS after 300 steps {warm / MB:.1f} MB, after 3000 steps {end / MB:.1f} MB")
    assert end - warm < 4 * MB


def test_rss_is_flat_over_repeated_fit_predict_and_checkpoint_calls(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 256)).astype(np.float32)
    y = rng.integers(0, 10, 256)

    def round_trip():
        model = mf.MLP([256, 32, 10], backend="numpy", seed=0)
        opt = mf.optim.Adam(model.parameters())
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=64,
               progress=False, checkpoint=tmp_path / "c", val=(x[:64], y[:64]))
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=2, batch_size=64,
               progress=False, resume=tmp_path / "c")
        mf.predict_proba(model, x)
        mf.evaluate(model, x, y)

    for _ in range(10):
        round_trip()
    warm = rss()
    for _ in range(60):
        round_trip()
    grown = rss() - warm
    print(f"\nRSS growth over 60 fit/resume/predict/evaluate rounds: {grown / MB:.2f} MB")
    assert grown < 4 * MB


def test_a_dropped_model_is_freed_without_the_cycle_collector(tmp_path):
    """No reference cycle through the flat buffer: memory (host or device) returns as soon
    as the last reference goes, not at some later garbage collection."""
    x = np.zeros((16, 8), np.float32)
    y = np.zeros(16, np.int64)
    model = mf.MLP([8, 4, 3], backend="numpy", seed=0)
    opt = mf.optim.Adam(model.parameters())
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=1, batch_size=8, progress=False,
           checkpoint=tmp_path / "c", val=(x, y))
    mf.predict(model, x)
    alive = weakref.ref(model)
    gc.disable()
    try:
        del model, opt
        assert alive() is None
    finally:
        gc.enable()
