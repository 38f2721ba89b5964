"""Every CPU backend against PyTorch (tests/torch_parity.py); the cuda backend's case is in
tests/cuda_cases.py. CI installs PyTorch's CPU build (.ci/run); elsewhere this skips with a
reason when PyTorch is missing."""
import numpy as np
import pytest
from conftest import assert_close
from torch_parity import TORCH_ACTIVATIONS, check_against_torch

import mlpfast as mf
from mlpfast.datasets import as_dataset

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CPU build: "
                                            "pip install torch --index-url "
                                            "https://download.pytorch.org/whl/cpu)")

CPU_BACKENDS = [name for name in mf.backends() if mf.get_backend(name).device == "cpu"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_backend_trains_as_pytorch_does(backend, activation):
    check_against_torch(torch, backend, activation)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind,betas", [("Adam", (0.9, 0.9999)), ("AdamW", (0.8, 0.999))])
def test_float32_adam_update_rounds_as_torch_does(backend, kind, betas):
    """Three float32 Adam/AdamW updates from given gradients, through optimizer.step and
    (cpu) the compiled step's update, against torch.optim in float64: only the float32
    rounding of each operation apart. The kernels once took 1 - beta in float32 from the
    rounded beta (1 - float32(0.9999) is 1.00017e-4): exp_avg_sq 1.7e-4 too small, each
    step 8e-5 too large (1.3e-5 and 6.4e-6 at beta2 = 0.999)."""
    rng = np.random.default_rng(0)
    lr = 1e-3
    updaters = (["compiled step"] if backend == "cpu" else []) + ["optimizer.step"]
    for updater in updaters:
        model = mf.MLP([7, 5, 3], backend=backend, seed=0)
        start = (rng.uniform(-1, 1, model.flat_data.shape) * lr).astype(np.float32)
        grads = rng.standard_normal((3,) + model.flat_data.shape).astype(np.float32)
        model.flat_data[:] = start
        optimizer = getattr(mf.optim, kind)(model.parameters(), lr=lr, betas=betas)
        if updater == "compiled step":
            x, y = rng.standard_normal((4, 7)).astype(np.float32), np.arange(4) % 3
            step = model.backend.make_step(model.plan(), mf.CrossEntropyLoss(), optimizer,
                                           as_dataset(model, x, y), 4)
            assert type(step).__name__ == "CompiledStep"
            update = step.apply_update
        else:
            update = optimizer.step
        reference = torch.nn.Parameter(torch.from_numpy(start.astype(np.float64)))
        torch_optimizer = getattr(torch.optim, kind)([reference], lr=lr, betas=betas)
        for g in grads:
            model.flat_grad[:] = g
            update(lr)
            reference.grad = torch.from_numpy(g.astype(np.float64))
            torch_optimizer.step()
        state = optimizer.state_dict()["state"]
        want = torch_optimizer.state[reference]
        what = f"{backend} {kind} {betas} through {updater}"
        assert_close(state["exp_avg"], want["exp_avg"].numpy(), tol=(2e-7, 2e-6),
                     what=f"{what}: exp_avg")
        assert_close(state["exp_avg_sq"], want["exp_avg_sq"].numpy(), tol=(1e-12, 2e-6),
                     what=f"{what}: exp_avg_sq")
        assert_close(model.flat_data, reference.detach().numpy(), tol=(1e-5 * lr, 0),
                     what=f"{what}: parameters")
