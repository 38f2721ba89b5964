"""The cuda backend's training step: k batches per call of kernels/cuda/mlp_step.CudaMLPSteps,
each step one list of kernel launches, captured as a CUDA graph once per batch size and
replayed (contract: mlpfast/backend/steps.py).

It covers what the cpu backend's compiled step covers (``cpu.compiled_spec``): a chain of
Linear layers with elementwise activations, cross-entropy or MSE, SGD, Adam or AdamW,
float32. Any other model (BatchNorm1d, Dropout, max_norm, ...) trains layer by layer.

An array dataset goes to the device once, when the step is built (unless it would take more
than half of the free device memory); a dataset object, or such an array, is gathered on the
host and uploaded one chunk of batches per call.
"""
from ..kernels.cuda._device import is_device_array, simulator_enabled
from .cpu import CompiledStep, compiled_spec
from .steps import LayerByLayerStep, fp32_only

DEVICE_SHARE = 0.5      # an array dataset stays on the device when it takes at most this
                        # share of the free device memory


def cuda_step(plan, loss_fn, optimizer, dataset, batch_size):
    """The cuda step when it covers the plan, the loss and the optimizer, else the
    layer-by-layer one."""
    fp32_only(plan, loss_fn, optimizer, dataset)
    spec = compiled_spec(plan, loss_fn, optimizer, dataset, is_device_array)
    if spec is None or spec[5] is not None or _any_post(spec[6]):
        return LayerByLayerStep(plan, loss_fn, optimizer, dataset, batch_size)
    return CudaStep(plan, spec, optimizer, dataset, batch_size)


def _any_post(post):
    """Whether (batchnorms, dropouts, input_dropout) holds any layer."""
    batchnorms, dropouts, input_dropout = post
    return input_dropout is not None or any(b is not None for b in batchnorms) \
        or any(d is not None for d in dropouts)


def default_graph_device():
    """(the ``cuda.core`` Device the step is captured on, or None; why none)."""
    if simulator_enabled():
        return None, "the CUDA simulator has no graphs"
    from ..kernels.cuda.graphs import current_device
    try:
        return current_device(), None
    except Exception as error:       # no cuda.core, or one that cannot reach this GPU
        return None, f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


class CudaStep(CompiledStep):
    """``CompiledStep`` with the steps on the GPU. ``graph_device``: "auto" (the current
    GPU's, none under the simulator), None (launch kernel by kernel), or a device with
    cuda.core's graph interface."""

    def __init__(self, plan, spec, optimizer, dataset, batch_size, graph_device="auto"):
        self._graph_device, why = (default_graph_device() if graph_device == "auto"
                                   else (graph_device, None))
        super().__init__(plan, spec, optimizer, dataset, batch_size,
                         resident=_fits_on_device(dataset))
        if why is not None:
            self._steps.graph_error = why

    def make_steps(self, args, post, max_norm):
        """CudaMLPSteps(*args) (cuda_step leaves post and max_norm to the layer steps)."""
        from ..kernels.cuda.mlp_step import CudaMLPSteps
        return CudaMLPSteps(*args, graph_device=self._graph_device)

    def fill(self, order, first_batch, num_batches):
        """As ``CompiledStep.fill``; a chunk gathered on the host goes up to the device."""
        order, first_batch = super().fill(order, first_batch, num_batches)
        if self._chunk is not None:
            x, y = self._chunk.arrays()
            self._steps.load_rows(x[:order.shape[0]], y[:order.shape[0]])
        return order, first_batch

    @property
    def graphs(self):
        """How the steps run: "CUDA graph" with the number of batch sizes captured, or
        "kernel by kernel" and why."""
        steps = self._steps
        if steps.graph_device is not None:
            return f"CUDA graph ({steps.graphs_captured} batch sizes captured)"
        return f"kernel by kernel ({steps.graph_error or 'no graph device given'})"


def _fits_on_device(dataset):
    """Whether the dataset's arrays (x as float32) take at most DEVICE_SHARE of the free
    device memory (True for datasets without arrays: they go by chunks anyway)."""
    arrays = getattr(dataset, "arrays", None)
    if arrays is None:
        return True
    from numba import cuda
    free = cuda.current_context().get_memory_info()[0]
    x, y = arrays
    return x.size * 4 + y.nbytes <= DEVICE_SHARE * free
