"""Two Python threads training or predicting with separate models at the same time get the
same results, bit for bit, as running the same work one after the other."""
import threading

import numpy as np
import pytest

import mlpfast as mf

BACKENDS = mf.backends()


def _job(backend, seed):
    """Train a model of its own on data of its own; returns (params, probabilities, history)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(384, 32)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0.5)
    model = mf.MLP([32, 64, 48, 4], backend=backend, seed=seed)
    opt = mf.optim.Adam(model.parameters(), lr=3e-3)
    history = mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=3, batch_size=32,
                     seed=seed, progress=False)
    proba = mf.predict_proba(model, x, batch_size=50)
    return mf.to_numpy(model.flat_data).copy(), proba, history["loss"]


def _run_in_threads(jobs):
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def run(i, job):
        try:
            barrier.wait()
            results[i] = job()
        except BaseException as e:     # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a training thread hangs"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_training_equal_sequential_runs(backend):
    sequential = [_job(backend, 1), _job(backend, 2)]
    for _ in range(3):                    # several rounds: interleavings differ each time
        threaded = _run_in_threads([lambda: _job(backend, 1), lambda: _job(backend, 2)])
        for (p_seq, proba_seq, loss_seq), (p_thr, proba_thr, loss_thr) in zip(sequential,
                                                                               threaded):
            assert np.array_equal(p_seq, p_thr)
            assert np.array_equal(proba_seq, proba_thr)
            assert loss_seq == loss_thr


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_predicting_with_one_model_each_while_another_trains(backend):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    models = [mf.MLP([32, 40, 4], backend=backend, seed=s) for s in (5, 6)]
    expected = [mf.predict_proba(m, x, batch_size=64) for m in models]

    def predict_many(model):
        return [mf.predict_proba(model, x, batch_size=64) for _ in range(5)]

    results = _run_in_threads([lambda: predict_many(models[0]),
                               lambda: predict_many(models[1]),
                               lambda: _job(backend, 4)])
    for got, want in zip(results[:2], expected):
        for proba in got:
            assert np.array_equal(proba, want)
    assert np.array_equal(results[2][0], _job(backend, 4)[0])
