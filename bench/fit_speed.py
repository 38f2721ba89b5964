"""Samples/s of mf.fit on the reference configurations (real MNIST, ReLU, Adam lr 1e-3,
cross-entropy), as a user trains: for comparing two versions of mlpfast side by side.

    python bench/fit_speed.py [--epochs 3] [--threads 2] [--backend cpu] [--only b64]

prints one JSON line per configuration: samples/s of every epoch. It uses only the public
API (mf.MLP, mf.fit), so the same file runs against an older checkout: alternate the two
interpreters, e.g.

    for i in 1 2 3; do old/venv/bin/python bench/fit_speed.py; venv/bin/python bench/fit_speed.py; done
"""
import argparse
import json
import os

from _args import positive

CONFIGS = (((784, 256, 128, 10), 64), ((784, 256, 128, 10), 256), ((784, 1024, 1024, 10), 256))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=positive(int), default=3)
    parser.add_argument("--threads", type=positive(int), default=2)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--only", default=None, help="configurations whose name has this text")
    args = parser.parse_args()
    import mlpfast as mf
    mf.set_num_threads(args.threads)
    (x, y), _ = mf.datasets.mnist()
    for sizes, batch in CONFIGS:
        name = f"{'-'.join(map(str, sizes))} b{batch}"
        if args.only and args.only not in name:
            continue
        model = mf.MLP(list(sizes), "relu", backend=args.backend, seed=0)
        optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
        history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=args.epochs,
                         batch_size=batch, seed=0, progress=False)
        print(json.dumps({"config": name, "version": mf.__file__.split(os.sep)[-3],
                          "samples_per_s": [round(v) for v in history["samples_per_s"]],
                          "loss": history["loss"][-1]}), flush=True)


if __name__ == "__main__":
    main()
