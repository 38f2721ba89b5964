"""``summary(model, input_size)``: a table of layers, output shapes, parameters, FLOPs, memory.

Counts, per sample (one row of the batch), for the forward pass:

    Linear(in, out)      params = in*out (+ out with bias)
                         FLOPs  = 2*in*out (a multiply and an add per weight) (+ out for the bias)
    activation on n      params = 0, FLOPs = n (one operation per element, whatever it costs
                         in cycles: exp and erf are slower than ReLU's compare)
    BatchNorm1d(n)       params = 2n with affine (buffers not counted), FLOPs = 2n: y =
                         x * scale + shift per element in eval (training adds the statistics)
    Dropout on n         params = 0, FLOPs = n (a multiply by mask / (1 - p))
    activation memory    bytes of the layer's output: out * itemsize of the model's dtype

``N`` in an output shape stands for the batch size.
"""
import numbers
import sys

import numpy as np

from . import tables
from .nn import Activation, BatchNorm1d, Dropout, Linear, Module, Sequential


class Summary:
    """The rows of a model summary and their totals; ``str()`` is the printed table.

    ``rows``: one dict per layer with ``index``, ``layer`` (its repr's type name),
    ``output_shape`` (a tuple, None standing for the batch), ``params``, ``flops``
    (per sample) and ``activation_bytes`` (per sample).
    """

    def __init__(self, rows, input_size, dtype, batch_size):
        self.rows = rows
        self.input_size = input_size
        self.dtype = np.dtype(dtype)
        self.batch_size = batch_size
        self.total_params = sum(r["params"] for r in rows)
        self.total_flops = sum(r["flops"] for r in rows)
        self.activation_bytes = sum(r["activation_bytes"] for r in rows)
        self.param_bytes = self.total_params * self.dtype.itemsize
        self.input_bytes = input_size * self.dtype.itemsize

    def _table(self):
        """(header, body rows as strings, total lines) of the printed and the HTML table."""
        header = ("Layer (type)", "Output shape", "Params", "FLOPs/sample", "Activations")
        body = [(f"{r['index']}: {r['layer']}", _shape(r["output_shape"]), f"{r['params']:,}",
                 f"{r['flops']:,}", _bytes(r["activation_bytes"])) for r in self.rows]
        totals = [f"Input: (N, {self.input_size}) {self.dtype.name}",
                  f"Total params: {self.total_params:,}",
                  f"Parameter memory: {_bytes(self.param_bytes)}",
                  f"FLOPs per sample (forward): {self.total_flops:,}",
                  f"Activation memory per sample (forward): {_bytes(self.activation_bytes)}"]
        if self.batch_size is not None:
            totals += [f"For a batch of {self.batch_size}: "
                       f"{self.total_flops * self.batch_size:,} FLOPs, activations "
                       f"{_bytes(self.activation_bytes * self.batch_size)}, input "
                       f"{_bytes(self.input_bytes * self.batch_size)}"]
        return header, body, totals

    def __str__(self):
        header, body, totals = self._table()
        widths = [max(len(line[c]) for line in [header] + body) for c in range(len(header))]

        def line(cells):
            first = cells[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

        rule = "-" * len(line(header))
        out = [rule, line(header), "=" * len(rule)] + [line(b) for b in body] + ["=" * len(rule)]
        return "\n".join(out + totals + [rule])

    def _repr_html_(self):
        """Jupyter's view: the same table and totals in HTML."""
        header, body, totals = self._table()
        return tables.table(header, body, caption="summary", notes=totals)

    def __repr__(self):
        return (f"Summary(layers={len(self.rows)}, total_params={self.total_params}, "
                f"flops_per_sample={self.total_flops})")


def summary(model, input_size, *, batch_size=None, show=True, file=None):
    """The ``Summary`` of ``model`` fed samples of ``input_size`` features; printed when ``show``.

    ``input_size``: the number of input features (an int, or a 1-tuple like (784,)).
    ``batch_size``: when given, the totals for a batch of that many samples are added.
    ``file``: where to print (default sys.stdout).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an mlpfast Module (Sequential, MLP, Linear, ...), "
                        f"got {type(model).__name__}")
    if isinstance(input_size, tuple) and len(input_size) == 1:
        input_size = input_size[0]
    if isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral) \
            or input_size < 1:
        raise ValueError(f"input_size must be a positive integer (features per sample) or a "
                         f"1-tuple of one, got {input_size!r}")
    if model.in_features is not None and input_size != model.in_features:
        raise ValueError(f"input_size is {input_size} but the model expects "
                         f"{model.in_features} input features")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")

    layers = model.layers if isinstance(model, Sequential) else [model]
    itemsize = model.dtype.itemsize
    rows = []
    features = int(input_size)                       # width of the current activation
    for index, layer in enumerate(layers):
        if isinstance(layer, Linear):
            params = sum(int(np.prod(p.shape)) for p in layer.parameters())
            flops = 2 * layer.in_features * layer.out_features           # y = x W^T
            flops += layer.out_features if layer.bias is not None else 0  # + b
            features = layer.out_features
        elif isinstance(layer, (Activation, Dropout)):
            params, flops = 0, features                                   # f(x) elementwise
        elif isinstance(layer, BatchNorm1d):
            params = sum(int(np.prod(p.shape)) for p in layer.parameters())
            flops = 2 * features                                          # x * scale + shift
        else:
            raise TypeError(f"summary does not know how to count layer {index} "
                            f"({type(layer).__name__})")
        rows.append({"index": index, "layer": type(layer).__name__,
                     "output_shape": (None, features), "params": params, "flops": flops,
                     "activation_bytes": features * itemsize})
    result = Summary(rows, int(input_size), model.dtype, batch_size)
    if show:
        print(result, file=sys.stdout if file is None else file, flush=True)
    return result


def _shape(shape):
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


def _bytes(count):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"
