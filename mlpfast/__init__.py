"""mlpfast: a fast, readable multilayer-perceptron engine.

    import mlpfast as mf
    model = mf.MLP([784, 512, 256, 10], activation="relu", seed=0)
    opt = mf.optim.Adam(model.parameters(), lr=1e-3)
    mf.fit(model, opt, mf.CrossEntropyLoss(), x, y, epochs=10, batch_size=128)
"""
__version__ = "0.1.0"

from . import datasets, init, metrics, optim, schedules  # noqa: F401
from .backend import backends, get_backend, get_num_threads, set_num_threads, to_numpy  # noqa: F401
from .losses import CrossEntropyLoss, MSELoss  # noqa: F401
from .nn import (GELU, MLP, BatchNorm1d, Dropout, Identity, LeakyReLU, Linear,  # noqa: F401
                 Module, Parameter, ReLU, Sequential, Sigmoid, Softmax, Tanh, load)
from .perceptron import Perceptron  # noqa: F401
from .summary import summary  # noqa: F401
from .train import (History, TrainingDiverged, evaluate, fit, predict,  # noqa: F401
                    predict_proba)
