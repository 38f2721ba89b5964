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
import numbers

import numpy as np

from .backend import to_numpy


def _check_hyper(name, value, low=0.0, high=None, low_inclusive=True):
    """value as a float, or an error naming the hyperparameter: a real number (not a bool
    or a string), finite, >= low (> low unless low_inclusive), < high when high is set."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    ok = (value >= low if low_inclusive else value > low) and (high is None or value < high)
    if not np.isfinite(value) or not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high else "")
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_flag(name, value):
    """value as a bool, or a TypeError naming it: True or False (NumPy's bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _with_max_norm(hyper, max_norm):
    """hyper, with max_norm (checked) when it is set."""
    if max_norm is not None:
        hyper["max_norm"] = _check_hyper("max_norm", max_norm, low_inclusive=False)
    return hyper


class Optimizer:
    """Base: ``hyper`` is what the subclass's ``checked_hyper`` returns (the constructor and
    ``load_state_dict`` both go through it); ``state_names`` follow from it."""
    state_names = ()

    def __init__(self, params, hyper):
        params = list(params)
        if not params:
            raise ValueError("params is empty: pass model.parameters()")
        for i, p in enumerate(params):
            if not all(hasattr(p, a) for a in ("data", "grad", "backend")):
                raise TypeError(f"params[{i}] must be a Parameter, got {type(p).__name__}")
            if p.backend is not params[0].backend or p.data.dtype != params[0].data.dtype:
                raise ValueError(f"params[{i}] lives on {p.backend.name}/{p.data.dtype}, "
                                 f"params[0] on {params[0].backend.name}/{params[0].data.dtype}")
        self.params = params
        self.hyper = hyper
        self.state_names = self._state_names(hyper)
        self._weights = [p for p in params if len(p.shape) == 2]    # max_norm applies to these
        self.step_count = 0
        self._flat = self._common_flat_buffers(params)
        self.backend = params[0].backend
        self._sizes = [int(np.prod(p.shape)) for p in params]
        self._state = {name: self._new_state() for name in self.state_names}

    def _new_state(self):
        return self.backend.zeros((sum(self._sizes),), dtype=self.params[0].data.dtype)

    def _state_names(self, hyper):
        """The state arrays an optimizer with these hyperparameters keeps."""
        return type(self).state_names

    def _step_lr(self, lr):
        """The learning rate of one step: ``lr`` checked, or self.lr when None."""
        return self.hyper["lr"] if lr is None else _check_hyper("lr", lr)

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
        """Take a ``state_dict()`` of this optimizer's type, as torch does: its
        hyperparameters (momentum on or off included) replace these and its arrays become
        the state. Everything is checked before anything changes."""
        hyper, step, arrays = self._checked_state(state)
        for name, a in arrays.items():
            if name not in self._state:                 # momentum turned on
                self._state[name] = self._new_state()
            self.backend.assign(self._state[name], a)
        self.state_names = tuple(arrays)
        self._state = {name: self._state[name] for name in self.state_names}
        self.hyper, self.step_count = hyper, step

    def _checked_state(self, state):
        """(hyper, step, {name: host array in state_names order}) of a state_dict, or a
        ValueError/TypeError naming what is wrong."""
        kind = type(self).__name__
        if not isinstance(state, dict) or state.get("type") != kind:
            raise ValueError(f"state must come from {kind}.state_dict(), got "
                             f"{state.get('type') if isinstance(state, dict) else type(state)}")
        missing = sorted({"step", "hyper", "state"} - set(state))
        if missing:
            raise ValueError(f"state lacks {missing}: pass a {kind}.state_dict()")
        if not isinstance(state["hyper"], dict) or not isinstance(state["state"], dict):
            raise TypeError("state['hyper'] and state['state'] must be dicts")
        try:
            hyper = self.checked_hyper(**state["hyper"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"state['hyper'] is not valid for {kind}: {e}") from None
        if set(hyper) != set(state["hyper"]):
            raise ValueError(f"state['hyper'] has {sorted(state['hyper'])}, {kind} needs "
                             f"{sorted(hyper)}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state['step'] must be an integer >= 0, got {step!r}")
        names = self._state_names(hyper)
        if set(state["state"]) != set(names):
            raise ValueError(f"state['state'] holds {sorted(state['state'])}, but {kind} "
                             f"with hyperparameters {hyper} keeps {list(names)}")
        return hyper, int(step), {n: self._checked_array(n, state["state"][n]) for n in names}

    def _checked_array(self, name, value):
        """A state array as a finite host array of the parameters' dtype and flat size."""
        a = np.asarray(to_numpy(value))
        size = (sum(self._sizes),)
        if a.shape != size or a.dtype.kind != "f":
            raise ValueError(f"optimizer state {name!r} must be a float array of shape {size}, "
                             f"got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"optimizer state {name!r} contains NaN or inf")
        return a.astype(self.params[0].data.dtype)


class SGD(Optimizer):
    """p -= lr * d, with d from momentum/Nesterov/weight decay as torch.optim.SGD."""
    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                 max_norm=None):
        super().__init__(params, self.checked_hyper(lr, momentum, nesterov, weight_decay,
                                                    max_norm))

    @staticmethod
    def checked_hyper(lr, momentum=0.0, nesterov=False, weight_decay=0.0, max_norm=None):
        """The hyperparameters as ``hyper`` holds them, each checked."""
        hyper = {"lr": _check_hyper("lr", lr), "momentum": _check_hyper("momentum", momentum),
                 "nesterov": _check_flag("nesterov", nesterov),
                 "weight_decay": _check_hyper("weight_decay", weight_decay)}
        if nesterov and hyper["momentum"] <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return _with_max_norm(hyper, max_norm)

    def _state_names(self, hyper):
        return ("momentum_buffer",) if hyper["momentum"] else ()

    def step(self, lr=None):
        """One update with the gradients in the parameters' .grad; ``lr`` (default
        self.lr; finite, >= 0) is this step's learning rate (a schedule's)."""
        h, lr = self.hyper, self._step_lr(lr)
        for data, grad, state in self._groups():
            self.backend.sgd(data, grad, state[0] if state else None,
                             lr=lr, momentum=h["momentum"],
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
        super().__init__(params, self.checked_hyper(lr, betas, eps, weight_decay, max_norm))

    @staticmethod
    def checked_hyper(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_norm=None):
        """The hyperparameters as ``hyper`` holds them, each checked."""
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        return _with_max_norm({"lr": _check_hyper("lr", lr),
                               "betas": (_check_hyper("betas[0]", beta1, high=1.0),
                                         _check_hyper("betas[1]", beta2, high=1.0)),
                               "eps": _check_hyper("eps", eps),
                               "weight_decay": _check_hyper("weight_decay", weight_decay)},
                              max_norm)

    def step(self, lr=None):
        """One update with the gradients in the parameters' .grad; ``lr`` (default
        self.lr; finite, >= 0) is this step's learning rate (a schedule's)."""
        h, lr = self.hyper, self._step_lr(lr)
        self.step_count += 1
        for data, grad, (m, v) in self._groups():
            self.backend.adam(data, grad, m, v, step=self.step_count, lr=lr,
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
