"""Where an epoch of `mf.fit` goes besides the training step: the time inside the backend
step's calls and the time outside them, the serial part that more threads do not shorten.
Issue 17 asks that on 16 threads an epoch keep 85% of the step benchmark's samples/s.

    python bench/epoch_overhead.py [--config b64 b256 wide "784-300-100-10 b32" ...]
                                   [--epochs 3] [--threads 2]

Per configuration (real MNIST, ReLU, Adam lr 1e-3, cross-entropy, backend cpu): first the
step alone, as `mlpfast bench`'s step row (one batch again and again, the median call); then
the warm-up of `--compare` and --epochs full epochs through mf.fit. Each epoch is split into
the time inside the step's calls (gather, forward, backward, Adam of chunks of batches) and
the rest of the epoch's seconds (the sample order, the learning rates, the bookkeeping
between chunks, the finiteness check and record at the epoch's end). Prints per epoch: its
ms, the ms outside the calls and of those the finiteness check's (``check_state_finite``: a
NumPy pass over the parameters and the optimizer's state), the calls, us per step inside
them, and the epoch's samples/s over the step's ("epoch/step", as `mlpfast bench --compare`
reports it).

With t the step's time on N threads, an epoch of S steps keeps at most S t / (S t + outside)
of the step's speed when only the step scales: the outside ms measured here bound what the
epoch loop can cost on more threads.
"""
import argparse
import contextlib
import time

from _args import positive
from step_variants import CONFIGS, config_arg


@contextlib.contextmanager
def timed(module, name, calls):
    """While inside: module.name (a function) appends the seconds of each call to calls."""
    function = getattr(module, name)

    def timed_function(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - start)
    setattr(module, name, timed_function)
    try:
        yield
    finally:
        setattr(module, name, function)


@contextlib.contextmanager
def timed_step_calls(backend, calls):
    """While inside: every step that backend.make_step builds appends (batches, seconds)
    of each of its run() calls to ``calls``."""
    make_step = backend.make_step

    def timing_make_step(*args, **kwargs):
        step = make_step(*args, **kwargs)
        run = step.run

        def timed_run(*run_args):
            start = time.perf_counter()
            result = run(*run_args)
            calls.append((run_args[2], time.perf_counter() - start))
            return result
        step.run = timed_run
        return step
    backend.make_step = timing_make_step
    try:
        yield
    finally:
        backend.make_step = make_step


def step_seconds(sizes, batch):
    """The median time of one training step on one batch: `mlpfast bench`'s cpu step row
    (harness.train_step_rows, which first checks the step against the numpy backend)."""
    from mlpfast.benchmarks.harness import train_step_rows
    [row] = train_step_rows(["cpu"], [(tuple(sizes), batch)])
    if "error" in row:
        raise SystemExit(f"the cpu step differs from the reference: {row['error']}")
    return row["median_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=config_arg, nargs="+",
                        default=[CONFIGS[name] for name in CONFIGS],
                        help=f"{', '.join(CONFIGS)} or MNIST networks and batches such as "
                             f"'784-300-100-10 b32' (default: all three)")
    parser.add_argument("--epochs", type=positive(int), default=3)
    parser.add_argument("--threads", type=positive(int), default=2)
    args = parser.parse_args()
    import mlpfast as mf
    from mlpfast import train
    from mlpfast.benchmarks.harness import WARMUP_BATCHES, oversubscription_warning
    from mlpfast.machine import available_cpus
    mf.set_num_threads(args.threads)
    warning = oversubscription_warning(args.threads, available_cpus())
    if warning:
        print(warning)
    (x, y), _ = mf.datasets.mnist()
    for sizes, batch in args.config:
        name = f"{'-'.join(map(str, sizes))} b{batch}, {args.threads} threads"
        step = step_seconds(sizes, batch)
        print(f"{name}: the step alone {step * 1e6:,.1f} us ({batch / step:,.0f} samples/s)")
        model = mf.MLP(list(sizes), "relu", backend="cpu", seed=0)
        optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
        calls, checks = [], []
        with timed_step_calls(model.backend, calls), \
                timed(train, "check_state_finite", checks):
            warm = WARMUP_BATCHES * batch + len(x) % batch
            mf.fit(model, optimizer, mf.CrossEntropyLoss(), x[:warm], y[:warm], epochs=1,
                   batch_size=batch, seed=0, progress=False)
            for epoch in range(args.epochs):
                calls.clear(), checks.clear()
                history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=1,
                                 batch_size=batch, seed=1 + epoch, progress=False)
                seconds = history["seconds"][0]
                inside, steps = sum(c[1] for c in calls), sum(c[0] for c in calls)
                print(f"  epoch {epoch + 1}: {seconds * 1e3:,.1f} ms, outside the step's calls "
                      f"{(seconds - inside) * 1e3:.2f} ms (the finiteness check "
                      f"{sum(checks) * 1e3:.2f}); {len(calls)} calls, "
                      f"{inside / steps * 1e6:,.1f} us a step inside them; epoch/step "
                      f"{step * steps / seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
