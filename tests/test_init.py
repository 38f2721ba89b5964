"""Weight initialization: torch's gains and formulas, distribution statistics of large draws,
and the default drawing exactly the weights mlpfast drew before init= existed."""
import math

import numpy as np
import pytest

import mlpfast as mf
from mlpfast import init

torch = pytest.importorskip("torch")


def previous_mlp_weights(sizes, seed):
    """The initialization of MLP before init= existed: per layer W then b, U(+-1/sqrt(in))."""
    rng = np.random.default_rng(seed)
    state = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / np.sqrt(n_in)
        state[f"{2 * i}.weight"] = rng.uniform(-bound, bound, size=(n_out, n_in)).astype(np.float32)
        state[f"{2 * i}.bias"] = rng.uniform(-bound, bound, size=n_out).astype(np.float32)
    return state


@pytest.mark.parametrize("seed", [0, 7])
def test_default_draws_the_previous_weights_bit_for_bit(seed):
    sizes = [13, 11, 7, 3]
    expected = previous_mlp_weights(sizes, seed)
    for model in (mf.MLP(sizes, seed=seed, backend="numpy"),
                  mf.MLP(sizes, init="kaiming_uniform", seed=seed, backend="numpy")):
        state = model.state_dict()
        for key, value in expected.items():
            assert np.array_equal(state[key], value), key
    # batchnorm and dropout layers shift the indices, not the weights
    with_both = mf.MLP(sizes, batchnorm=True, dropout=0.5, seed=seed, backend="numpy")
    linears = [layer for layer in with_both if isinstance(layer, mf.Linear)]
    for i, layer in enumerate(linears):
        assert np.array_equal(layer.weight.numpy(), expected[f"{2 * i}.weight"])
        assert np.array_equal(layer.bias.numpy(), expected[f"{2 * i}.bias"])


@pytest.mark.parametrize("nonlinearity,param", [("identity", None), ("linear", None),
                                                ("sigmoid", None), ("tanh", None),
                                                ("relu", None), ("leaky_relu", None),
                                                ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5))])
def test_gains_are_torchs(nonlinearity, param):
    torch_name = "linear" if nonlinearity == "identity" else nonlinearity
    assert init.calculate_gain(nonlinearity, param) == \
        pytest.approx(torch.nn.init.calculate_gain(torch_name, param), rel=1e-15)


def test_kaiming_uniform_with_a_sqrt5_is_torchs_linear_default():
    for fan_in in (1, 7, 784):
        rng = np.random.default_rng(0)
        w = init.kaiming_uniform((3, fan_in), rng, a=math.sqrt(5))
        bound = math.sqrt(3.0) * init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        assert bound == pytest.approx(1 / math.sqrt(fan_in), rel=1e-15)
        assert np.abs(w).max() <= bound


def uniform_statistics_hold(w, bound):
    n = w.size
    std = bound / math.sqrt(3)                  # of U(-bound, bound)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert w.std() == pytest.approx(std, rel=0.02)


def normal_statistics_hold(w, std):
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.02)
    assert abs((w ** 4).mean() / w.var() ** 2 - 3) < 0.15        # the kurtosis of a normal


SHAPE = (300, 400)                              # (fan_out, fan_in)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh", "leaky_relu"])
def test_kaiming_formulas(mode, nonlinearity):
    fan = SHAPE[1] if mode == "fan_in" else SHAPE[0]
    std = torch.nn.init.calculate_gain(nonlinearity, 0.1) / math.sqrt(fan)
    rng = np.random.default_rng(1)
    normal_statistics_hold(init.kaiming_normal(SHAPE, rng, 0.1, mode, nonlinearity), std)
    uniform_statistics_hold(init.kaiming_uniform(SHAPE, rng, 0.1, mode, nonlinearity),
                            math.sqrt(3) * std)
    reference = torch.nn.init.kaiming_normal_(torch.empty(SHAPE, dtype=torch.float64), 0.1, mode,
                                              nonlinearity)
    assert float(reference.std()) == pytest.approx(std, rel=0.02)        # torch: same law


@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_formulas(gain):
    std = gain * math.sqrt(2.0 / sum(SHAPE))
    rng = np.random.default_rng(2)
    normal_statistics_hold(init.xavier_normal(SHAPE, rng, gain), std)
    uniform_statistics_hold(init.xavier_uniform(SHAPE, rng, gain), math.sqrt(3) * std)
    reference = torch.nn.init.xavier_uniform_(torch.empty(SHAPE, dtype=torch.float64), gain)
    assert float(reference.abs().max()) <= math.sqrt(3) * std


@pytest.mark.parametrize("name", ["kaiming_normal", "xavier_uniform", "xavier_normal"])
def test_mlp_uses_each_layers_activation_gain(name):
    sizes = [400, 300, 200]
    model = mf.MLP(sizes, activation="tanh", init=name, seed=3, backend="numpy")
    hidden, output = model[0], model[2]
    for layer, nonlinearity in ((hidden, "tanh"), (output, "identity")):
        w = layer.weight.numpy().astype(np.float64)
        fan_out, fan_in = w.shape
        gain = init.calculate_gain(nonlinearity)
        if name == "kaiming_normal":
            normal_statistics_hold(w, gain / math.sqrt(fan_in))
        elif name == "xavier_normal":
            normal_statistics_hold(w, gain * math.sqrt(2 / (fan_in + fan_out)))
        else:
            uniform_statistics_hold(w, gain * math.sqrt(6 / (fan_in + fan_out)))
        bias_bound = 1 / math.sqrt(fan_in)           # torch.nn.Linear's bias, whatever init
        assert np.abs(layer.bias.numpy()).max() <= bias_bound


@pytest.mark.parametrize("name", ["kaiming_normal", "xavier_uniform", "xavier_normal"])
@pytest.mark.parametrize("activation", ["leaky_relu", "tanh", "relu"])
def test_mlp_draws_torchs_formula_with_the_activations_own_slope(name, activation):
    """The exact draws, from the same generator: per layer the weight with torch's gain
    (leaky_relu's that of the layer's own slope, 0.01, as LeakyReLU's; torch's
    kaiming_normal_(w, a=0.01, nonlinearity="leaky_relu")), then the Linear bias. The
    statistical tests above cannot see a gain 5e-5 off (leaky_relu's with a=0)."""
    sizes, seed = [9, 7, 4], 11
    model = mf.MLP(sizes, activation=activation, init=name, seed=seed, backend="numpy")
    rng = np.random.default_rng(seed)
    linears = [layer for layer in model if isinstance(layer, mf.Linear)]
    for i, layer in enumerate(linears):
        fan_out, fan_in = layer.weight.shape
        nonlinearity = activation if i < len(linears) - 1 else "linear"
        gain = torch.nn.init.calculate_gain(nonlinearity, 0.01)
        if name == "kaiming_normal":
            w = rng.normal(0.0, gain / math.sqrt(fan_in), size=(fan_out, fan_in))
        elif name == "xavier_normal":
            w = rng.normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_out, fan_in))
        else:
            bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, size=(fan_out, fan_in))
        b = rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), size=fan_out)
        np.testing.assert_allclose(layer.weight.numpy(), w, rtol=1e-6, atol=0)
        np.testing.assert_allclose(layer.bias.numpy(), b, rtol=1e-6, atol=0)


def test_linear_without_nonlinearity_takes_torchs_defaults():
    w = mf.Linear(400, 300, init="kaiming_normal", seed=4, backend="numpy").weight.numpy()
    normal_statistics_hold(w.astype(np.float64), math.sqrt(2 / 400))    # leaky_relu, a=0
    w = mf.Linear(400, 300, init="xavier_uniform", seed=4, backend="numpy").weight.numpy()
    uniform_statistics_hold(w.astype(np.float64), math.sqrt(6 / 700))   # gain 1


def test_bad_init_arguments_are_named():
    with pytest.raises(ValueError, match="init must be one of"):
        mf.MLP([3, 2], init="he")
    with pytest.raises(ValueError, match="init must be one of"):
        mf.Linear(3, 2, init="orthogonal")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_normal((2, 3), np.random.default_rng(), mode="fan_avg")
