"""What a model hands its backend so that the backend can build a training step.

``Sequential.plan()`` makes a ``Plan``: the model's stages in forward order (each layer with
the activation its forward applies in the same kernel, when it fuses one), and, when the
model is a chain Linear (activation) ... Linear, that chain as ``PlanLayer`` rows, which a
compiled step can run without the layer objects.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

# Training precisions: "fp32" everywhere; "bf16" (bf16 GEMM operands, float32 sums, float32
# weights, activations' arithmetic, loss, gradients and optimizer) where a backend's
# ``check_step`` accepts it (the cpu backend's compiled step).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class PlanLayer:
    """One Linear layer of a chain and what follows it: y = drop(f(bn(x @ weight.T + bias))).

    weight, bias: the layer's Parameters (``.data``, ``.grad``; bias None when absent);
    batchnorm: the BatchNorm1d layer that follows, or None; activation: the name of f
    ("identity" when no activation follows); params: f's parameters (leaky_relu's
    negative_slope), as the activation layer holds them; dropout: the Dropout layer that
    follows, or None.
    """
    weight: object
    bias: object
    activation: str
    params: dict
    batchnorm: object = None
    dropout: object = None


@dataclass(frozen=True)
class Plan:
    """model: the module (``forward``, ``backward``, ``parameters``), for a layer-by-layer
    step; stages: ((layer, activation layer fused into it or None), ...) in forward order;
    chain: PlanLayer per Linear when the model is a chain [Dropout] Linear [BatchNorm1d]
    [elementwise activation] [Dropout] Linear ... Linear (nothing after the last Linear),
    else None; input_dropout: the chain's leading Dropout or None; flat_data, flat_grad:
    the buffers every parameter and gradient is a view of; precision: one of PRECISIONS."""
    model: object
    stages: Tuple[tuple, ...]
    chain: Optional[Tuple[PlanLayer, ...]]
    dtype: np.dtype
    flat_data: object
    flat_grad: object
    input_dropout: object = None
    precision: str = "fp32"


def check_precision(precision):
    """precision, when it is one of PRECISIONS, else a ValueError naming it."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision
