"""Training benchmarks: one step and one full MNIST epoch of the three reference
configurations (784-256-128-10 at batch 64 and 256, 784-1024-1024-10 at batch 256; ReLU,
cross-entropy, Adam lr 1e-3) on every backend this machine runs.

A step is forward, loss, backward and the Adam update on one real MNIST batch; before it
is timed, it is checked against the numpy backend from the same weights (the loss and
every gradient of one step, then the losses of three Adam steps). An epoch goes through ``mlpfast.fit`` after a warm-up of 32 batches
and one batch of the epoch's tail size; it is timed twice (two epochs).
"""
import pytest
from _common import CONFIGS, config_name, mlp_train_flops, peak_gflops, run_benchmark

import mlpfast
from mlpfast.benchmarks.harness import WARMUP_BATCHES, train_step_setup, validate_train_step

CONFIG_IDS = [config_name(sizes, batch).replace(" ", "-") for sizes, batch in CONFIGS]


@pytest.fixture(scope="module")
def mnist_train():
    (x, y), _ = mlpfast.datasets.mnist()
    return x, y


@pytest.mark.parametrize("backend", mlpfast.backends())
@pytest.mark.parametrize("sizes,batch", CONFIGS, ids=CONFIG_IDS)
def test_train_step(benchmark, backend, sizes, batch):
    if backend != "numpy":
        validate_train_step(backend, sizes, batch)
    _, step = train_step_setup(backend, sizes, batch)
    loss = run_benchmark(benchmark, step, flops=mlp_train_flops(sizes, batch),
                         shape=config_name(sizes, batch), variant=backend)
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["samples_per_s"] = batch / benchmark.extra_info["median_s"]
    assert 0.0 < loss < 10.0                 # a real loss, not NaN, inf or garbage


@pytest.mark.parametrize("backend", mlpfast.backends())
@pytest.mark.parametrize("sizes,batch", CONFIGS, ids=CONFIG_IDS)
def test_train_epoch(benchmark, backend, sizes, batch, mnist_train):
    x, y = mnist_train
    model = mlpfast.MLP(list(sizes), activation="relu", backend=backend, seed=0)
    optimizer = mlpfast.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = mlpfast.CrossEntropyLoss()
    warm = WARMUP_BATCHES * batch + len(x) % batch
    mlpfast.fit(model, optimizer, loss_fn, x[:warm], y[:warm], epochs=1, batch_size=batch,
                seed=0, progress=False)
    seeds = iter(range(1, 100))

    def epoch():
        return mlpfast.fit(model, optimizer, loss_fn, x, y, epochs=1, batch_size=batch,
                           seed=next(seeds), progress=False)

    history = benchmark.pedantic(epoch, rounds=2, iterations=1)
    median = benchmark.stats.stats.median if benchmark.stats else history["seconds"][0]
    gflops = mlp_train_flops(sizes, 1) * len(x) / median * 1e-9
    benchmark.extra_info.update(shape=config_name(sizes, batch), variant=backend,
                                threads=mlpfast.get_num_threads(), median_s=median,
                                samples_per_s=len(x) / median, gflops=gflops,
                                final_loss=history["loss"][-1])
    if peak_gflops():
        benchmark.extra_info["percent_of_peak"] = 100.0 * gflops / peak_gflops()
    assert history["loss"][-1] < 0.5         # one epoch of MNIST learns something
