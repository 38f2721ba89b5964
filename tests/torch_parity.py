"""mlpfast against PyTorch from the same state_dict: logits, loss, every named gradient, then
20 Adam steps, each backend through the training step fit runs (``make_step``). PyTorch runs
in float64, the outside reference; mlpfast in float32. Shared by tests/test_torch_parity.py
(CPU backends) and tests/cuda_cases.py (cuda, on a GPU or under the simulator); with
``torch_sequential_like``, the torch twin of any mlpfast Sequential, by the tests that
train both."""
import numpy as np
from conftest import assert_close

import mlpfast as mf
from mlpfast.datasets import as_dataset

TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU"}
TORCH_LAYERS = {"identity": "Identity", **TORCH_ACTIVATIONS}


def torch_model(torch, sizes, activation, state):
    """The torch.nn.Sequential of mf.MLP(sizes, activation), loaded from ``state``."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(getattr(torch.nn, TORCH_ACTIVATIONS[activation])())
    model = torch.nn.Sequential(*layers).double()
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in state.items()})
    return model


def torch_sequential_like(torch, model, dtype=np.float32):
    """The torch.nn.Sequential of model's layers (Dropout as torch.nn.Dropout) in ``dtype``,
    holding model's state."""
    mods = []
    for layer in model:
        if isinstance(layer, mf.Linear):
            mods.append(torch.nn.Linear(layer.in_features, layer.out_features,
                                        bias=layer.bias is not None))
        elif isinstance(layer, mf.BatchNorm1d):
            mods.append(torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps,
                                             momentum=layer.momentum, affine=layer.affine))
        elif isinstance(layer, mf.Dropout):
            mods.append(torch.nn.Dropout(layer.p))
        elif isinstance(layer, mf.LeakyReLU):
            mods.append(torch.nn.LeakyReLU(layer.params["negative_slope"]))
        elif isinstance(layer, mf.GELU):
            mods.append(torch.nn.GELU(approximate=layer.approximate))
        elif isinstance(layer, mf.Softmax):
            mods.append(torch.nn.Softmax(dim=1))
        else:
            mods.append(getattr(torch.nn, TORCH_LAYERS[layer.kind])())
    model_torch = torch.nn.Sequential(*mods).to(getattr(torch, np.dtype(dtype).name))
    model_torch.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return model_torch


def check_against_torch(torch, backend, activation, sizes=(31, 24, 17, 10), batch=16, steps=20,
                        lr=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    n = batch * steps
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    model = mf.MLP(list(sizes), activation, backend=backend, seed=seed)
    reference = torch_model(torch, sizes, activation, model.state_dict())
    xt, yt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)
    assert_close(model(x[:batch]), reference(xt[:batch]).detach().numpy(), tol=(1e-5, 1e-4),
                 what=f"{backend} {activation} logits")
    optimizer = mf.optim.Adam(model.parameters(), lr=lr)
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=lr)
    step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), optimizer,
                                   as_dataset(model, x, y), batch)
    order, sums = np.arange(n, dtype=np.int64), np.zeros(2)
    for t in range(steps):
        sums[:] = 0
        assert step.run(order, t, 1, np.full(1, lr), sums)[:2] == (1, True)
        rows = slice(t * batch, (t + 1) * batch)
        torch_optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(xt[rows]), yt[rows])
        loss.backward()
        if t == 0:
            assert abs(sums[0] / batch - loss.item()) <= 1e-5 * abs(loss.item()) + 1e-6, \
                f"{backend} {activation} loss {sums[0] / batch} != {loss.item()}"
            grads = dict(reference.named_parameters())
            for name, p in model.named_parameters():
                want = grads[name].grad.numpy()
                assert_close(mf.to_numpy(p.grad), want, tol=(1e-5 * np.abs(want).max(), 1e-4),
                             what=f"{backend} {activation} gradient of {name}")
        torch_optimizer.step()
    assert optimizer.step_count == steps
    want = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    for name, value in model.state_dict().items():
        assert_close(value, want[name], tol=(2e-5, 1e-3),
                     what=f"{backend} {activation} {name} after {steps} Adam steps")
