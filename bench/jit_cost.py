"""JIT cost of the Numba kernels: first-call compile time and start-up with the cache.

    python bench/jit_cost.py [--backend cpu] [--cache-dir DIR]

Runs, in a fresh process each, "import mlpfast + build an MLP + fit for one short epoch
(on "cpu": the compiled MLP step) + one layer-by-layer train step + predict" twice with
NUMBA_CACHE_DIR set to an empty folder (the first run compiles and writes the on-disk
cache, the second loads it), and prints both wall times next to the same work on the
numpy backend (no JIT at all).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

STEP = """
import time
t0 = time.perf_counter()
import numpy as np
import mlpfast
t1 = time.perf_counter()
rng = np.random.default_rng(0)
model = mlpfast.MLP([784, 256, 128, 10], "relu", backend={backend!r}, seed=0)
opt = mlpfast.optim.{optimizer}(model.parameters(), lr=1e-3)
loss = mlpfast.CrossEntropyLoss({backend!r})
x = rng.standard_normal((100, 784)).astype(np.float32)
y = rng.integers(0, 10, 100)
mlpfast.fit(model, opt, loss, x, y, epochs=1, batch_size=64, progress=False)  # as users train
xb = np.empty((64, 784), np.float32); yb = np.empty(64, np.int64)
model.backend.gather(x, np.arange(64), xb); model.backend.gather(y, np.arange(64), yb)
loss(model.forward(xb), yb); model.backward(loss.backward()); opt.step()   # layer by layer
mlpfast.predict(model, x)
t2 = time.perf_counter()
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}}")
"""


def run(backend, optimizer, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", STEP.format(backend=backend, optimizer=optimizer)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return time.perf_counter() - start, float(out[0]), float(out[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", nargs="+", default=["numba", "cpu"])
    parser.add_argument("--optimizer", default="Adam")
    args = parser.parse_args()
    print(f"{'backend':8s} {'run':14s} {'process s':>9s} {'import s':>9s} {'first step s':>12s}")
    with tempfile.TemporaryDirectory() as empty:
        for label, cache in (("numpy", empty),):
            total, imp, step = run("numpy", args.optimizer, cache)
            print(f"{label:8s} {'(no JIT)':14s} {total:9.2f} {imp:9.2f} {step:12.2f}")
    for backend in args.backend:
        with tempfile.TemporaryDirectory() as cache:
            for label in ("compile + save", "cache load"):
                total, imp, step = run(backend, args.optimizer, cache)
                print(f"{backend:8s} {label:14s} {total:9.2f} {imp:9.2f} {step:12.2f}")


if __name__ == "__main__":
    main()
