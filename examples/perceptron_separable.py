"""Lesson 1: a perceptron draws a line, and on data a line can separate it learns one.

Rosenblatt's rule changes the weights only on mistakes (w <- w + eta t x, b <- b + eta t);
on linearly separable data it stops making them after a few epochs.

    python examples/perceptron_separable.py [--plots DIR]
"""
import argparse

from mlpfast import Perceptron
from mlpfast.data.toy2d import linearly_separable

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--plots", metavar="DIR", help="save the decision regions as a PNG here")
args = parser.parse_args()

x, y = linearly_separable(200, margin=0.1, seed=1)         # x (200, 2), y (200,) in {0, 1}
perceptron = Perceptron(max_epochs=100, seed=0).fit(x, y)

print(f"converged: {perceptron.converged_} after {perceptron.n_epochs_} epochs")
print(f"mistakes per epoch: {perceptron.mistakes_.tolist()}")
w, b = perceptron.weights_[0], perceptron.bias_[0]
print(f"learned boundary: {w[0]:.3f} * x1 + {w[1]:.3f} * x2 + {b:.3f} = 0")
print(f"training accuracy: {100 * perceptron.score(x, y):.1f}%")

if args.plots:
    import os

    from mlpfast import plot
    os.makedirs(args.plots, exist_ok=True)
    path = os.path.join(args.plots, "perceptron_separable.png")
    plot.decision_regions({"perceptron": perceptron}, x, y, path)
    print(f"wrote {path}")
