"""mlpfast: a fast, readable multilayer-perceptron engine."""
__version__ = "0.1.0"

from .backend import backends, get_backend, get_num_threads, set_num_threads, to_numpy  # noqa: F401
