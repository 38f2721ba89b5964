"""argparse value types shared by the command-line faces (cli, benchmarks)."""
import argparse


def _bounded(kind, accept, bound):
    """An argparse type: ``kind(text)``, refused unless ``accept(value)`` (message: bound)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value
    return parse


def positive(kind):
    """An argparse type: ``kind(text)``, which must be > 0."""
    return _bounded(kind, lambda v: v > 0, "> 0")


def non_negative(kind):
    """An argparse type: ``kind(text)``, which must be >= 0."""
    return _bounded(kind, lambda v: v >= 0, ">= 0")


def probability(text):
    """An argparse type: a float in [0, 1)."""
    return _bounded(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")(text)
