"""The numba and cpu backends: same training as numpy, fused engine steps, no allocation
in the hot loop, threads (the count, and the guard of the workqueue layer)."""
import threading
import tracemalloc

import numba
import numpy as np
import pytest
from conftest import assert_close

import mlpfast
from mlpfast import nn, optim
from mlpfast.datasets import as_dataset
from mlpfast.kernels import _numba_config

FAST = ["numba", "cpu"]
# parameters after a few steps: float64 agrees to rounding, float32 to its precision
# (the Numba kernels use polynomial exp/tanh in float32: ~2e-7 relative)
TRAIN_TOL = {np.float32: (2e-5, 2e-4), np.float64: (1e-10, 1e-8)}


def train_steps(backend, dtype, activation="relu", loss="ce", opt="adam", steps=4, seed=0,
                sizes=(13, 32, 17, 5), batch=24):
    """Parameters after ``steps`` steps of mini-batch training, and the last loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((97, sizes[0]))
    y = rng.integers(0, sizes[-1], 97)
    model = nn.MLP(list(sizes), activation, backend=backend, dtype=dtype, seed=seed)
    opts = {"sgd": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                       weight_decay=1e-3),
            "adam": lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
            "adamw": lambda p: optim.AdamW(p, lr=1e-2)}
    opt_ = opts[opt](model.parameters())
    loss_fn = mlpfast.CrossEntropyLoss(backend) if loss == "ce" else mlpfast.MSELoss(backend)
    be = model.backend
    xb = np.empty((batch, sizes[0]), dtype)
    yb = np.empty(batch, np.int64)
    value = None
    for step in range(steps):
        index = rng.permutation(97)[:batch]
        be.gather(x, index, xb)
        be.gather(y, index, yb)
        logits = model.forward(be.to_device(xb))
        value = loss_fn(logits, yb)
        model.backward(loss_fn.backward())
        opt_.step()
    return model.state_dict(), value


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,loss,opt", [
    ("relu", "ce", "adam"), ("tanh", "ce", "sgd"), ("sigmoid", "mse", "adamw"),
    ("gelu", "ce", "adamw"), ("gelu_tanh", "mse", "sgd"), ("leaky_relu", "ce", "sgd"),
    ("identity", "mse", "adam")])
def test_training_matches_numpy(backend, dtype, activation, loss, opt):
    expected, expected_loss = train_steps("numpy", dtype, activation, loss, opt)
    got, got_loss = train_steps(backend, dtype, activation, loss, opt)
    atol, rtol = TRAIN_TOL[dtype]
    assert abs(got_loss - expected_loss) <= atol + rtol * abs(expected_loss)
    assert got.keys() == expected.keys()
    for name in expected:
        assert_close(got[name], expected[name], tol=TRAIN_TOL[dtype],
                     what=f"{backend} {activation} {name}")


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_linear_and_output_activation_fuse_into_one_step(backend):
    model = nn.MLP([6, 8, 8, 3], "relu", backend=backend)
    kinds = [(type(layer).__name__, type(act).__name__ if act else None)
             for layer, act in model.plan().stages]
    assert kinds == [("Linear", "ReLU"), ("Linear", "ReLU"), ("Linear", None)]
    gelu = nn.MLP([6, 8, 3], "gelu", backend=backend)      # GELU' needs z: not fused
    assert [act for _, act in gelu.plan().stages] == [None, None, None]


@pytest.mark.parametrize("backend", FAST)
def test_fused_model_keeps_torch_keys_and_matches_unfused_forward(backend, rng):
    model = nn.MLP([7, 9, 4], "tanh", backend=backend, dtype=np.float64, seed=1)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = rng.standard_normal((5, 7))
    s = model.state_dict()
    expected = np.tanh(x @ s["0.weight"].T + s["0.bias"]) @ s["2.weight"].T + s["2.bias"]
    assert_close(model(x), expected)


def test_backends_are_registered_and_cpu_is_the_default():
    assert {"numba", "cpu"} <= set(mlpfast.backends())
    assert mlpfast.get_backend("auto").name in ("cpu", "cuda")
    info = mlpfast.get_backend("numba").info
    assert info["threading_layer"] == _numba_config.THREADING_LAYER


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("path", ["layers", "fit"])
def test_train_step_allocates_no_arrays_after_the_first(backend, path, rng):
    """NumPy reports its array data to tracemalloc (domain np.lib.tracemalloc_domain).
    Steps 2.. must leave no new array data alive, and the traced peak during them must
    stay below the smallest array a step could allocate (a 1024-float bias gradient,
    4 KiB), so no temporary array was allocated and freed either. path "layers": the
    engine's calls one by one; "fit": the step fit runs (the compiled MLP step on cpu)."""
    batch, sizes = 32, [512, 1024, 1024, 1024]
    x = rng.standard_normal((200, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 200)
    model = nn.MLP(sizes, "relu", backend=backend, seed=0)
    opt_ = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = mlpfast.CrossEntropyLoss(backend)
    be = model.backend
    xb, yb = np.empty((batch, sizes[0]), np.float32), np.empty(batch, np.int64)
    indices = [rng.permutation(200)[:batch] for _ in range(6)]
    fit_step = be.make_step(model.plan(), loss_fn, opt_, as_dataset(model, x, y), batch)
    lrs, sums = np.full(1, 1e-3), np.zeros(2)

    def step(index):
        if path == "fit":
            fit_step.run(index, 0, 1, lrs, sums)
        else:
            be.gather(x, index, xb)
            be.gather(y, index, yb)
            loss_fn(model.forward(xb), yb)
            model.backward(loss_fn.backward())
            opt_.step()

    step(indices[0])
    step(indices[1])
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for index in indices[2:]:
            step(index)
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    numpy_domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    grown = [d for d in after.filter_traces(numpy_domain).compare_to(
        before.filter_traces(numpy_domain), "lineno") if d.size_diff > 0]
    assert grown == [], f"new array data alive after steps 2..: {grown[:3]}"
    assert peak - start < 4096, f"traced peak grew by {peak - start} bytes during 4 steps"


@pytest.mark.parametrize("n", [0, 257, 2**40, 2.0, True])
def test_set_num_threads_refuses_what_the_pool_cannot_run_and_keeps_its_count(n):
    before = mlpfast.get_num_threads()
    with pytest.raises(ValueError, match=f"n must be an integer from 1 to 256 .*got {n!r}"):
        mlpfast.set_num_threads(n)
    assert mlpfast.get_num_threads() == before


def test_set_num_threads_reaches_numba_in_every_thread():
    seen = []

    @numba.njit(parallel=True)
    def threads_used(out):
        for i in numba.prange(out.shape[0]):
            out[i] = numba.get_num_threads()

    previous = mlpfast.get_num_threads()
    try:
        mlpfast.set_num_threads(1)
        out = np.zeros(4, np.int64)

        def run():
            _numba_config.parallel_call(threads_used, out)
            seen.append(int(out.max()))
        run()
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        mlpfast.set_num_threads(previous)
    assert seen == [1, 1]


@pytest.mark.skipif(_numba_config.MAX_THREADS < 2, reason="needs 2 Numba threads")
def test_kernels_leave_the_callers_numba_thread_count_as_they_found_it():
    """Numba's thread count belongs to the calling thread: a program's own parallel Numba
    code keeps the count it chose after mlpfast's kernels ran on theirs (small calls on 1
    thread, large ones on mlpfast's count)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    large = rng.normal(size=(_numba_config.PARALLEL_MIN_ELEMENTS // 64 + 1, 64)).astype(
        np.float32)
    mine, previous = numba.get_num_threads(), mlpfast.get_num_threads()
    try:
        mlpfast.set_num_threads(2)
        for callers in (2, 1):
            numba.set_num_threads(callers)
            model = nn.MLP([8, 16, 3], backend="numba", seed=0)
            mlpfast.fit(model, optim.Adam(model.parameters()), mlpfast.CrossEntropyLoss(), x,
                        y, epochs=1, batch_size=16, progress=False)      # calls on 1 thread
            assert numba.get_num_threads() == callers
            mlpfast.get_backend("numba").activations["relu"].forward(large)     # on 2
            assert numba.get_num_threads() == callers
    finally:
        numba.set_num_threads(mine)
        mlpfast.set_num_threads(previous)


WORKQUEUE_SCRIPT = """
import sys, threading
import numpy as np
sys.path.insert(0, {tests!r})
from mlpfast.kernels import _numba_config
from test_backends import train_steps
assert _numba_config.THREADING_LAYER == "workqueue"
results = {{}}
def work(seed):
    for _ in range(3):
        results[seed] = train_steps("numba", np.float32, seed=seed, steps=6)[1]
workers = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
[w.start() for w in workers]
[w.join() for w in workers]
import numba
print(numba.threading_layer(), results[1], results[2])
"""


def test_workqueue_layer_is_guarded_against_concurrent_launches():
    """Numba's workqueue layer aborts the process when two threads launch parallel
    kernels at once; parallel_call serializes launches on that layer. (Concurrency on
    the default layer: tests/test_concurrency.py.)"""
    import os
    import subprocess
    import sys
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MLPFAST_NUMBA_THREADING_LAYER="workqueue")
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    layer, loss1, loss2 = done.stdout.split()
    assert layer == "workqueue"
    assert float(loss1) == train_steps("numba", np.float32, seed=1, steps=6)[1]
    assert float(loss2) == train_steps("numba", np.float32, seed=2, steps=6)[1]


SPEECH_WORKQUEUE_SCRIPT = """
import threading
import numpy as np
from mlpfast.kernels import _numba_config, context, features
assert _numba_config.THREADING_LAYER == "workqueue"
rng = np.random.default_rng(0)
signal = rng.normal(size=16000).astype(np.float32)
frames = rng.normal(size=(2000, 13)).astype(np.float32)
offsets, index = np.array([0, 1000, 2000]), np.arange(0, 2000, 3)
spec = features.make_spec(16000)
ops = features.VARIANTS["numba"]
jobs = [lambda: ops["mfcc"](signal, spec), lambda: ops["deltas"](frames),
        lambda: ops["cmvn"](frames),
        lambda: context.VARIANTS["numba"]["context_gather"](frames, offsets, index, 5)]
want = [job() for job in jobs]
same = []
def work():
    same.append(all(np.array_equal(job(), w) for _ in range(30) for job, w in zip(jobs, want)))
workers = [threading.Thread(target=work) for _ in range(2)]
[w.start() for w in workers]
[w.join() for w in workers]
print(same)
"""


def test_speech_kernels_are_guarded_on_the_workqueue_layer_too():
    """The speech feature and context kernels launch through parallel_call like the others:
    two threads computing features on the workqueue layer (which aborts the process on
    concurrent launches) take turns and get what one thread gets."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, MLPFAST_NUMBA_THREADING_LAYER="workqueue")
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run([sys.executable, "-c", SPEECH_WORKQUEUE_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[True,", "True]"]


FORK_SCRIPT = """
import os, sys
import numpy as np
import mlpfast
from mlpfast.kernels import _numba_config
from numba.np.ufunc import omppool
if _numba_config.THREADING_LAYER != "omp" or omppool.openmp_vendor != "GNU":
    print("skip", _numba_config.THREADING_LAYER, omppool.openmp_vendor)
    sys.exit()
x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
y = np.arange(64) % 3

def train():
    m = mlpfast.MLP([8, 16, 3], backend="numba", seed=0)
    return mlpfast.fit(m, mlpfast.optim.Adam(m.parameters()), mlpfast.CrossEntropyLoss(), x,
                       y, epochs=2, batch_size=16, progress=False)

train()                                     # GNU OpenMP's threads have started
pid = os.fork()
if pid == 0:
    try:
        train()
        code = 4
    except RuntimeError as e:
        code = 3 if "forked" in str(e) and "spawn" in str(e) else 5
    except BaseException:
        code = 6
    os._exit(code)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_forked_after_gnu_openmp_ran_gets_a_clear_error():
    """Numba stops such a child at its first parallel kernel with SIGTERM, which fit (taking
    SIGTERM at chunk boundaries) used to treat as a stop request, running on with the kernel
    skipped: the child now gets a RuntimeError naming the start methods that work."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, MLPFAST_NUMBA_THREADING_LAYER="omp")
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0 and "cannot load that layer" in done.stderr:
        pytest.skip("Numba has no OpenMP layer here")
    assert done.returncode == 0, done.stderr[-2000:]
    if done.stdout.startswith("skip"):
        pytest.skip(f"not GNU OpenMP: {done.stdout}")
    assert done.stdout.split()[-2:] == ["child", "3"], done.stdout + done.stderr[-2000:]


IMPORT_SCRIPT = """
import json, os, sys
import numba
from numba.core import config, caching
before = (dict(os.environ), config.CPU_FEATURES, config.CPU_NAME, config.THREADING_LAYER,
          list(caching.CompileResultCacheImpl._locator_classes))
import mlpfast, mlpfast.cli, mlpfast.distributed, mlpfast.machine, mlpfast.env
mlpfast.machine.cpu_features(); mlpfast.machine.available_cpus()
m = mlpfast.MLP([4, 3], backend="cpu", seed=0)
mlpfast.fit(m, mlpfast.optim.Adam(m.parameters()), mlpfast.CrossEntropyLoss(),
            [[0.0] * 4] * 8, [0] * 8, epochs=1, batch_size=4, progress=False)
after = (dict(os.environ), config.CPU_FEATURES, config.CPU_NAME, config.THREADING_LAYER,
         list(caching.CompileResultCacheImpl._locator_classes))
print(json.dumps([sorted(set(after[0].items()) ^ set(before[0].items())),
                  before[1:4] == after[1:4], before[4] == after[4]]))
"""


def test_importing_and_training_change_nothing_outside_mlpfast():
    """No environment variable, no Numba setting (CPU features, threading layer), no Numba
    cache locator of other functions: mlpfast keeps its choices to its own kernels. The
    child starts from a minimal environment: this process imported mlpfast already, so a
    variable set at import would be in its os.environ and hide in a copy of it."""
    import json
    import os
    import subprocess
    import sys
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH", "TMPDIR", "LANG")
           if k in os.environ}
    done = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], True, True], done.stdout
