"""Lesson 4: handwritten digits with the Python API. 784 pixels in, 10 classes out: the
MLP is ten output perceptrons on top of a learned hidden layer.

A 10,000-image subset and 2 epochs keep this under a minute; the full set and more epochs
(``mlpfast train mnist``) reach about 98%.

    python examples/mnist_api.py [--plots DIR]
"""
import argparse

import mlpfast as mf

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--plots", metavar="DIR", help="save training curves, confusion matrix, "
                                                   "first-layer weights, misclassified digits")
args = parser.parse_args()

(x_train, y_train), (x_test, y_test) = mf.datasets.mnist()   # x (N, 784) in [0, 1], y (N,)
x_train, y_train = x_train[:10000], y_train[:10000]

model = mf.MLP([784, 128, 10], activation="relu", seed=0)
mf.summary(model, 784, batch_size=64)
optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x_train, y_train, epochs=2,
                 batch_size=64, val=(x_test, y_test), seed=0, progress=False, verbose=True)
result = mf.evaluate(model, x_test, y_test)
print(f"test accuracy: {100 * result['accuracy']:.2f}% on {result['n']:,} test digits")

if args.plots:
    from mlpfast import plot
    for path in plot.mnist_report(model, history, x_test, y_test, args.plots):
        print(f"wrote {path}")
