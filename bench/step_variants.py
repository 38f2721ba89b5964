"""Samples/s of the cpu backend's compiled step for one MLP with and without dropout,
batchnorm, both, and in bf16, side by side in one process: the ratio of each to the plain
model (the toolkit's bar: batchnorm and dropout within 25% of plain).

    python bench/step_variants.py [--config wide|b64|b256|"SIZES bBATCH"] [--rounds 7]
                                  [--threads 2] [--variants plain dropout ...]

Real MNIST (the first 8,192 training images), Adam, cross-entropy, ReLU; --config names a
reference configuration or any MNIST network, as `mlpfast bench --config` takes it
("784-300-100-10 b32"). Each round runs
every variant for 8,192 samples in turn, so load from other processes falls on all of
them; the first round is a warm-up. Prints the median samples/s of each and its ratio to
plain, then the load average. ``--variants plain`` alone times the plain step: the figure
to compare between two builds of the library, run alternately.
"""
import argparse
import time

import numpy as np
from _args import positive

CONFIGS = {"b64": ([784, 256, 128, 10], 64), "b256": ([784, 256, 128, 10], 256),
           "wide": ([784, 1024, 1024, 10], 256)}
VARIANTS = {"plain": {}, "dropout": {"dropout": 0.2},
            "batchnorm": {"batchnorm": True},
            "bn+dropout": {"batchnorm": True, "dropout": 0.2, "input_dropout": 0.1},
            "bf16": {"precision": "bf16"}}
SAMPLES = 8192


def config_arg(text):
    """--config: a name of CONFIGS or "SIZES bBATCH" -> (sizes list, batch)."""
    if text in CONFIGS:
        return CONFIGS[text]
    from mlpfast.benchmarks.harness import parse_config
    try:
        sizes, batch = parse_config(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"not one of {', '.join(CONFIGS)}, and {e}") from None
    return list(sizes), batch


def compiled_steps(mf, sizes, batch, x, y, names):
    """{variant: the cpu backend's compiled step over (x, y)} for the variants ``names``."""
    from mlpfast.datasets import as_dataset
    steps = {}
    for name in names:
        options = VARIANTS[name]
        model = mf.MLP(sizes, backend="cpu", seed=0, **options)
        optimizer = mf.optim.Adam(model.parameters(), lr=1e-4)
        step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), optimizer,
                                       as_dataset(model, x, y), batch)
        if type(step).__name__ != "CompiledStep":
            raise RuntimeError(f"{name} does not train in the compiled step")
        model.train()
        steps[name] = step
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=config_arg, default="wide",
                        help=f"{', '.join(CONFIGS)} or an MNIST network and batch such as "
                             f"'784-300-100-10 b32' (default wide)")
    parser.add_argument("--rounds", type=positive(int), default=7)
    parser.add_argument("--threads", type=positive(int), default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    names = ["plain"] + [name for name in args.variants if name != "plain"]
    import mlpfast as mf
    mf.set_num_threads(args.threads)
    sizes, batch = args.config
    if batch > SAMPLES:
        parser.error(f"--config: the batch must be at most {SAMPLES:,} here, got {batch}")
    (x, y), _ = mf.datasets.mnist()
    x, y = x[:SAMPLES], y[:SAMPLES]
    steps = compiled_steps(mf, sizes, batch, x, y, names)
    order = np.random.default_rng(0).permutation(SAMPLES).astype(np.int64)
    batches = SAMPLES // batch
    rates = {name: [] for name in steps}
    for _ in range(args.rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step.run(order, 0, batches, np.full(batches, 1e-4), np.zeros(2))
            rates[name].append(batches * batch / (time.perf_counter() - start))
    plain = np.median(rates["plain"][1:])
    print(f"{'-'.join(map(str, sizes))} b{batch}, {args.threads} threads, median of "
          f"{args.rounds} rounds")
    for name, values in rates.items():
        median = np.median(values[1:])
        print(f"  {name:<11} {median:>9,.0f} samples/s  {median / plain:.2f}x plain")
    with open("/proc/loadavg") as f:
        print("  load average", " ".join(f.read().split()[:3]))


if __name__ == "__main__":
    main()
