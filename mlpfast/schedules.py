"""Learning-rate schedules: the factor that scales the optimizer's lr at each step.

A run of T optimizer steps, S per epoch, starts a schedule with
``start(total_steps=T, steps_per_epoch=S, base_lr=lr)``; step t (0-based, global) then
uses ``lr * factor(t)``, and after each epoch the loop calls ``end_epoch(value)`` with the
monitored value (only ``plateau`` uses it). With epoch e = t // S, and torch's scheduler
giving the same sequence of lrs (tests/test_schedules.py):

    constant                        1                                         (no scheduler)
    step(step_size, gamma=0.1)      gamma ** (e // step_size)      StepLR, stepped per epoch
    multistep(milestones, gamma=0.1)  gamma ** (milestones <= e)   MultiStepLR, per epoch
    exponential(gamma)              gamma ** e                     ExponentialLR, per epoch
    cosine(warmup_steps=0, warmup_start_factor=0, min_factor=0)    per step, W = warmup_steps:
        t < W   s + (1 - s) t / W,  s = warmup_start_factor        LinearLR(s, total_iters=W)
        t >= W  m + (1 - m) (1 + cos(pi (t - W) / (T - W))) / 2    then CosineAnnealingLR(
                                                                   T_max=T-W, eta_min=m lr)
    onecycle(max_factor=1, pct_start=0.3, div_factor=25, final_div_factor=1e4)   per step,
        OneCycleLR(max_lr=max_factor lr, total_steps=T, anneal_strategy="cos",
        cycle_momentum=False): cosine from max/div_factor up to max over the first
        pct_start T - 1 steps, then down to max/div_factor/final_div_factor at step T - 1
    plateau(mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
            cooldown=0, min_lr=0, eps=1e-8, monitor="val_loss")
        ReduceLROnPlateau: after ``patience`` epochs whose value did not beat the best by
        ``threshold``, lr = max(lr * factor, min_lr) (kept when it moves by eps or less),
        then ``cooldown`` epochs before counting again. ``monitor`` names the value the
        training loop should pass (a History key).

``make_schedule(name_or_schedule, **kwargs)`` builds one by name (or passes a schedule
through; a function f(t, T) -> factor becomes a ``FunctionSchedule``, whose factors must
be finite and >= 0). step, multistep and exponential have required arguments, as torch's
do, so they need ``make_schedule(name, ...)``; the others also work by name alone.
``state_dict()`` is JSON-able ({"type", "config", "state"}); ``load_state_dict`` checks the
type and config and restores the state, so a resumed run continues the same sequence
bit for bit. Only ``plateau`` has state beyond its config; the others are functions of t.
"""
import bisect
import functools
import inspect
import math
import numbers


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _number(name, value, low=None, high=None, low_open=False, high_open=False):
    """value as a float in [low, high] (an end open when asked), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {span}, got {value}")
    return value


class Schedule:
    """Base: ``start``, ``factor(step)``, ``end_epoch(value)``, state_dict round trip."""

    name = "constant"

    def __init__(self):
        self.total_steps = self.steps_per_epoch = self.base_lr = None

    def config(self):
        """The constructor arguments, JSON-able."""
        return {}

    def start(self, total_steps, steps_per_epoch, base_lr):
        """Bind to a run of ``total_steps`` steps, ``steps_per_epoch`` per epoch, at lr
        ``base_lr`` (called once per run, and again before ``load_state_dict`` on resume)."""
        self.total_steps = _positive_int("total_steps", total_steps)
        self.steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
        self.base_lr = _number("base_lr", base_lr, low=0.0)
        return self

    def _epoch(self, step):
        if self.total_steps is None:
            raise RuntimeError(f"{type(self).__name__}.start(total_steps, steps_per_epoch, "
                               f"base_lr) must be called before factor()")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        return int(step) // self.steps_per_epoch

    def factor(self, step):
        """The lr factor of global step ``step`` (0-based)."""
        self._epoch(step)
        return 1.0

    def end_epoch(self, value=None):
        """An epoch ended; ``value`` is the monitored quantity (used by ``plateau``)."""

    def _state(self):
        return {}

    def _load_state(self, state):
        pass

    def state_dict(self):
        return {"type": self.name, "config": self.config(), "state": self._state()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("type") != self.name:
            got = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must come from a {self.name!r} schedule, got {got!r}")
        if state.get("config") != self.config():
            raise ValueError(f"state holds the {self.name} schedule {state.get('config')}, "
                             f"this one is {self.config()}")
        self._load_state(state.get("state", {}))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class ConstantSchedule(Schedule):
    """factor 1 at every step."""


class StepSchedule(Schedule):
    """gamma ** (epoch // step_size): torch's StepLR stepped once per epoch."""
    name = "step"

    def __init__(self, step_size, gamma=0.1):
        super().__init__()
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _number("gamma", gamma, low=0.0, low_open=True)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def factor(self, step):
        return self.gamma ** (self._epoch(step) // self.step_size)


class MultiStepSchedule(Schedule):
    """gamma ** (number of milestones <= epoch): torch's MultiStepLR, once per epoch."""
    name = "multistep"

    def __init__(self, milestones, gamma=0.1):
        super().__init__()
        milestones = list(milestones) if isinstance(milestones, (list, tuple)) else milestones
        if not isinstance(milestones, list) or not milestones:
            raise ValueError(f"milestones must be a non-empty list of epochs, got {milestones!r}")
        self.milestones = [_positive_int("each milestone", m) for m in milestones]
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must increase, got {milestones!r}")
        self.gamma = _number("gamma", gamma, low=0.0, low_open=True)

    def config(self):
        return {"milestones": self.milestones, "gamma": self.gamma}

    def factor(self, step):
        return self.gamma ** bisect.bisect_right(self.milestones, self._epoch(step))


class ExponentialSchedule(Schedule):
    """gamma ** epoch: torch's ExponentialLR stepped once per epoch."""
    name = "exponential"

    def __init__(self, gamma):
        super().__init__()
        self.gamma = _number("gamma", gamma, low=0.0, low_open=True)

    def config(self):
        return {"gamma": self.gamma}

    def factor(self, step):
        return self.gamma ** self._epoch(step)


class CosineSchedule(Schedule):
    """Linear warm-up from ``warmup_start_factor`` over ``warmup_steps`` steps, then cosine
    decay from 1 to ``min_factor`` over the remaining steps (see the module docstring)."""
    name = "cosine"

    def __init__(self, warmup_steps=0, warmup_start_factor=0.0, min_factor=0.0):
        super().__init__()
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) \
                or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = _number("warmup_start_factor", warmup_start_factor, 0.0, 1.0)
        self.min_factor = _number("min_factor", min_factor, 0.0, 1.0)

    def config(self):
        return {"warmup_steps": self.warmup_steps, "warmup_start_factor":
                self.warmup_start_factor, "min_factor": self.min_factor}

    def start(self, total_steps, steps_per_epoch, base_lr):
        super().start(total_steps, steps_per_epoch, base_lr)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than the "
                             f"run's {self.total_steps} steps")
        return self

    def factor(self, step):
        self._epoch(step)
        warmup, start = self.warmup_steps, self.warmup_start_factor
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        progress = (step - warmup) / (self.total_steps - warmup)
        return self.min_factor + (1.0 - self.min_factor) * (1.0 + math.cos(math.pi * progress)) / 2


class OneCycleSchedule(Schedule):
    """torch's OneCycleLR (cosine annealing, no momentum cycling) over the whole run."""
    name = "onecycle"

    def __init__(self, max_factor=1.0, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
        super().__init__()
        self.max_factor = _number("max_factor", max_factor, low=0.0, low_open=True)
        self.pct_start = _number("pct_start", pct_start, 0.0, 1.0, low_open=True, high_open=True)
        self.div_factor = _number("div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = _number("final_div_factor", final_div_factor, low=0.0,
                                        low_open=True)

    def config(self):
        return {"max_factor": self.max_factor, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}

    def start(self, total_steps, steps_per_epoch, base_lr):
        super().start(total_steps, steps_per_epoch, base_lr)
        if float(self.pct_start * self.total_steps) == 1.0:
            raise ValueError(f"pct_start ({self.pct_start}) times the run's {self.total_steps} "
                             f"steps must not be 1: the rise would start and end at step 0 "
                             f"(torch's OneCycleLR divides by zero there)")
        return self

    def factor(self, step):
        self._epoch(step)
        initial = self.max_factor / self.div_factor
        phases = ((float(self.pct_start * self.total_steps) - 1, initial, self.max_factor),
                  (self.total_steps - 1, self.max_factor, initial / self.final_div_factor))
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(phases):    # factor start -> end
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
            start_step = end_step


class PlateauSchedule(Schedule):
    """torch's ReduceLROnPlateau, fed the monitored value at the end of each epoch."""
    name = "plateau"

    def __init__(self, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8, monitor="val_loss"):
        super().__init__()
        for arg, value, allowed in (("mode", mode, ("min", "max")),
                                    ("threshold_mode", threshold_mode, ("rel", "abs"))):
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a History key (a string), got {monitor!r}")
        self.mode, self.threshold_mode, self.monitor = mode, threshold_mode, monitor
        self.reduce_by = _number("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0 or isinstance(cooldown, bool) \
                or not isinstance(cooldown, numbers.Integral) or cooldown < 0:
            raise ValueError(f"patience and cooldown must be integers >= 0, got {patience!r} "
                             f"and {cooldown!r}")
        self.patience, self.cooldown = int(patience), int(cooldown)
        self.threshold = _number("threshold", threshold, low=0.0)
        self.min_lr = _number("min_lr", min_lr, low=0.0)
        self.eps = _number("eps", eps, low=0.0)
        self._load_state({})

    def config(self):
        return {"mode": self.mode, "factor": self.reduce_by, "patience": self.patience,
                "threshold": self.threshold, "threshold_mode": self.threshold_mode,
                "cooldown": self.cooldown, "min_lr": self.min_lr, "eps": self.eps,
                "monitor": self.monitor}

    def start(self, total_steps, steps_per_epoch, base_lr):
        """A run starts at the full rate with no best value, also when this object ran
        before (a resumed run then loads its saved state)."""
        super().start(total_steps, steps_per_epoch, base_lr)
        self._load_state({})
        return self

    def factor(self, step):
        self._epoch(step)
        return self.scale

    def _improves(self, value):
        """value beats the best so far by the threshold (torch's is_better)."""
        if self.best is None:
            return True
        relative = self.threshold_mode == "rel"
        if self.mode == "min":
            return value < (self.best * (1.0 - self.threshold) if relative
                            else self.best - self.threshold)
        return value > (self.best * (self.threshold + 1.0) if relative
                        else self.best + self.threshold)

    def end_epoch(self, value=None):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"the plateau schedule needs the monitored value "
                             f"({self.monitor}) as a finite number, got {value!r}")
        if self.base_lr is None:
            raise RuntimeError("PlateauSchedule.start(...) must be called before end_epoch()")
        value = float(value)
        if self._improves(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old_lr = self.base_lr * self.scale
            new_lr = max(old_lr * self.reduce_by, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.scale = new_lr / self.base_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def _state(self):
        return {"scale": self.scale, "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def _load_state(self, state):
        scale, best = state.get("scale", 1.0), state.get("best")
        bad, cooldown = state.get("num_bad_epochs", 0), state.get("cooldown_counter", 0)
        _number("state scale", scale, low=0.0)
        if best is not None:
            _number("state best", best)
        for name, count in (("num_bad_epochs", bad), ("cooldown_counter", cooldown)):
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
                raise ValueError(f"state {name} must be an integer >= 0, got {count!r}")
        self.scale, self.best = float(scale), None if best is None else float(best)
        self.num_bad_epochs, self.cooldown_counter = int(bad), int(cooldown)


class FunctionSchedule(Schedule):
    """A function f(step, total_steps) -> factor (pure in its arguments, so resume holds)."""
    name = "function"

    def __init__(self, function):
        super().__init__()
        if not callable(function):
            raise TypeError(f"function must be callable f(step, total_steps), got {function!r}")
        self.function = function

    def config(self):
        return {"function": _function_name(self.function)}

    def factor(self, step):
        """The function's factor at ``step``: a finite number >= 0, else a ValueError
        (raised before any step uses it)."""
        self._epoch(step)
        value = self.function(step, self.total_steps)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"lr_schedule {self.config()['function']} returned {value!r} at "
                             f"step {step}: the factor must be a finite number >= 0")
        return float(value)


def _function_name(function):
    """A name the same in every process (no memory address): the qualified name; for a
    functools.partial, its function's with its arguments; for a callable object, its
    class's."""
    if isinstance(function, functools.partial):
        args = [repr(a) for a in function.args]
        args += [f"{key}={value!r}" for key, value in sorted(function.keywords.items())]
        return f"partial({', '.join([_function_name(function.func)] + args)})"
    return getattr(function, "__qualname__", type(function).__qualname__)


SCHEDULES = {cls.name: cls for cls in (ConstantSchedule, StepSchedule, MultiStepSchedule,
                                       ExponentialSchedule, CosineSchedule, OneCycleSchedule,
                                       PlateauSchedule)}


def make_schedule(schedule=None, **kwargs):
    """A schedule from a name in ``SCHEDULES`` and its arguments, a ``Schedule`` (returned
    as is), a function f(step, total_steps) -> factor, or None (constant)."""
    if isinstance(schedule, Schedule):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} go with a schedule name, "
                             f"not with the schedule object {schedule!r}")
        return schedule
    if schedule is None:
        schedule = "constant"
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {sorted(SCHEDULES)}, a Schedule or "
                             f"a function f(step, total_steps), got {schedule!r}")
        cls = SCHEDULES[schedule]
        missing = [name for name, arg in inspect.signature(cls).parameters.items()
                   if arg.default is arg.empty and name not in kwargs]
        if missing:
            raise ValueError(f"lr_schedule {schedule!r} needs {', '.join(missing)}: pass "
                             f"make_schedule({schedule!r}, {missing[0]}=...)")
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise TypeError(f"schedule {schedule!r}: {e}") from None
    if callable(schedule):
        return FunctionSchedule(schedule)
    raise TypeError(f"lr schedule must be a name, a Schedule or a function, got "
                    f"{type(schedule).__name__}")
