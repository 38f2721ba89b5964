"""Datasets: ``mnist()`` returns arrays; dataset objects plug into ``fit`` in place of (x, y)."""
from .data.mnist import mnist  # noqa: F401
