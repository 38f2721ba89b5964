"""Layers with explicit forward and backward (no autograd), in the layout of torch.nn.

A module computes ``y = forward(x)`` and, given dL/dy, ``backward(grad_y)`` returns
dL/dx and sets each parameter's ``.grad`` to dL/dparameter (it overwrites, it does not
accumulate). Shapes: x is (batch, in_features), y is (batch, out_features).

Buffers: a layer owns its output and input-gradient buffers and reuses them from step to
step, so ``forward`` and ``backward`` return arrays that the next call overwrites.
Calling a module (``module(x)``) checks ``x`` and returns a fresh copy of the output.
"""
import json

import numpy as np

from .backend import ACTIVATIONS, FUSABLE, Plan, PlanLayer, get_backend, to_numpy
from .checkpoint import atomic_write

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _resolve_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def check_samples(x, num_features, name="x"):
    """x as a non-empty 2-D array of finite numbers with num_features columns (None: any)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); need at least one sample")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(f"{name} has {x.shape[1]} columns but the model expects "
                         f"{num_features} input features")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{name} contains NaN or inf (first at row {row})")
    return x


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape, same backend)."""

    def __init__(self, data, grad, backend):
        self.data = data
        self.grad = grad
        self.backend = backend

    @property
    def shape(self):
        return self.data.shape

    def numpy(self):
        return to_numpy(self.data)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: ``forward``, ``backward``, parameters, train/eval mode, buffers."""

    def __init__(self, backend="auto", dtype=np.float32):
        self.backend = get_backend(backend)
        self.dtype = _resolve_dtype(dtype)
        self.training = True
        self._buffers = {}

    # -- to override -------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_y, input_grad=True):
        """Sets the parameters' grads; returns dL/dx (None when not ``input_grad``)."""
        raise NotImplementedError

    def named_parameters(self):
        return iter(())

    # -- common --------------------------------------------------------------------
    def __call__(self, x):
        x = self.check_input(x)
        return self.backend.to_numpy(self.forward(self.backend.to_device(x))).copy()

    def check_input(self, x, name="x"):
        """x as a C-contiguous host array of this module's dtype, or a clear error."""
        return np.ascontiguousarray(check_samples(x, self.in_features, name), dtype=self.dtype)

    @property
    def in_features(self):
        return None

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            self.backend.zero(p.grad)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _buffer(self, key, rows, cols):
        """A (rows, cols) view of a reused buffer that grows to the largest batch seen."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self.backend.empty((rows, cols), dtype=self.dtype)
            self._buffers[key] = buf
        return buf[:rows]

    def config(self):
        """JSON-able description of this layer (type and constructor arguments)."""
        return {"type": type(self).__name__}


class Linear(Module):
    """y = x @ W.T + b, with W of shape (out_features, in_features) as in torch.nn.Linear.

    Initialized as PyTorch does: W and b uniform in [-1/sqrt(in), 1/sqrt(in)].
    Backward: dW = dy.T @ x, db = sum over the batch of dy, dx = dy @ W.
    """

    def __init__(self, in_features, out_features, bias=True, *, backend="auto",
                 dtype=np.float32, seed=None):
        super().__init__(backend, dtype)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._in, self.out_features = int(in_features), int(out_features)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        w = rng.uniform(-bound, bound, size=(out_features, in_features))
        self.weight = self._new_parameter(w)
        self.bias = self._new_parameter(rng.uniform(-bound, bound, size=out_features)) \
            if bias else None
        self._x = None

    def _new_parameter(self, host_values):
        data = self.backend.to_device(host_values.astype(self.dtype))
        return Parameter(data, self.backend.zeros(data.shape, dtype=self.dtype), self.backend)

    @property
    def in_features(self):
        return self._in

    def named_parameters(self):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def forward(self, x, activation="identity"):
        """y = x @ W.T + b, or act(x @ W.T + b) in the same kernel (see Sequential)."""
        self._x = x
        out = self._buffer("y", x.shape[0], self.out_features)
        b = self.bias.data if self.bias is not None else None
        return self.backend.linear_forward(x, self.weight.data, b, activation, out)

    def backward(self, grad_y, input_grad=True, input_activation=None):
        """Sets dW and db; returns dx = dy @ W, or None when not ``input_grad``.

        ``input_activation``: the activation layer whose output f(z) fed this layer (as a
        fused epilogue, see Sequential); dz = (dy @ W) * f'(z) is then computed in the
        same kernel, written to that layer's gradient buffer and returned.
        """
        be = self.backend
        be.gemm(grad_y, self._x, self.weight.grad, trans_a=True)            # dW = dy.T @ x
        if self.bias is not None:
            be.bias_grad(grad_y, self.bias.grad)                              # db = sum_i dy_i
        if not input_grad:
            return None
        if input_activation is None:
            grad_x = self._buffer("dx", grad_y.shape[0], self._in)
            return be.gemm(grad_y, self.weight.data, grad_x)                  # dx = dy @ W
        grad_z = input_activation._buffer("dx", grad_y.shape[0], self._in)   # dz = dx * f'(z)
        return be.linear_grad_input(grad_y, self.weight.data, input_activation.kind, self._x,
                                    grad_z)

    def config(self):
        return {"type": "Linear", "in_features": self._in, "out_features": self.out_features,
                "bias": self.bias is not None}

    def __repr__(self):
        return (f"Linear(in_features={self._in}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class Activation(Module):
    """y = f(x) elementwise (softmax: per row); backward multiplies by f'(x)."""

    kind = "identity"

    def __init__(self, *, backend="auto", dtype=np.float32, **params):
        super().__init__(backend, dtype)
        self.params = params
        self._kernels = self.backend.activations[self.kind]
        self._x = self._y = None

    def forward(self, x):
        self._x = x
        self._y = self._kernels.forward(x, self._buffer("y", *x.shape), **self.params)
        return self._y

    def backward(self, grad_y, input_grad=True):
        if not input_grad:                      # no parameters: nothing else to compute
            return None
        grad_x = self._buffer("dx", *grad_y.shape)
        return self._kernels.backward(grad_y, self._x, self._y, grad_x, **self.params)

    def fused_output(self, y):
        """Record y = f(z), computed by the preceding Linear, as this layer's output.

        Only for kinds in FUSABLE (f' is a function of y), so backward can use y in place
        of the z that was never stored: relu'(z) = [z > 0] = [y > 0].
        """
        self._x = self._y = y

    def config(self):
        return {"type": type(self).__name__, **self.params}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Identity(Activation):
    kind = "identity"


class Sigmoid(Activation):
    kind = "sigmoid"


class Tanh(Activation):
    kind = "tanh"


class ReLU(Activation):
    kind = "relu"


class LeakyReLU(Activation):
    kind = "leaky_relu"

    def __init__(self, negative_slope=0.01, **kwargs):
        super().__init__(negative_slope=float(negative_slope), **kwargs)


class GELU(Activation):
    """GELU, exact (approximate="none", erf) or with PyTorch's tanh approximation."""

    def __init__(self, approximate="none", **kwargs):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.kind = "gelu" if approximate == "none" else "gelu_tanh"
        self.approximate = approximate
        super().__init__(**kwargs)

    def config(self):
        return {"type": "GELU", "approximate": self.approximate}

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class Softmax(Activation):
    """Softmax over each row (dim=1)."""
    kind = "softmax"


ACTIVATION_LAYERS = {"identity": Identity, "sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU,
                     "leaky_relu": LeakyReLU, "gelu": GELU, "softmax": Softmax}
LAYER_TYPES = {cls.__name__: cls for cls in
               (Linear, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Softmax)}


class Sequential(Module):
    """Layers applied in order; parameters live in one flat buffer (see ``flat_parameters``).

    ``state_dict()`` keys are ``"<index>.weight"`` / ``"<index>.bias"``, as in
    ``torch.nn.Sequential``, so weights move between the two with ``torch.from_numpy``.
    """

    def __init__(self, *layers):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module) or isinstance(layer, Sequential):
                raise TypeError(f"layer {i} must be an mlpfast layer (not a Sequential: list "
                                f"its layers instead), got {type(layer).__name__}")
        backend, dtype = layers[0].backend, layers[0].dtype
        for i, layer in enumerate(layers):
            if layer.backend is not backend or layer.dtype != dtype:
                raise ValueError(f"layer {i} uses backend {layer.backend.name}/{layer.dtype}, "
                                 f"layer 0 uses {backend.name}/{dtype}: all must match")
        super().__init__(backend, dtype)
        self.layers = list(layers)
        self._flatten_parameters()
        self._stages = self._fuse()

    def _fuse(self):
        """((layer, activation or None), ...): a Linear followed by an activation whose
        derivative needs only its output (FUSABLE) becomes one stage, one kernel call
        forward (linear_forward applies it in its epilogue) instead of two passes."""
        stages, i = [], 0
        while i < len(self.layers):
            layer = self.layers[i]
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Linear) and isinstance(nxt, Activation) \
                    and nxt.kind in FUSABLE:
                stages.append((layer, nxt))
                i += 2
            else:
                stages.append((layer, None))
                i += 1
        return tuple(stages)

    def plan(self):
        """The Plan a backend builds a training step from (mlpfast.backend.plan)."""
        return Plan(model=self, stages=self._stages, chain=self._chain(), dtype=self.dtype,
                    flat_data=self.flat_data, flat_grad=self.flat_grad)

    def _chain(self):
        """PlanLayer per Linear when the layers are Linear (elementwise activation) ...
        Linear, else None."""
        chain, layers = [], self.layers
        for i, layer in enumerate(layers):
            if isinstance(layer, Linear):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                act = nxt if isinstance(nxt, Activation) and nxt.kind != "softmax" else None
                chain.append(PlanLayer(layer.weight, layer.bias,
                                       act.kind if act else "identity",
                                       dict(act.params) if act else {}))
            elif not (isinstance(layer, Activation) and i > 0
                      and isinstance(layers[i - 1], Linear) and layer.kind != "softmax"):
                return None
        if not chain or not isinstance(layers[-1], Linear):
            return None
        return tuple(chain)

    def _flatten_parameters(self):
        """Move every parameter (and its grad) into one flat buffer, in order, as views.

        The optimizer then updates the whole model in one pass over the buffer.
        """
        params = self.parameters()
        total = sum(int(np.prod(p.shape)) for p in params)
        self.flat_data = self.backend.zeros((total,), dtype=self.dtype)
        self.flat_grad = self.backend.zeros((total,), dtype=self.dtype)
        offset = 0
        for p in params:
            size = int(np.prod(p.shape))
            data_view = self.flat_data[offset:offset + size].reshape(p.shape)
            self.backend.assign(data_view, p.data)
            p.data = data_view
            p.grad = self.flat_grad[offset:offset + size].reshape(p.shape)
            p.flat_slice = (self.flat_data, self.flat_grad, offset, size)
            offset += size

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def in_features(self):
        for layer in self.layers:
            if layer.in_features is not None:
                return layer.in_features
        return None

    @property
    def out_features(self):
        for layer in reversed(self.layers):
            if isinstance(layer, Linear):
                return layer.out_features
        return None

    def named_parameters(self):
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p

    def forward(self, x):
        for layer, activation in self._stages:
            if activation is None:
                x = layer.forward(x)
            else:                                   # Linear + activation in one kernel
                x = layer.forward(x, activation.kind)
                activation.fused_output(x)
        return x

    def backward(self, grad_y, input_grad=True):
        """dL/dx from dL/dy, setting every parameter's grad. ``input_grad=False`` skips
        dL/dx of the first layer (training needs only the parameters' gradients) and
        returns None.

        A Linear step whose input is a fused activation's output multiplies by that
        activation's derivative inside its input-gradient GEMM (linear_grad_input), so
        the activation's own backward pass is skipped.
        """
        folded = False                          # grad_y already includes f'(z) of this step
        for i in range(len(self._stages) - 1, -1, -1):
            layer, activation = self._stages[i]
            if activation is not None and not folded:
                grad_y = activation.backward(grad_y)      # grad_z = grad_y * f'(z)
            previous = self._stages[i - 1][1] if i > 0 else None
            if i == 0 and not input_grad:
                if isinstance(layer, Linear):
                    layer.backward(grad_y, input_grad=False)
                return None                     # (an activation has no parameters)
            folded = isinstance(layer, Linear) and previous is not None
            if folded:
                grad_y = layer.backward(grad_y, input_activation=previous)
            else:
                grad_y = layer.backward(grad_y)
        return grad_y

    def zero_grad(self):
        self.backend.zero(self.flat_grad)

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return super().train(mode)

    # -- weights in and out ------------------------------------------------------------
    def state_dict(self):
        """{"<index>.weight": (out, in) array, "<index>.bias": (out,) array}, NumPy copies."""
        return {name: to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays in PyTorch's layout into the parameters; checks everything first."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match the model: missing {missing}, "
                             f"unexpected {unexpected}")
        arrays = {}
        for name, p in own.items():
            a = np.asarray(to_numpy(state[name]))
            if a.shape != p.shape:
                raise ValueError(f"{name} must have shape {p.shape}, got {a.shape}")
            if a.dtype.kind != "f":
                raise TypeError(f"{name} must be a float array, got {a.dtype}")
            if not np.isfinite(a).all():
                raise ValueError(f"{name} contains NaN or inf")
            arrays[name] = a.astype(self.dtype)
        for name, p in own.items():
            self.backend.assign(p.data, arrays[name])

    def architecture(self):
        return {"format": "mlpfast.Sequential", "version": 1, "dtype": self.dtype.name,
                "layers": [layer.config() for layer in self.layers]}

    def save(self, path):
        """Write the weights and the architecture to an .npz file (no pickles).

        The file is replaced atomically (temporary file, fsync, rename): a crash while
        saving leaves the previous file intact.
        """
        arrays = self.state_dict()
        meta = json.dumps(self.architecture()).encode()
        arrays["__mlpfast__"] = np.frombuffer(meta, dtype=np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def __repr__(self):
        body = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}(\n{body}\n)"


class MLP(Sequential):
    """Linear, act, Linear, act, ..., Linear: the layers of the same torch.nn.Sequential.

    ``sizes`` = [in, hidden..., out]; ``activation`` names the hidden activation
    (one of identity, sigmoid, tanh, relu, leaky_relu, gelu, gelu_tanh).
    """

    def __init__(self, sizes, activation="relu", *, bias=True, backend="auto",
                 dtype=np.float32, seed=None):
        sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size, "
                             f"got {sizes!r}")
        hidden_acts = [a for a in ACTIVATIONS if a != "softmax"]
        if activation not in hidden_acts:
            raise ValueError(f"activation must be one of {hidden_acts}, got {activation!r}")
        backend = get_backend(backend)
        rng = np.random.default_rng(seed)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, bias, backend=backend, dtype=dtype, seed=rng))
            if i < len(sizes) - 2:
                layers.append(_activation_layer(activation, backend, dtype))
        self.sizes, self.activation = [int(s) for s in sizes], activation
        super().__init__(*layers)


def _activation_layer(name, backend, dtype):
    if name == "gelu_tanh":
        return GELU("tanh", backend=backend, dtype=dtype)
    return ACTIVATION_LAYERS[name](backend=backend, dtype=dtype)


def load(path, backend="auto"):
    """A model saved by ``save``: architecture and weights, read without unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from None
    except Exception as e:                       # zipfile.BadZipFile and friends
        raise ValueError(f"{path} is not a readable .npz file: {e}") from None
    meta = arrays.pop("__mlpfast__", None)
    if meta is None:
        raise ValueError(f"{path} is not a saved mlpfast model (no '__mlpfast__' entry)")
    try:
        arch = json.loads(bytes(meta.astype(np.uint8)).decode())
        if arch.get("format") != "mlpfast.Sequential":
            raise ValueError("unknown format")
        dtype = _resolve_dtype(arch["dtype"])
        for i, cfg in enumerate(arch["layers"]):     # sizes vs stored arrays, before allocating
            _check_linear_sizes(i, cfg, arrays)
        layers = [_layer_from_config(cfg, backend, dtype) for cfg in arch["layers"]]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
            RecursionError) as e:
        raise ValueError(f"{path}: corrupt mlpfast model metadata ({e})") from None
    model = Sequential(*layers)
    try:
        model.load_state_dict(arrays)
    except TypeError as e:                           # e.g. integer weights in the file
        raise ValueError(f"{path}: {e}") from None
    return model


def _check_linear_sizes(i, cfg, arrays):
    """A Linear layer's declared (out, in) must be the shape of the weight stored for it."""
    if not isinstance(cfg, dict) or cfg.get("type") != "Linear":
        return
    weight = arrays.get(f"{i}.weight")
    declared = (cfg.get("out_features"), cfg.get("in_features"))
    if weight is None or weight.shape != declared:
        raise ValueError(f"layer {i} is declared Linear(in_features={declared[1]!r}, "
                         f"out_features={declared[0]!r}) but the file holds {i}.weight of "
                         f"shape {None if weight is None else weight.shape}")


def _layer_from_config(cfg, backend, dtype):
    kind = cfg["type"]
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    args = {k: v for k, v in cfg.items() if k != "type"}
    if kind == "Linear":
        return Linear(int(args["in_features"]), int(args["out_features"]), bool(args["bias"]),
                      backend=backend, dtype=dtype)
    return LAYER_TYPES[kind](backend=backend, dtype=dtype, **args)
