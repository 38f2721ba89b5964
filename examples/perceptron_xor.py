"""Lesson 2: where one perceptron fails. No line puts (0,1), (1,0) on one side and
(0,0), (1,1) on the other, so the perceptron never finishes an epoch without a mistake.

    python examples/perceptron_xor.py
"""
from mlpfast import Perceptron
from mlpfast.data.toy2d import xor

x, y = xor()                                               # the truth table: 4 points
perceptron = Perceptron(max_epochs=100, seed=0).fit(x, y)

print("x1 x2 | XOR | perceptron   (z = w . x + b)")
for (x1, x2), target, z in zip(x, y, perceptron.decision_function(x)):
    print(f" {x1:.0f}  {x2:.0f} |  {target}  |     {int(z > 0)}        ({z:+.1f})")
print(f"converged: {perceptron.converged_} after {perceptron.n_epochs_} epochs "
      f"(max_epochs={perceptron.max_epochs})")
print(f"mistakes in the last 5 epochs: {perceptron.mistakes_[-5:].tolist()}")
print(f"training accuracy: {100 * perceptron.score(x, y):.1f}%  (at best 75%: one corner "
      f"is always on the wrong side of any line)")
