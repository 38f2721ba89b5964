"""Launch lists and CUDA graphs: work on the GPU as a fixed list of kernel launches, run
launch by launch or captured once into a CUDA graph and replayed.

A ``Launch`` is (kernel, grid, block, args): ``launch(stream)`` runs
``kernel[grid, block, stream](*args)``. The arguments are device arrays and scalars fixed for
the list's lifetime, so one list (or one graph of it) serves every step of a training loop:
what changes from step to step (the batch number, the learning rate) lives in device memory
that the list's kernels read and write.

``CapturedGraph(launches)`` records the list once through a ``cuda.core`` GraphBuilder
(numba-cuda from 0.29 takes one in place of the stream: ``kernel[grid, block, builder](...)``,
then ``builder.end_building().complete()``) and ``launch()`` replays it on the device's
default stream, in order with numba-cuda's own kernels and copies there. Capture records, it
runs nothing. The kernels must be compiled and loaded before (run the list once uncaptured:
loading a module while capturing is not allowed), and capture must neither allocate nor free
device memory (``cuda.defer_cleanup`` holds back numba-cuda's deferred frees).
"""
import contextlib
from typing import NamedTuple

import numpy as np
from numba import cuda


class Launch(NamedTuple):
    """kernel[grid, block, stream](*args): a device array or a scalar in each argument."""
    kernel: object
    grid: object
    block: int
    args: tuple

    def __call__(self, stream=0):
        self.kernel[self.grid, self.block, stream](*self.args)


def launch_all(launches, stream=0):
    for launch in launches:
        launch(stream)


def check_launches(launches):
    """Every array argument must live on the device: a host array would be copied to the
    device and back at each launch, which a graph cannot capture."""
    for launch in launches:
        for i, arg in enumerate(launch.args):
            if isinstance(arg, np.ndarray):
                raise TypeError(f"argument {i} of a launch of {launch.kernel} is a host array "
                                f"{arg.dtype} {arg.shape}: launch lists take device arrays")


def current_device():
    """The ``cuda.core`` Device of numba-cuda's current GPU, made current for cuda.core."""
    from cuda.core import Device
    device = Device(cuda.get_current_device().id)
    device.set_current()
    return device


class CapturedGraph:
    """``launches`` captured once as a CUDA graph on ``device`` (a ``cuda.core`` Device, or
    anything with its ``create_graph_builder()`` and ``default_stream``); ``launch()``
    replays them all."""

    def __init__(self, launches, device):
        builder = device.create_graph_builder()
        builder.begin_building()
        try:
            with cuda.defer_cleanup():
                launch_all(launches, builder)
        except BaseException:
            with contextlib.suppress(Exception):      # leave capture mode; drop the graph
                builder.end_building()
            raise
        self._graph = builder.end_building().complete()
        self._stream = device.default_stream
        self._launches = tuple(launches)     # the graph holds pointers: keep them alive

    def launch(self):
        self._graph.launch(self._stream)
