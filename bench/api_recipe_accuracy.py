"""Test accuracy of the README's Python API recipe on real MNIST: MLP 784-512-256-10 (ReLU),
Adam lr 1e-3, batch 128, 10 epochs, for seeds 0, 1, 2, with a constant learning rate and
with ``lr_schedule="cosine"`` (what ``mlpfast train mnist`` uses); and PyTorch trained from
seed 0's initial weights on the same batches (fit's order: np.random.default_rng(seed)
.permutation per epoch), with the constant rate.

    python bench/api_recipe_accuracy.py [--seeds 0 1 2] [--no-torch]
"""
import argparse

import numpy as np

import mlpfast as mf


def train_mlpfast(data, seed, schedule):
    (x_train, y_train), (x_test, y_test) = data
    model = mf.MLP([784, 512, 256, 10], activation="relu", seed=seed)
    initial = {k: v.copy() for k, v in model.state_dict().items()}
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x_train, y_train, epochs=10, batch_size=128,
           val=(x_test, y_test), seed=seed, progress=False, lr_schedule=schedule)
    return mf.evaluate(model, x_test, y_test)["accuracy"], initial


def train_torch(data, seed, initial):
    import torch
    (x_train, y_train), (x_test, y_test) = data
    net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    rng = np.random.default_rng(seed)
    for _ in range(10):
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(x), 128):
            rows = order[start:start + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
    with torch.no_grad():
        predicted = net(torch.from_numpy(x_test)).argmax(1).numpy()
    return float((predicted == y_test).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch run")
    args = parser.parse_args(argv)
    data = mf.datasets.mnist()
    for schedule in (None, "cosine"):
        for seed in args.seeds:
            accuracy, initial = train_mlpfast(data, seed, schedule)
            print(f"mlpfast  lr_schedule={schedule or 'constant':8s} seed {seed}: "
                  f"{100 * accuracy:.2f}%", flush=True)
            if schedule is None and seed == args.seeds[0] and not args.no_torch:
                print(f"PyTorch  lr_schedule=constant seed {seed} (same weights and batches): "
                      f"{100 * train_torch(data, seed, initial):.2f}%", flush=True)


if __name__ == "__main__":
    main()
