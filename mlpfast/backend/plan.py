"""What a model hands its backend so that the backend can build a training step.

``Sequential.plan()`` makes a ``Plan``: the model's stages in forward order (each layer with
the activation its forward applies in the same kernel, when it fuses one), and, when the
model is a chain Linear (activation) ... Linear, that chain as ``PlanLayer`` rows, which a
compiled step can run without the layer objects.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class PlanLayer:
    """One Linear layer of a chain: y = f(x @ weight.T + bias).

    weight, bias: the layer's Parameters (``.data``, ``.grad``; bias None when absent);
    activation: the name of f ("identity" when no activation follows the layer);
    params: f's parameters (leaky_relu's negative_slope), as the activation layer holds them.
    """
    weight: object
    bias: object
    activation: str
    params: dict


@dataclass(frozen=True)
class Plan:
    """model: the module (``forward``, ``backward``, ``parameters``), for a layer-by-layer
    step; stages: ((layer, activation layer fused into it or None), ...) in forward order;
    chain: PlanLayer per Linear when the model is a chain of Linear layers each followed by
    at most one elementwise activation (none after the last), else None; flat_data,
    flat_grad: the buffers every parameter and gradient is a view of."""
    model: object
    stages: Tuple[tuple, ...]
    chain: Optional[Tuple[PlanLayer, ...]]
    dtype: np.dtype
    flat_data: object
    flat_grad: object
