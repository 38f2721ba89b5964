"""Layers with explicit forward and backward (no autograd), in the layout of torch.nn.

A module computes ``y = forward(x)`` and, given dL/dy, ``backward(grad_y)`` returns
dL/dx and sets each parameter's ``.grad`` to dL/dparameter (it overwrites, it does not
accumulate). Shapes: x is (batch, in_features), y is (batch, out_features).

Buffers: a layer owns its output and input-gradient buffers and reuses them from step to
step, so ``forward`` and ``backward`` return arrays that the next call overwrites.
Calling a module (``module(x)``) checks ``x`` and returns a fresh copy of the output.
"""
import copy
import json
import math
import numbers
import os
import threading
import weakref

import numpy as np

from . import npz, tables
from .backend import ACTIVATIONS, FUSABLE, Plan, PlanLayer, check_precision, get_backend, \
    to_numpy
from .checkpoint import atomic_write
from .init import check_init, linear_parameters, make_rng

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MODEL_ENTRY = "__mlpfast__"     # the architecture (JSON bytes) in a saved model's .npz


def _resolve_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def check_samples(x, num_features, name="x", dtype=None):
    """x as a non-empty 2-D array of finite numbers with num_features columns (None: any),
    finite also once converted to ``dtype`` (float64 beyond float32's range becomes inf)."""
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
    if dtype is not None and x.dtype.kind == "f" and x.dtype.itemsize > np.dtype(dtype).itemsize:
        with np.errstate(over="ignore"):
            if not np.isfinite(np.array([x.min(), x.max()]).astype(dtype)).all():
                row = int(np.argwhere(~np.isfinite(x.astype(dtype)))[0][0])
                raise ValueError(f"{name} holds values beyond the range of the model's "
                                 f"{np.dtype(dtype)} (|x| <= {np.finfo(dtype).max:.4g}), "
                                 f"first at row {row}")
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


_IN_USE = weakref.WeakKeyDictionary()           # module -> its lock, made on first use
_IN_USE_GUARD = threading.Lock()


def in_use(module):
    """The re-entrant lock held by every call that runs ``module``'s forward pass: calling
    it, fit, evaluate, predict, predict_proba. They write the module's reused buffers and
    its ``training`` flag, so threads sharing one model take turns."""
    with _IN_USE_GUARD:
        lock = _IN_USE.get(module)
        if lock is None:
            lock = _IN_USE[module] = threading.RLock()
        return lock


class Module:
    """Base class: ``forward``, ``backward``, parameters, train/eval mode, buffers.

    Two kinds of buffers: the reused work arrays of ``_buffer`` (outputs, gradients), and
    the state a layer keeps besides its parameters, listed by ``named_buffers()`` and
    saved in its state_dict (BatchNorm1d's running statistics, as torch's buffers).
    """

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

    def named_buffers(self):
        """(name, array) of the state saved beside the parameters, as torch's buffers."""
        return iter(())

    # -- common --------------------------------------------------------------------
    def __call__(self, x):
        """model(x): the output for x (N, in_features) as a fresh NumPy array; x is checked
        (shape, finite values) and converted to the module's dtype. ``forward`` skips the
        checks and returns a buffer of the backend that the next call reuses."""
        x = self.check_input(x)
        with in_use(self):
            return self.backend.to_numpy(self.forward(self.backend.to_device(x))).copy()

    def check_input(self, x, name="x"):
        """x as a C-contiguous host array of this module's dtype, or a clear error."""
        return np.ascontiguousarray(check_samples(x, self.in_features, name, self.dtype),
                                    dtype=self.dtype)

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

    def _buffer(self, key, rows, cols, dtype=None):
        """A (rows, cols) view of a reused buffer that grows to the largest batch seen
        (of this module's dtype unless ``dtype`` is given)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != dtype:
            buf = self.backend.empty((rows, cols), dtype=dtype)
            self._buffers[key] = buf
        return buf[:rows]

    def _new_parameter(self, host_values):
        """A Parameter on this module's backend holding host_values, its grad zeroed."""
        data = self.backend.to_device(host_values.astype(self.dtype))
        return Parameter(data, self.backend.zeros(data.shape, dtype=self.dtype), self.backend)

    def config(self):
        """JSON-able description of this layer (type and constructor arguments)."""
        return {"type": type(self).__name__}


class Linear(Module):
    """y = x @ W.T + b, with W of shape (out_features, in_features) as in torch.nn.Linear.

    Initialized as PyTorch does (``init="kaiming_uniform"``): W and b uniform in
    [-1/sqrt(in), 1/sqrt(in)]. ``init`` may also be kaiming_normal, xavier_uniform or
    xavier_normal with the gain of ``nonlinearity``, the activation after the layer (None:
    torch.nn.init's default for that init); see ``mlpfast.init``.
    Backward: dW = dy.T @ x, db = sum over the batch of dy, dx = dy @ W.
    """

    def __init__(self, in_features, out_features, bias=True, *, init="kaiming_uniform",
                 nonlinearity=None, backend="auto", dtype=np.float32, seed=None):
        super().__init__(backend, dtype)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._in, self.out_features = int(in_features), int(out_features)
        rng = make_rng(seed)
        w, b = linear_parameters(init, self._in, self.out_features, bias, rng, nonlinearity)
        self.weight = self._new_parameter(w)
        self.bias = self._new_parameter(b) if bias else None
        self._x = None

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
    """y = x."""
    kind = "identity"


class Sigmoid(Activation):
    """y = 1 / (1 + exp(-x)) elementwise (torch.nn.Sigmoid)."""
    kind = "sigmoid"


class Tanh(Activation):
    """y = tanh(x) elementwise (torch.nn.Tanh)."""
    kind = "tanh"


class ReLU(Activation):
    """y = max(0, x) elementwise (torch.nn.ReLU)."""
    kind = "relu"


class LeakyReLU(Activation):
    """y = x where x > 0, else negative_slope * x (torch.nn.LeakyReLU)."""
    kind = "leaky_relu"

    def __init__(self, negative_slope=0.01, **kwargs):
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")
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


def _check_rate(p, name="p"):
    """p as a float in [0, 1], or a ValueError naming the argument ``name``."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) \
            or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class Dropout(Module):
    """Inverted dropout, as torch.nn.Dropout: in training y = keep * x / (1 - p), each
    element kept with probability 1 - p; the identity in eval().

    The mask is a pure function of (seed, step, layer_id, element index) (Philox,
    kernels/dropout.py), so a run replays bit for bit on any backend. ``step`` counts the
    training forward passes and advances after each; a training loop that resumes sets it
    to the global step. ``seed`` None draws one from the OS; ``layer_id`` tells apart the
    dropout layers that share a seed (MLP gives each its index in the model).
    """

    def __init__(self, p=0.5, *, seed=None, layer_id=0, backend="auto", dtype=np.float32):
        self.p = _check_rate(p)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        for name, value, bound in (("seed", seed, 1 << 64), ("layer_id", layer_id, 1 << 32)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or not 0 <= value < bound:
                raise ValueError(f"{name} must be an integer in [0, {bound}), got {value!r}")
        super().__init__(backend, dtype)
        self.seed, self.layer_id, self.step = int(seed), int(layer_id), 0
        self._keep = None

    def forward(self, x):
        self._keep = None
        if not self.training:
            return x
        step, self.step = self.step, self.step + 1
        if self.p == 0.0:
            return x
        rows, cols = x.shape
        out = self._buffer("y", rows, cols)
        self._keep = self._buffer("keep", rows, cols, np.uint8)
        return self.backend.dropout_forward(x, self.p, self.seed, step, self.layer_id, out=out,
                                            mask=self._keep)[0]

    def backward(self, grad_y, input_grad=True):
        """dL/dx = keep * dL/dy / (1 - p), with the mask of the last forward pass."""
        if not input_grad:                      # no parameters
            return None
        if self._keep is None:                  # the last forward was the identity
            return grad_y
        return self.backend.dropout_backward(grad_y, self._keep, self.p,
                                             out=self._buffer("dx", *grad_y.shape))

    def config(self):
        return {"type": "Dropout", "p": self.p, "seed": self.seed, "layer_id": self.layer_id}

    def __repr__(self):
        return f"Dropout(p={self.p})"


class BatchNorm1d(Module):
    """torch.nn.BatchNorm1d over the features of (batch, num_features) inputs.

    Training: normalize with the batch mean and biased variance, then y = xhat * weight +
    bias; running_mean and running_var (unbiased) move by ``momentum`` (None: the
    cumulative average, 1 / num_batches_tracked). Eval: the running statistics. weight
    starts at 1, bias at 0, running_mean at 0, running_var at 1 (as torch).
    state_dict keys: weight, bias (when affine), running_mean, running_var,
    num_batches_tracked (int64, shape ()). Formulas: kernels/batchnorm.py.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, backend="auto",
                 dtype=np.float32):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if momentum is not None:
            momentum = _check_rate(momentum, "momentum")
        super().__init__(backend, dtype)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine = bool(affine)
        self.weight = self._new_parameter(np.ones(self.num_features)) if self.affine else None
        self.bias = self._new_parameter(np.zeros(self.num_features)) if self.affine else None
        self.running_mean = self.backend.to_device(np.zeros(self.num_features, self.dtype))
        self.running_var = self.backend.to_device(np.ones(self.num_features, self.dtype))
        self.num_batches_tracked = np.zeros((), np.int64)
        self._x = None

    @property
    def in_features(self):
        return self.num_features

    def named_parameters(self):
        if self.affine:
            yield "weight", self.weight
            yield "bias", self.bias

    def named_buffers(self):
        yield "running_mean", self.running_mean
        yield "running_var", self.running_var
        yield "num_batches_tracked", self.num_batches_tracked

    def _affine_data(self):
        return (self.weight.data, self.bias.data) if self.affine else (None, None)

    def forward(self, x):
        rows, cols = x.shape
        out = self._buffer("y", rows, cols)
        if not self.training:
            self._x = None
            return self.backend.batchnorm_eval(x, *self._affine_data(), self.running_mean,
                                               self.running_var, eps=self.eps, out=out)
        if rows < 2:                  # before num_batches_tracked moves
            raise ValueError(f"BatchNorm1d in training needs more than 1 sample, got x of "
                             f"shape {tuple(x.shape)}")
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None \
            else 1.0 / int(self.num_batches_tracked)
        stats = self._buffer("stats", 2, cols)         # rows: batch mean, invstd
        self._x, self._mean, self._invstd = x, stats[0], stats[1]
        return self.backend.batchnorm_train(
            x, *self._affine_data(), self.running_mean, self.running_var, momentum=momentum,
            eps=self.eps, out=out, mean=self._mean, invstd=self._invstd)[0]

    def backward(self, grad_y, input_grad=True):
        """Sets weight.grad and bias.grad; returns dL/dx (None when not ``input_grad``)."""
        if self._x is None:
            raise RuntimeError("BatchNorm1d.backward needs a forward pass in training mode "
                               "first (call model.train())")
        weight = self.weight.data if self.affine else None
        grads = (self.weight.grad, self.bias.grad) if self.affine else (None, None)
        grad_x = self.backend.batchnorm_backward(
            grad_y, self._x, weight, self._mean, self._invstd,
            out=self._buffer("dx", *grad_y.shape), grad_weight=grads[0], grad_bias=grads[1])[0]
        return grad_x if input_grad else None

    def config(self):
        return {"type": "BatchNorm1d", "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine}

    def __repr__(self):
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine})")


ACTIVATION_LAYERS = {"identity": Identity, "sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU,
                     "leaky_relu": LeakyReLU, "gelu": GELU, "softmax": Softmax}
LAYER_TYPES = {cls.__name__: cls for cls in
               (Linear, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Softmax, Dropout,
                BatchNorm1d)}


class Sequential(Module):
    """Layers applied in order; parameters live in one flat buffer (see ``flat_parameters``).

    ``state_dict()`` keys are ``"<index>.weight"`` / ``"<index>.bias"``, as in
    ``torch.nn.Sequential``, so weights move between the two with ``torch.from_numpy``.

    ``precision`` is how ``fit`` trains it by default: "fp32", or "bf16" (the GEMMs of
    forward and backward take bf16 operands, rounded to nearest even from the float32
    weights, inputs and activations, and sum in float32; weights, state_dict, optimizer,
    loss and gradients stay float32; inference runs in float32). bf16 trains on the cpu
    backend, in its compiled step.
    """

    def __init__(self, *layers, precision="fp32"):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module) or isinstance(layer, Sequential):
                raise TypeError(f"layer {i} must be an mlpfast layer (not a Sequential: list "
                                f"its layers instead), got {type(layer).__name__}")
        _check_unshared(layers)
        backend, dtype = layers[0].backend, layers[0].dtype
        for i, layer in enumerate(layers):
            if layer.backend is not backend or layer.dtype != dtype:
                raise ValueError(f"layer {i} uses backend {layer.backend.name}/{layer.dtype}, "
                                 f"layer 0 uses {backend.name}/{dtype}: all must match")
        super().__init__(backend, dtype)
        self.precision = precision
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

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, precision):
        self._precision = check_precision(precision)

    def plan(self, precision=None):
        """The Plan a backend builds a training step from (mlpfast.backend.plan), in
        ``precision`` (None: the model's)."""
        chain = self._chain()
        precision = self.precision if precision is None else check_precision(precision)
        return Plan(model=self, stages=self._stages, chain=None if chain is None else chain[1],
                    dtype=self.dtype, flat_data=self.flat_data, flat_grad=self.flat_grad,
                    input_dropout=None if chain is None else chain[0], precision=precision)

    def _chain(self):
        """(leading Dropout or None, PlanLayer per Linear) when the layers are [Dropout]
        Linear [BatchNorm1d] [activation] [Dropout] Linear ... Linear (elementwise
        activations), else None."""
        layers, i = self.layers, 0
        leading = layers[0] if isinstance(layers[0], Dropout) else None
        i += leading is not None
        chain = []
        while i < len(layers):
            if not isinstance(layers[i], Linear):
                return None
            linear, i = layers[i], i + 1
            following = {}
            for kind in (BatchNorm1d, Activation, Dropout):
                if i < len(layers) and isinstance(layers[i], kind):
                    following[kind], i = layers[i], i + 1
            act = following.get(Activation)
            if act is not None and act.kind == "softmax":
                return None
            chain.append(PlanLayer(linear.weight, linear.bias, act.kind if act else "identity",
                                   dict(act.params) if act else {},
                                   following.get(BatchNorm1d), following.get(Dropout)))
        last = chain[-1] if chain else None
        if last is None or last.activation != "identity" or last.batchnorm or last.dropout:
            return None
        return leading, tuple(chain)

    def __deepcopy__(self, memo):
        """A copy with flat buffers of its own (copied field by field, its parameters would
        not be views of its copied buffers), on the same backend."""
        twin = copy.copy(self)
        memo[id(self)], memo[id(self.backend)] = twin, self.backend
        twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
        twin._flatten_parameters()
        return twin

    def _flatten_parameters(self):
        """Move every parameter (and its grad) into one flat buffer, in order, as views;
        the parameters then belong to this model (``_owner``).

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
            grad_view = self.flat_grad[offset:offset + size].reshape(p.shape)
            self.backend.assign(data_view, p.data)
            self.backend.assign(grad_view, p.grad)
            p.data, p.grad = data_view, grad_view
            p.flat_slice = (self.flat_data, self.flat_grad, offset, size)
            p.owner = weakref.ref(self)
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
                layer.backward(grad_y, input_grad=False)
                return None
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

    def set_training_step(self, step):
        """The global training step of the next forward pass, which dropout masks are a
        function of (a resumed run continues its masks)."""
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.step = int(step)

    # -- weights in and out ------------------------------------------------------------
    def named_buffers(self):
        for i, layer in enumerate(self.layers):
            for name, buffer in layer.named_buffers():
                yield f"{i}.{name}", buffer

    def _named_state(self):
        """(key, array) of every parameter and buffer, layer by layer as torch orders them."""
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p.data
            for name, buffer in layer.named_buffers():
                yield f"{i}.{name}", buffer

    def state_dict(self):
        """{"<index>.weight": (out, in) array, "<index>.bias": (out,) array, and each
        layer's buffers ("<index>.running_mean", ...)}, NumPy copies."""
        return {name: to_numpy(a).copy() for name, a in self._named_state()}

    def load_state_dict(self, state):
        """Copy arrays in PyTorch's layout into the parameters and buffers; checks
        everything first."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
        own = dict(self._named_state())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match the model: missing {missing}, "
                             f"unexpected {unexpected}")
        arrays = {name: _checked_state_array(name, state[name], target, self.dtype)
                  for name, target in own.items()}
        for name, target in own.items():
            if isinstance(target, np.ndarray):           # host arrays (num_batches_tracked)
                np.copyto(target, arrays[name])
            else:
                self.backend.assign(target, arrays[name])

    def architecture(self):
        return {"format": "mlpfast.Sequential", "version": 1, "dtype": self.dtype.name,
                "precision": self.precision,
                "layers": [layer.config() for layer in self.layers]}

    def save(self, path):
        """Write the weights and the architecture to an .npz file (no pickles).

        The file is replaced atomically (temporary file, fsync, rename): a crash while
        saving leaves the previous file intact.
        """
        arrays = self.state_dict()
        meta = json.dumps(self.architecture()).encode()
        arrays[MODEL_ENTRY] = np.frombuffer(meta, dtype=np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def __repr__(self):
        body = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"{type(self).__name__}(\n{body}\n)"

    def _repr_html_(self):
        """Jupyter's view: a table of the layers, their parameters and the total."""
        return tables.model_html(self)


def _checked_state_array(name, value, target, dtype):
    """value as a host array to copy into target: same shape; finite floats (cast to the
    model's dtype), or for an integer buffer (a counter) integers >= 0."""
    a = np.asarray(to_numpy(value))
    if a.shape != tuple(target.shape):
        raise ValueError(f"{name} must have shape {tuple(target.shape)}, got {a.shape}")
    if target.dtype.kind == "i":
        if a.dtype.kind not in "iu" or (a < 0).any():
            raise TypeError(f"{name} must hold integers >= 0, got {a.dtype} {a.tolist()}")
        return a.astype(target.dtype)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a.astype(dtype)


def _owner(p):
    """The live Sequential whose flat buffer holds parameter p, or None (a new layer, a
    deep copy, or a model that no longer exists)."""
    owner = getattr(p, "owner", lambda: None)()
    return owner if owner is not None and p.flat_slice[0] is owner.flat_data else None


def _check_unshared(layers):
    """Each layer once, none owned by another model: moving a model's parameters into a
    new flat buffer would leave that model training a stale copy of them."""
    seen = {}
    for i, layer in enumerate(layers):
        if id(layer) in seen:
            raise ValueError(f"layer {i} is layer {seen[id(layer)]} again: a layer may appear "
                             f"once in a Sequential; build another {type(layer).__name__}")
        seen[id(layer)] = i
        if any(_owner(p) is not None for p in layer.parameters()):
            raise ValueError(f"layer {i} ({layer!r}) belongs to another model, whose flat "
                             f"buffer holds its parameters; models cannot share layers: "
                             f"build new layers, or pass copy.deepcopy(layer)")


class MLP(Sequential):
    """Linear, act, Linear, act, ..., Linear: the layers of the same torch.nn.Sequential.

    ``sizes`` = [in, hidden..., out]; ``activation`` names the hidden activation
    (one of identity, sigmoid, tanh, relu, leaky_relu, gelu, gelu_tanh). Each hidden
    layer is Linear, then BatchNorm1d when ``batchnorm``, the activation, then
    Dropout(``dropout``) when it is > 0; ``input_dropout`` > 0 puts a Dropout before the
    first Linear. ``init`` chooses the Linear weights (``mlpfast.init``: kaiming_uniform,
    torch's default, or kaiming_normal, xavier_uniform, xavier_normal with the gain of the
    activation that follows). ``seed`` fixes the weights (drawn layer by layer, weight then
    bias, whatever batchnorm and dropout are) and then the dropout layers' seed.
    ``precision``: "fp32" or "bf16", how ``fit`` trains it (see Sequential).
    """

    def __init__(self, sizes, activation="relu", *, batchnorm=False, dropout=0.0,
                 input_dropout=0.0, init="kaiming_uniform", bias=True, backend="auto",
                 dtype=np.float32, seed=None, precision="fp32"):
        sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size, "
                             f"got {sizes!r}")
        if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
               for n in sizes):
            raise ValueError(f"sizes must be positive integers, got {sizes!r}")
        hidden_acts = [a for a in ACTIVATIONS if a != "softmax"]
        if activation not in hidden_acts:
            raise ValueError(f"activation must be one of {hidden_acts}, got {activation!r}")
        dropout = _check_rate(dropout, "dropout")
        input_dropout = _check_rate(input_dropout, "input_dropout")
        check_init(init)
        check_precision(precision)
        backend = get_backend(backend)
        rng = make_rng(seed)
        hidden = len(sizes) - 2
        linears = [Linear(n_in, n_out, bias, init=init, backend=backend, dtype=dtype, seed=rng,
                          nonlinearity=activation if i < hidden else "identity")
                   for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))]
        dropout_seed = int(rng.integers(0, 1 << 64, dtype=np.uint64))   # after every weight
        layers = []

        def add_dropout(p):
            if p > 0:
                layers.append(Dropout(p, seed=dropout_seed, layer_id=len(layers),
                                      backend=backend, dtype=dtype))

        add_dropout(input_dropout)
        for i, linear in enumerate(linears):
            layers.append(linear)
            if i < hidden:
                if batchnorm:
                    layers.append(BatchNorm1d(linear.out_features, backend=backend, dtype=dtype))
                layers.append(_activation_layer(activation, backend, dtype))
                add_dropout(dropout)
        self.sizes, self.activation = [int(s) for s in sizes], activation
        self.batchnorm, self.dropout, self.input_dropout = bool(batchnorm), dropout, input_dropout
        super().__init__(*layers, precision=precision)


def _activation_layer(name, backend, dtype):
    if name == "gelu_tanh":
        return GELU("tanh", backend=backend, dtype=dtype)
    return ACTIVATION_LAYERS[name](backend=backend, dtype=dtype)


def load(path, backend="auto"):
    """A model saved by ``save``: architecture and weights, read without unpickling.

    Untrusted files are safe to try: the architecture entry is read first, then the .npy
    header of every parameter and buffer is checked against it (names, shapes, dtypes)
    before any of their data is read (``mlpfast.npz``).
    """
    path, backend = os.fspath(path), get_backend(backend)
    with npz.NpzReader(path, "model") as reader:
        if MODEL_ENTRY not in reader.names:
            raise ValueError(f"{path} is not a saved mlpfast model (no {MODEL_ENTRY!r} "
                             f"entry)")
        arch = _read_architecture(path, reader)
        dtype = arch["dtype"]
        layout = npz.state_layout(arch, f"{path}: corrupt mlpfast model metadata")
        unexpected = sorted(set(reader.names) - set(layout) - {MODEL_ENTRY})
        missing = sorted(set(layout) - set(reader.names))
        if missing or unexpected:
            raise ValueError(f"{path}: entries do not match the architecture: missing "
                             f"{missing}, unexpected {unexpected}")
        arrays = reader.read_all(npz.expect_state(layout, dtype))
    try:
        precision = check_precision(arch.get("precision", "fp32"))
        layers = [_layer_from_config(cfg, backend, dtype) for cfg in arch["layers"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: corrupt mlpfast model metadata ({e})") from None
    model = Sequential(*layers, precision=precision)
    model.load_state_dict(arrays)
    return model


def _read_architecture(path, reader):
    """The architecture JSON of a model file, its format and dtype checked."""
    arch = reader.read_json(MODEL_ENTRY, "mlpfast model metadata")
    if not isinstance(arch, dict) or arch.get("format") != "mlpfast.Sequential":
        raise ValueError(f"{path}: corrupt mlpfast model metadata (format "
                         f"{arch.get('format') if isinstance(arch, dict) else None!r})")
    try:
        if not isinstance(arch.get("dtype"), str):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {arch.get('dtype')!r}")
        arch["dtype"] = _resolve_dtype(arch["dtype"])
    except TypeError as e:
        raise ValueError(f"{path}: corrupt mlpfast model metadata ({e})") from None
    return arch


def _layer_from_config(cfg, backend, dtype):
    kind = cfg["type"]
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    args = {k: v for k, v in cfg.items() if k != "type"}
    if kind == "Linear":
        return Linear(int(args["in_features"]), int(args["out_features"]), bool(args["bias"]),
                      backend=backend, dtype=dtype)
    return LAYER_TYPES[kind](backend=backend, dtype=dtype, **args)
