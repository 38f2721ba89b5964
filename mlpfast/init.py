"""Weight initialization with torch.nn.init's names and formulas (NumPy, float64 draws).

For a weight of shape (out, in): fan_in = in, fan_out = out, and

    calculate_gain(nonlinearity, param)   identity/linear/sigmoid 1, tanh 5/3, relu sqrt(2),
                 leaky_relu sqrt(2 / (1 + slope^2)) (slope = param, default 0.01);
                 gelu and gelu_tanh: sqrt(2), relu's (torch has no gain for them)
    kaiming_uniform(a, mode, nonlinearity)  U(-b, b),  b = gain * sqrt(3 / fan)
    kaiming_normal(a, mode, nonlinearity)   N(0, std^2),  std = gain / sqrt(fan)
                 gain = calculate_gain(nonlinearity, a), fan = fan_in or fan_out (mode)
    xavier_uniform(gain)   U(-b, b),  b = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal(gain)    N(0, std^2),  std = gain * sqrt(2 / (fan_in + fan_out))

``linear_parameters`` initializes a Linear layer by one of ``INITS``:

    kaiming_uniform   torch.nn.Linear's own default, kaiming_uniform(a=sqrt(5)), which is
                      U(-1/sqrt(in), 1/sqrt(in)); drawn as exactly that (weight, then bias)
    kaiming_normal    kaiming_normal(nonlinearity=the activation after the layer)
    xavier_uniform    xavier_uniform(gain=calculate_gain(the activation after the layer))
    xavier_normal     xavier_normal(gain=calculate_gain(the activation after the layer))
(MLP passes each hidden layer's activation and "identity" for the output layer.)

The bias is always torch.nn.Linear's, U(-1/sqrt(in), 1/sqrt(in)), drawn after the weight:
each choice equals a fresh torch Linear whose weight was then re-drawn by torch.nn.init.
"""
import math

import numpy as np

INITS = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")
_UNIT_GAIN = ("identity", "linear", "sigmoid")
NONLINEARITIES = _UNIT_GAIN + ("tanh", "relu", "leaky_relu", "gelu", "gelu_tanh")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity`` (torch.nn.init.calculate_gain)."""
    if nonlinearity in _UNIT_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity in ("relu", "gelu", "gelu_tanh"):
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")


def _fans(shape):
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (out_features, in_features), both >= 1, got {shape!r}")
    return shape[1], shape[0]


def _kaiming_std(shape, a, mode, nonlinearity):
    fan_in, fan_out = _fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform(shape, rng, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return rng.uniform(-bound, bound, size=shape)


def kaiming_normal(shape, rng, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    return rng.normal(0.0, _kaiming_std(shape, a, mode, nonlinearity), size=shape)


def _xavier_std(shape, gain):
    fan_in, fan_out = _fans(shape)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def xavier_uniform(shape, rng, gain=1.0):
    bound = math.sqrt(3.0) * _xavier_std(shape, gain)
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape, rng, gain=1.0):
    return rng.normal(0.0, _xavier_std(shape, gain), size=shape)


def make_rng(seed, name="seed"):
    """np.random.default_rng(seed) (None, an integer >= 0 or a Generator), its errors
    naming the argument."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name} must be None, an integer >= 0 or a numpy Generator, got "
                      f"{seed!r}") from None


def check_nonlinearity(nonlinearity):
    """None (torch.nn.init's default) or one of NONLINEARITIES."""
    if nonlinearity is not None and nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES} or None, got "
                         f"{nonlinearity!r}")
    return nonlinearity


def check_init(init):
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def linear_parameters(init, in_features, out_features, bias, rng, nonlinearity=None,
                      negative_slope=0.01):
    """(weight (out, in), bias (out,) or None), float64, for a Linear layer followed by
    ``nonlinearity`` (an activation name, "identity" when none follows; None: the default
    of torch.nn.init's function, leaky_relu with a=0 for kaiming, gain 1 for xavier).
    ``negative_slope``: leaky_relu's."""
    shape = (out_features, in_features)
    check_nonlinearity(nonlinearity)
    bound = 1.0 / np.sqrt(in_features)               # torch.nn.Linear.reset_parameters
    if check_init(init) == "kaiming_uniform":
        weight = rng.uniform(-bound, bound, size=shape)
    elif init == "kaiming_normal":
        weight = kaiming_normal(shape, rng) if nonlinearity is None else \
            kaiming_normal(shape, rng, negative_slope, nonlinearity=nonlinearity)
    else:
        gain = 1.0 if nonlinearity is None else calculate_gain(nonlinearity, negative_slope)
        weight = (xavier_uniform if init == "xavier_uniform" else xavier_normal)(shape, rng, gain)
    return weight, rng.uniform(-bound, bound, size=out_features) if bias else None
