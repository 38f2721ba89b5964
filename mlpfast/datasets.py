"""Datasets: ``mnist()`` returns arrays; dataset objects plug into ``fit`` in place of (x, y)."""
from .data.mnist import mnist  # noqa: F401
from .data.speech import SpeechFrames  # noqa: F401
