"""Optimizers with PyTorch's update rules: SGD (momentum, Nesterov, weight decay), Adam, AdamW.

``max_norm=c`` (any optimizer) adds the max-norm constraint of the dropout paper
(Srivastava et al. 2014): after each step, every row of every 2-D parameter (a Linear
weight (out, in): one neuron's incoming weights) is rescaled to L2 norm <= c; biases and
1-D parameters are left alone. It is then part of ``hyper`` and of the state_dict.

Each keeps its state (momentum buffer, Adam moments) in one flat buffer. When the
parameters are the flat buffer of one ``Sequential`` (``model.parameters()``), ``step()``
is a single kernel call over every parameter at once; otherwise one call per parameter.
The update formulas are written out in ``mlpfast/kernels/optim.py``.
"""
import numpy as np

from .backend import to_numpy


def _check_hyper(name, value, low=0.0, high=None, low_inclusive=True):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = (value >= low if low_inclusive else value > low) and (high is None or value < high)
    if not np.isfinite(value) or not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high else "")
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class Optimizer:
    state_names = ()

    def __init__(self, params, max_norm=None, **hyper):
        params = list(params)
        if not params:
            raise ValueError("params is empty: pass model.parameters()")
        for i, p in enumerate(params):
            if not all(hasattr(p, a) for a in ("data", "grad", "backend")):
                raise TypeError(f"params[{i}] must be a Parameter, got {type(p).__name__}")
            if p.backend is not params[0].backend or p.data.dtype != params[0].data.dtype:
                raise ValueError(f"params[{i}] lives on {p.backend.name}/{p.data.dtype}, "
                                 f"params[0] on {params[0].backend.name}/{params[0].data.dtype}")
        if max_norm is not None:
            hyper["max_norm"] = _check_hyper("max_norm", max_norm, low_inclusive=False)
        self.params = params
        self.hyper = hyper
        self._weights = [p for p in params if len(p.shape) == 2]    # max_norm applies to these
        self.step_count = 0
        self._flat = self._common_flat_buffers(params)
        self.backend = params[0].backend
        self._sizes = [int(np.prod(p.shape)) for p in params]
        self._state = {name: self.backend.zeros((sum(self._sizes),), dtype=params[0].data.dtype)
                       for name in self.state_names}

    @staticmethod
    def _common_flat_buffers(params):
        """(flat_data, flat_grad) of the Sequential whose flat buffers these params cover
        exactly, in order, or None."""
        slots = [getattr(p, "flat_slice", None) for p in params]
        if any(s is None for s in slots):
            return None
        flat_data, flat_grad = slots[0][:2]
        offset = 0
        for s_data, _, s_offset, s_size in slots:
            if s_data is not flat_data or s_offset != offset:
                return None
            offset += s_size
        return (flat_data, flat_grad) if offset == flat_data.shape[0] else None

    def _groups(self):
        """(param data, grad, state views) for one flat call, or one tuple per parameter."""
        if self._flat is not None:
            yield (*self._flat, [self._state[n] for n in self.state_names])
            return
        offset = 0
        for p, size in zip(self.params, self._sizes):
            views = [self._state[n][offset:offset + size].reshape(p.shape)
                     for n in self.state_names]
            yield p.data, p.grad, views
            offset += size

    def zero_grad(self):
        if self._flat is not None:
            self.backend.zero(self._flat[1])
        else:
            for p in self.params:
                self.backend.zero(p.grad)

    def _apply_max_norm(self):
        """Each row of each 2-D parameter onto the L2 ball of radius max_norm (if set)."""
        max_norm = self.hyper.get("max_norm")
        if max_norm is not None:
            for p in self._weights:
                self.backend.max_norm(p.data, max_norm)

    @property
    def lr(self):
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value):
        self.hyper["lr"] = _check_hyper("lr", value)

    def state_arrays(self):
        """{name: flat state array}: the optimizer's own buffers on its backend, not copies
        (for reading in place; ``state_dict`` for a copy to keep)."""
        return dict(self._state)

    def state_dict(self):
        """{"step": int, "hyper": {...}, "state": {name: flat NumPy array}}; copies."""
        return {"type": type(self).__name__, "step": self.step_count, "hyper": dict(self.hyper),
                "state": {n: to_numpy(a).copy() for n, a in self._state.items()}}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            raise ValueError(f"state must come from {type(self).__name__}.state_dict(), got "
                             f"{state.get('type') if isinstance(state, dict) else type(state)}")
        arrays = {}
        for n, own in self._state.items():
            a = np.asarray(state["state"].get(n))
            if a.shape != own.shape:
                raise ValueError(f"optimizer state {n!r} must have shape {own.shape}, "
                                 f"got {a.shape}")
            arrays[n] = a.astype(own.dtype)
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for n, a in arrays.items():
            self.backend.assign(self._state[n], a)
        self.hyper.update(state["hyper"])
        self.step_count = step


class SGD(Optimizer):
    """p -= lr * d, with d from momentum/Nesterov/weight decay as torch.optim.SGD."""
    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                 max_norm=None):
        lr = _check_hyper("lr", lr)
        momentum = _check_hyper("momentum", momentum)
        weight_decay = _check_hyper("weight_decay", weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.state_names = ("momentum_buffer",) if momentum else ()
        super().__init__(params, max_norm, lr=lr, momentum=momentum, nesterov=bool(nesterov),
                         weight_decay=weight_decay)

    def step(self, lr=None):
        """One update with the gradients in the parameters' .grad; ``lr`` (default
        self.lr) is this step's learning rate (a schedule's)."""
        h = self.hyper
        for data, grad, state in self._groups():
            self.backend.sgd(data, grad, state[0] if state else None,
                             lr=h["lr"] if lr is None else lr, momentum=h["momentum"],
                             nesterov=h["nesterov"], weight_decay=h["weight_decay"],
                             first_step=self.step_count == 0)
        self._apply_max_norm()
        self.step_count += 1

    def compiled_spec(self):
        """("sgd", (momentum, nesterov, weight_decay), (momentum_buffer,), max_norm or
        None) for a compiled step over the flat buffers, or None when the parameters are
        not one flat buffer."""
        if self._flat is None:
            return None
        h = self.hyper
        state = (self._state["momentum_buffer"],) if h["momentum"] else ()
        return ("sgd", (h["momentum"], float(h["nesterov"]), h["weight_decay"]), state,
                h.get("max_norm"))


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient."""
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 max_norm=None):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        super().__init__(params, max_norm, lr=_check_hyper("lr", lr),
                         betas=(_check_hyper("betas[0]", beta1, high=1.0),
                                _check_hyper("betas[1]", beta2, high=1.0)),
                         eps=_check_hyper("eps", eps),
                         weight_decay=_check_hyper("weight_decay", weight_decay))

    def step(self, lr=None):
        """One update with the gradients in the parameters' .grad; ``lr`` (default
        self.lr) is this step's learning rate (a schedule's)."""
        h = self.hyper
        self.step_count += 1
        for data, grad, (m, v) in self._groups():
            self.backend.adam(data, grad, m, v, step=self.step_count,
                              lr=h["lr"] if lr is None else lr,
                              beta1=h["betas"][0], beta2=h["betas"][1], eps=h["eps"],
                              weight_decay=h["weight_decay"], decoupled=self.decoupled)
        self._apply_max_norm()

    def compiled_spec(self):
        """("adam", (beta1, beta2, eps, weight_decay, decoupled), (exp_avg, exp_avg_sq),
        max_norm or None) for a compiled step over the flat buffers, or None when the
        parameters are not one flat buffer."""
        if self._flat is None:
            return None
        h = self.hyper
        return ("adam", (*h["betas"], h["eps"], h["weight_decay"], float(self.decoupled)),
                (self._state["exp_avg"], self._state["exp_avg_sq"]), h.get("max_norm"))


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay, p *= 1 - lr * weight_decay (default 0.01)."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 max_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, max_norm)
