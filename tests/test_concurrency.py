"""Two Python threads training or predicting with separate models at the same time get the
same results, bit for bit, as running the same work one after the other; threads sharing one
model take turns on it."""
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


def _shared_model(backend):
    """A model in training mode (as built) with batchnorm and dropout, whose inference
    calls switch it to eval and back: the mode is shared state too."""
    return mf.MLP([32, 64, 48, 4], batchnorm=True, dropout=0.2, backend=backend, seed=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_sharing_one_model_get_what_one_thread_gets(backend):
    """predict_proba, predict, evaluate and calls of one model from several threads: each
    result equals the sequential one, and the model keeps its mode and state (its reused
    buffers and its training flag are taken in turns)."""
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=(300, 32)).astype(np.float32) for _ in range(3)]
    y = rng.integers(0, 4, 300)
    model = _shared_model(backend)
    state = model.state_dict()

    def inference(x):
        return (mf.predict_proba(model, x, batch_size=64), mf.predict(model, x, batch_size=64),
                mf.evaluate(model, x, y, batch_size=64)["loss"])

    def calls(x):
        return model.eval()(x)

    want = [inference(x) for x in xs]
    results = _run_in_threads([lambda x=x: [inference(x) for _ in range(8)] for x in xs])
    for got, (proba, labels, loss) in zip(results, want):
        for p, lab, lo in got:
            assert np.array_equal(p, proba) and np.array_equal(lab, labels) and lo == loss
    assert model.training
    assert all(np.array_equal(v, state[k]) for k, v in model.state_dict().items())
    want = [calls(x) for x in xs]
    results = _run_in_threads([lambda x=x: [calls(x) for _ in range(8)] for x in xs])
    for got, logits in zip(results, want):
        assert all(np.array_equal(g, logits) for g in got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predicting_with_a_model_another_thread_trains_waits_for_the_fit(backend):
    """A predict on a model that fit trains in another thread runs before that fit or
    after it, never on a half-trained model, and the fit trains as it does alone."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(384, 32)).astype(np.float32)
    y = rng.integers(0, 4, 384)

    def train(model):
        opt = mf.optim.Adam(model.parameters(), lr=3e-3)
        mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=4, batch_size=32, seed=1,
               progress=False, val=(x[:64], y[:64]))
        return mf.to_numpy(model.flat_data).copy()

    before = mf.predict_proba(_shared_model(backend), x)
    alone = _shared_model(backend)
    trained = train(alone)
    after = mf.predict_proba(alone, x)
    model, done = _shared_model(backend), threading.Event()

    def fit_then_flag():
        try:
            return train(model)
        finally:
            done.set()

    def predict_until_trained():
        seen = [mf.predict_proba(model, x)]
        while not done.is_set():
            seen.append(mf.predict_proba(model, x))
        return seen + [mf.predict_proba(model, x)]

    params, seen = _run_in_threads([fit_then_flag, predict_until_trained])
    assert np.array_equal(params, trained)
    assert all(np.array_equal(p, before) or np.array_equal(p, after) for p in seen)
    assert np.array_equal(seen[-1], after)
