"""Every CPU backend against PyTorch (tests/torch_parity.py); the cuda backend's case is in
tests/cuda_cases.py. CI installs PyTorch's CPU build (.ci/run); elsewhere this skips with a
reason when PyTorch is missing."""
import pytest
from torch_parity import TORCH_ACTIVATIONS, check_against_torch

import mlpfast as mf

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CPU build: "
                                            "pip install torch --index-url "
                                            "https://download.pytorch.org/whl/cpu)")

CPU_BACKENDS = [name for name in mf.backends() if mf.get_backend(name).device == "cpu"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_backend_trains_as_pytorch_does(backend, activation):
    check_against_torch(torch, backend, activation)
