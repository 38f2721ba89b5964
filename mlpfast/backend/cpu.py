"""The CPU backends: numpy (the references), numba (every op a Numba kernel) and cpu (the
Numba kernels with the C library, and the compiled training step).

The cpu step runs a chain of Linear layers (activations in kernels/mlp_step.ACTIVATIONS),
cross-entropy or MSE, SGD, Adam or AdamW, float32, as ``kernels.mlp_step.MLPSteps``: k
batches per compiled call, in fp32 or bf16 precision. Any other model trains layer by
layer (``steps``), in fp32.
"""
import numpy as np

from .registry import Backend, add_thread_hook, register_backend
from .steps import LayerByLayerStep, label_buffer


def _registry_table(variant):
    """ops + activations of one kernel variant across all families."""
    from ..kernels import activations, batchnorm, data, dropout, gemm, linear, losses, optim
    ops = {"gemm": gemm.VARIANTS[variant]}
    for family in (linear, losses, optim, data, batchnorm, dropout):
        ops.update(family.VARIANTS[variant])
    return ops, activations.VARIANTS[variant]


def _numpy_backend():
    ops, acts = _registry_table("numpy")
    return Backend("numpy", "cpu", ops, acts)


def _numba_backend():
    """Every op a Numba kernel (kernels/*.py, variant "numba")."""
    from ..kernels import _numba_config
    ops, acts = _registry_table("numba")
    return Backend("numba", "cpu", ops, acts, info=_numba_config.info())


def _cpu_backend():
    """The fastest CPU mix: the Numba kernels, with from the C library, when it is built,
    the GEMM, the linear forward and input gradient (GEMM epilogues), Adam, and the
    compiled step. Rule, from bench/compare_gemm_numba.py: the C GEMM was at least as fast
    as the Numba GEMM at every square and MLP shape measured (1 and 2 threads), so it is
    used for every shape; the Numba GEMM is the fallback. Adam in C runs on the GEMM's
    threads, awake right after a step's last GEMM, where a Numba kernel would wake
    OpenMP's."""
    from ..kernels import _numba_config, gemm, linear, optim
    ops, acts = _registry_table("numba")
    info = dict(_numba_config.info(), gemm="numba")
    if not gemm.c_available():
        return Backend("cpu", "cpu", ops, acts, info=info)
    ops["gemm"] = gemm.VARIANTS["c"]
    ops.update(linear.VARIANTS["cpu"])
    ops.update(optim.VARIANTS["c"])
    info["gemm"] = "c"
    return Backend("cpu", "cpu", ops, acts, make_step=compiled_step,
                   check_step=check_compiled_step, info=info)


def _c_thread_hook(n):
    from ..kernels import gemm
    if gemm.c_available():
        from .. import _cgemm
        _cgemm.lib.mlpf_set_num_threads(n)


def _numba_thread_hook(n):
    from ..kernels import _numba_config
    _numba_config.set_threads(n)


register_backend("numpy", _numpy_backend)
register_backend("numba", _numba_backend)
register_backend("cpu", _cpu_backend)
add_thread_hook(_c_thread_hook)
add_thread_hook(_numba_thread_hook)


# --- the compiled step ------------------------------------------------------------------

def compiled_step(plan, loss_fn, optimizer, dataset, batch_size):
    """The compiled step when it covers the plan, the loss and the optimizer, else the
    layer-by-layer one (fp32 only)."""
    spec = compiled_spec(plan, loss_fn, optimizer, dataset)
    if spec is None:
        check_compiled_step(plan, loss_fn, optimizer, dataset)
        return LayerByLayerStep(plan, loss_fn, optimizer, dataset, batch_size)
    return CompiledStep(plan, spec, optimizer, dataset, batch_size)


def check_compiled_step(plan, loss_fn, optimizer, dataset):
    """bf16 needs the compiled step: a ValueError saying what it covers when it does not
    cover this training."""
    if plan.precision != "fp32" and compiled_spec(plan, loss_fn, optimizer, dataset) is None:
        raise ValueError(
            f"precision {plan.precision!r} trains in the cpu backend's compiled step, which "
            f"covers float32 chains [Dropout] Linear [BatchNorm1d] [activation] [Dropout] "
            f"... Linear with elementwise activations, CrossEntropyLoss or MSELoss "
            f"(int64 labels or float32 targets) and SGD, Adam or AdamW; this training "
            f"runs layer by layer, in fp32 only")


def compiled_spec(plan, loss_fn, optimizer, dataset, is_array=None):
    """(layers, loss, optimizer name, hyper, state, max_norm, post) for
    kernels.mlp_step.MLPSteps (and the cuda twin, whose state arrays pass ``is_array``
    instead of being NumPy arrays), or None when the step does not cover this training."""
    from ..kernels.activations import ELEMENTWISE
    is_array = is_array or (lambda a: isinstance(a, np.ndarray))
    if plan.chain is None or plan.dtype != np.float32 \
            or any(layer.activation not in ELEMENTWISE for layer in plan.chain):
        return None
    loss = loss_fn.compiled_kind()
    y = getattr(dataset, "arrays", (None, None))[1]
    if loss is None or (y is not None and y.dtype not in (np.int64, np.float32)) \
            or (loss == "cross_entropy" and y is not None and y.dtype != np.int64):
        return None
    optimizer_spec = optimizer.compiled_spec()
    if optimizer_spec is None or not all(is_array(a) for a in optimizer_spec[2]):
        return None
    chain = plan.chain
    layers = ([l.weight.data for l in chain], [l.bias.data if l.bias else None for l in chain],
              [l.weight.grad for l in chain], [l.bias.grad if l.bias else None for l in chain],
              [l.activation for l in chain],
              [l.params.get("negative_slope", 0.0) for l in chain])
    return (layers, loss) + optimizer_spec + (_post_specs(plan),)


def _post_specs(plan):
    """(batchnorms, dropouts, input_dropout) of kernels.mlp_step.MLPSteps from the layers."""
    from ..kernels.mlp_step import BatchNormSpec, DropoutSpec

    def batchnorm(bn):
        if bn is None:
            return None
        gamma, beta = (bn.weight, bn.bias) if bn.affine else (None, None)
        return BatchNormSpec(gamma and gamma.data, beta and beta.data, gamma and gamma.grad,
                             beta and beta.grad, bn.running_mean, bn.running_var, bn.eps,
                             bn.momentum, int(bn.num_batches_tracked))

    def dropout(layer):
        return None if layer is None else DropoutSpec(layer.p, layer.seed, layer.layer_id,
                                                      layer.step)
    return ([batchnorm(l.batchnorm) for l in plan.chain],
            [dropout(l.dropout) for l in plan.chain], dropout(plan.input_dropout))


class CompiledStep:
    """The step of ``steps`` as kernels.mlp_step.MLPSteps: k batches per compiled call.

    Array datasets are gathered inside the compiled call; other datasets (and arrays when
    not ``resident``) first fill a buffer of the call's batches with their gather_batch
    (one Python call per chunk)."""

    def __init__(self, plan, spec, optimizer, dataset, batch_size, resident=True):
        layers, loss, name, hyper, state, max_norm, post = spec
        self.optimizer, self.dataset, self.batch_size = optimizer, dataset, batch_size
        arrays = getattr(dataset, "arrays", None) if resident else None
        self._chunk = None if arrays is not None else _ChunkBuffer(dataset, batch_size)
        self.max_batches = None if arrays is not None else _ChunkBuffer.CHUNK_BATCHES
        src_x, src_y = arrays if arrays is not None else self._chunk.arrays()
        self._batchnorms = [l.batchnorm for l in plan.chain]
        self._dropouts = [plan.input_dropout] + [l.dropout for l in plan.chain]
        self.precision = plan.precision
        self._steps = self.make_steps((layers, plan.flat_data, plan.flat_grad, src_x, src_y,
                                       batch_size, loss, name, hyper, state), post, max_norm)

    def make_steps(self, args, post, max_norm):
        """The compiled steps object: MLPSteps(*args, post, max_norm, precision)."""
        from ..kernels.mlp_step import MLPSteps
        return MLPSteps(*args, post, max_norm, self.precision)

    def fill(self, order, first_batch, num_batches):
        """(order, first batch) to run: a dataset object's batches gathered into the chunk
        buffer first (resident arrays as they are)."""
        if self._chunk is None:
            return order, first_batch
        return self._chunk.fill(order, first_batch, num_batches), 0

    def run(self, order, first_batch, num_batches, lrs, sums):
        order, first_batch = self.fill(order, first_batch, num_batches)
        self._layers_to_step()
        steps, finite, failed_loss = self._steps.run(order, first_batch, num_batches, lrs,
                                                     self.optimizer.step_count, sums)
        self._step_to_layers(steps + (not finite))
        self.optimizer.step_count += steps
        return steps, finite, failed_loss

    def compute_gradients(self, index, mean_rows=None):
        index, _ = self.fill(index, 0, 1)
        self._layers_to_step()
        # mean_rows is passed on only when given: CudaStep inherits this, its steps take none
        loss, correct = self._steps.gradients(np.ascontiguousarray(index, dtype=np.int64),
                                              *(() if mean_rows is None else (mean_rows,)))
        self._step_to_layers(1)
        return loss / index.shape[0], correct

    def _layers_to_step(self):
        """The layers' counters (batches tracked, dropout steps) into the compiled step."""
        for l, bn in enumerate(self._batchnorms):
            if bn is not None:
                self._steps.tracked[l] = int(bn.num_batches_tracked)
        for i, layer in enumerate(self._dropouts):
            if layer is not None:
                self._steps.dropout_steps[i] = layer.step

    def _step_to_layers(self, forwards):
        """After ``forwards`` training forward passes: the counters back into the layers."""
        for l, bn in enumerate(self._batchnorms):
            if bn is not None:
                bn.num_batches_tracked[()] = self._steps.tracked[l]
        for layer in self._dropouts:
            if layer is not None:
                layer.step += forwards

    def apply_update(self, lr):
        self._steps.update(lr, self.optimizer.step_count + 1)
        self.optimizer.step_count += 1


class _ChunkBuffer:
    """The rows of up to CHUNK_BATCHES batches of a dataset object, gathered in order by
    its gather_batch, for the compiled step to read as an array dataset."""
    CHUNK_BATCHES = 64

    def __init__(self, dataset, batch_size):
        rows = self.CHUNK_BATCHES * batch_size
        self.dataset, self.batch_size = dataset, batch_size
        self.x = np.zeros((rows, dataset.num_features), np.float32)
        self.y = label_buffer(dataset, rows)
        self.y[:] = 0                    # valid rows (label 0) before the first fill
        self.in_order = np.arange(rows, dtype=np.int64)

    def arrays(self):
        return self.x, self.y

    def fill(self, order, first_batch, num_batches):
        """Gather the call's batches into the buffer; returns the order to read them in."""
        if num_batches > self.CHUNK_BATCHES:
            raise ValueError(f"a call over a dataset object takes at most "
                             f"{self.CHUNK_BATCHES} batches, got {num_batches}")
        start = first_batch * self.batch_size
        index = order[start:start + num_batches * self.batch_size]
        self.dataset.gather_batch(index, self.x[:index.shape[0]], self.y[:index.shape[0]])
        return self.in_order[:index.shape[0]]
