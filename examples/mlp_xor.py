"""Lesson 3: more perceptrons. An MLP with one hidden layer of 8 units bends the boundary
and solves XOR (the truth table, then noisy clusters around its corners); on two
interleaved half-moons it does the same where a line cannot.

The hidden layer h = tanh(x W1^T + b1) maps the points to a space where the output layer
z = h W2^T + b2 separates them with a line; training is full-batch Adam on cross-entropy.

    python examples/mlp_xor.py [--plots DIR]
"""
import argparse

import mlpfast as mf
from mlpfast.data.toy2d import moons, xor

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--plots", metavar="DIR", help="save decision regions as PNGs here")
args = parser.parse_args()


def train_mlp(x, y, hidden, epochs, seed=0):
    model = mf.MLP([2, hidden, 2], activation="tanh", seed=seed)
    optimizer = mf.optim.Adam(model.parameters(), lr=0.05)
    history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=epochs,
                     batch_size=len(x), seed=seed, progress=False)   # full batch
    return model, history


pictures = {}
for name, (x, y), hidden, epochs in (("xor", xor(), 8, 300),
                                     ("xor_clusters", xor(25, noise=0.15, seed=0), 8, 300),
                                     ("moons", moons(200, noise=0.1, seed=0), 16, 500)):
    perceptron = mf.Perceptron(max_epochs=100, seed=0).fit(x, y)
    mlp, history = train_mlp(x, y, hidden, epochs)
    accuracy = mf.evaluate(mlp, x, y)["accuracy"]
    print(f"{name}: perceptron {100 * perceptron.score(x, y):.1f}% "
          f"(converged: {perceptron.converged_}), "
          f"MLP 2-{hidden}-2 {100 * accuracy:.1f}% (loss {history['loss'][-1]:.4f} after "
          f"{epochs} epochs)")
    pictures[name] = ({"perceptron": perceptron, f"MLP 2-{hidden}-2": mlp}, x, y)

if args.plots:
    import os

    from mlpfast import plot
    os.makedirs(args.plots, exist_ok=True)
    for name, (models, x, y) in pictures.items():
        path = os.path.join(args.plots, f"decision_regions_{name}.png")
        plot.decision_regions(models, x, y, path)
        print(f"wrote {path}")
