"""argparse value types shared by the command-line faces (cli, benchmarks)."""
import argparse


def positive(kind):
    """An argparse type: ``kind(text)``, which must be > 0."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse
