"""argparse value types of the stand-alone scripts in bench/. Free of mlpfast and NumPy:
fit_speed.py, pool_wake.py and step_variants.py also run against older checkouts (without
mlpfast.argtypes), and the peers of compare_gemm.py import nothing of mlpfast."""
import argparse


def positive(kind):
    """An argparse type: ``kind(text)``, which must be > 0 (a NaN is refused too)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse
