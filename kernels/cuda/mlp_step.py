"""Training steps of an MLP on the GPU: k batches per call, each step one fixed list of kernel
launches, captured once per batch size as a CUDA graph and replayed (the cuda backend). The
GPU twin of kernels/mlp_step.py: same formulas, same contract.

The MLP is a chain of L Linear layers: layer l has weight W_l (out_l, in_l), a bias b_l or
none, and an elementwise activation f_l (identity for the last layer, whose outputs are the
predictions). The dataset lives on the device: x as float32 (N, in_0), y as int64 labels (N,)
or float32 targets (N, out_L). A call uploads the dataset rows of its batches (``order``), a
table of the optimizer's scalars per step and the running sums, then runs per batch b:

    gather     h_0, y = x[rows], y[rows] for rows = order[b B : (b + 1) B]   b = progress[BATCH]
    forward    z_l = h_l @ W_l.T + b_l, h_{l+1} = f_l(z_l)    tiled GEMM, f in its epilogue;
                                                               z_l kept where f' needs it
                                                               (leaky_relu, gelu, gelu_tanh),
                                                               then f a pass
    loss       per row i: row_stats[i] = (loss_i, argmax == label), and dz_{L-1}
               cross-entropy: -log softmax(h_L)_i[y_i], dz = (softmax - onehot) / B
               MSE: sum_j (h_L - t)_ij^2 / D, dz = 2 (h_L - t) / (B D)   (labels as one-hot)
    backward   dW_l = dz_l.T @ h_l, db_l = sum_i dz_l[i]          GEMM, column sums
               dz_{l-1} = (dz_l @ W_l) * f'_{l-1}                 GEMM with f' in its epilogue,
                                                                  written with h_l (relu,
                                                                  sigmoid, tanh); else a pass
                                                                  on z_{l-1}
    check      sum of g^2 over every gradient, each thread's share in float32 (the cpu
               step's rule: NaN or inf when a g is, or when |g| > ~1.8e19 overflows its
               square), per block in float64
    close      one block sums row_stats and the blocks' squares in a fixed order; a batch
               whose loss and squares are finite adds its loss and correct rows to state and
               counts as applied, the first other one sets STOPPED and keeps its mean loss;
               scalars = table[b]; progress[BATCH] = b + 1
    update     SGD or Adam/AdamW over the flat parameter buffer with scalars; nothing
               once STOPPED is set

so neither a non-finite batch nor any later batch of the call changes the model or the
optimizer. The state comes back in one copy per call. Every argument is checked once per
batch size, when that size's launch list is built; from its second step on, the list runs
as a CUDA graph when the steps were given a graph device (kernels/cuda/graphs.py).
tests/cuda_cases.py checks the steps against the NumPy backend.
"""
import math
import warnings

import numpy as np
from numba import cuda, float32, float64

from .._checks import check_mlp_step, check_optimizer_state
from ..activations import DERIVATIVE, ELEMENTWISE
from ._device import ScratchBuffers, THREADS_PER_BLOCK, blocks_for, is_device_array
from .activations import _BACKWARD_KERNELS, _FORWARD_KERNELS
from .gemm import gemm_launches
from .graphs import CapturedGraph, Launch, check_launches, launch_all
from .linear import _bias_grad_kernel
from .losses import _CROSS_ENTROPY
from .optim import adam_update, sgd_update

CROSS_ENTROPY, MSE = "cross_entropy", "mse"
SGD, ADAM = "sgd", "adam"
BATCH = 0                                            # progress (int64)
LOSS_SUM, CORRECT_SUM, APPLIED, STOPPED, FAILED_LOSS, LAST_LOSS, LAST_CORRECT = range(7)
STATE_SIZE = 7                                       # state (float64)
SCALARS = 3        # per step: SGD (lr, first step, 0); Adam (lr / (1 - b1^t), sqrt(1 - b2^t),
                   # the AdamW decay factor 1 - lr wd, else 1)
CLOSE_THREADS = THREADS_PER_BLOCK                    # a power of 2
SQUARE_BLOCKS = 1024                                 # at most, for the sum of squares


# --- kernels -----------------------------------------------------------------------------------

@cuda.jit
def gather_rows_kernel(src, order, progress, batch_size, out):
    # out (rows, D) = src[order[b batch_size + i]] for i < rows, b = progress[BATCH]; src (N, D)
    rows, cols = out.shape
    first = progress[BATCH] * batch_size
    for e in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = e // cols
        j = e - i * cols
        out[i, j] = src[order[first + i], j]


@cuda.jit(device=True)
def _one_hot(labels, i, j):
    return 1.0 if j == labels[i] else 0.0


@cuda.jit(device=True)
def _label_hit(labels, i, best):
    return 1.0 if best == labels[i] else 0.0


@cuda.jit(device=True)
def _target_value(targets, i, j):
    return targets[i, j]


@cuda.jit(device=True)
def _no_hit(targets, i, best):
    return 0.0


def _squared_error_kernel(target_at, hit):
    @cuda.jit
    def kernel(pred, target, grad, row_stats):
        # pred, grad: (B, D); target (B, D), or labels (B,) read as one-hot;
        # row_stats[i] = (sum_j (pred_ij - t_ij)^2 / D, argmax_i == label_i or 0 for targets);
        # grad = 2 (pred - t) / (B D); one thread per row
        rows, cols = pred.shape
        scale = 2.0 / (rows * cols)
        for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
            total = 0.0
            best = 0
            for j in range(cols):
                d = float64(pred[i, j]) - target_at(target, i, j)
                grad[i, j] = scale * d
                total += d * d
                if pred[i, j] > pred[i, best]:
                    best = j
            row_stats[i, 0] = total / cols
            row_stats[i, 1] = hit(target, i, best)
    return kernel


SQUARED_ERROR = {"labels": _squared_error_kernel(_one_hot, _label_hit),
                 "targets": _squared_error_kernel(_target_value, _no_hit)}


@cuda.jit(device=True)
def _block_sum(cache, tid):
    # cache (threads, columns) in shared memory, threads a power of 2, filled: row 0 becomes
    # the column sums (a tree: a fixed order); every thread of the block calls it
    half = cache.shape[0] // 2
    while half > 0:
        if tid < half:
            for c in range(cache.shape[1]):
                cache[tid, c] += cache[tid + half, c]
        cuda.syncthreads()
        half //= 2


@cuda.jit
def square_sums_kernel(values, partials):
    # partials[block] = sum of values^2 (1-D) over the block's share: each thread's in
    # float32 (inf when a square overflows), the block's in float64; THREADS_PER_BLOCK threads
    cache = cuda.shared.array((THREADS_PER_BLOCK, 1), float64)
    tid = cuda.threadIdx.x
    lane = float32(0.0)
    for e in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        lane += values[e] * values[e]
    cache[tid, 0] = lane
    cuda.syncthreads()
    _block_sum(cache, tid)
    if tid == 0:
        partials[cuda.blockIdx.x] = cache[0, 0]


@cuda.jit
def close_batch_kernel(row_stats, square_partials, progress, state, table, scalars):
    # one block of CLOSE_THREADS: the batch's summed loss and correct rows (row_stats (rows,
    # 2)) and its gradients' squares (the partials), summed in a fixed order; the batch
    # applied, or the call stopped; this step's optimizer scalars
    sums = cuda.shared.array((CLOSE_THREADS, 3), float64)
    tid = cuda.threadIdx.x
    rows = row_stats.shape[0]
    for c in range(3):
        sums[tid, c] = 0.0
    for i in range(tid, rows, CLOSE_THREADS):
        sums[tid, 0] += row_stats[i, 0]
        sums[tid, 1] += row_stats[i, 1]
    for i in range(tid, square_partials.shape[0], CLOSE_THREADS):
        sums[tid, 2] += square_partials[i]
    cuda.syncthreads()
    _block_sum(sums, tid)
    if tid == 0:
        batch = progress[BATCH]
        loss = sums[0, 0]
        state[LAST_LOSS] = loss
        state[LAST_CORRECT] = sums[0, 1]
        if state[STOPPED] == 0:
            if math.isfinite(loss) and math.isfinite(sums[0, 2]):
                state[LOSS_SUM] += loss
                state[CORRECT_SUM] += sums[0, 1]
                state[APPLIED] += 1
            else:
                state[STOPPED] = 1
                state[FAILED_LOSS] = loss / rows
        for c in range(SCALARS):
            scalars[c] = table[batch, c]
        progress[BATCH] = batch + 1


@cuda.jit
def sgd_step_kernel(param, grad, buf, momentum, nesterov, weight_decay, scalars, state):
    # SGD (optim.sgd_update) with lr = scalars[0], first step = scalars[1]; none once stopped
    if state[STOPPED] != 0:
        return
    lr = scalars[0]
    first_step = scalars[1] != 0
    for e in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        sgd_update(param, grad, buf, e, lr, momentum, nesterov, weight_decay, first_step)


@cuda.jit
def adam_step_kernel(param, grad, exp_avg, exp_avg_sq, beta1, beta2, eps, weight_decay, scalars,
                     state):
    # Adam/AdamW (optim.adam_update) with scalars = (lr / (1 - b1^t), sqrt(1 - b2^t), decay
    # factor); none once stopped
    if state[STOPPED] != 0:
        return
    step_size, bias_correction2_sqrt, decay_factor = scalars[0], scalars[1], scalars[2]
    for e in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adam_update(param, grad, exp_avg, exp_avg_sq, e, step_size, bias_correction2_sqrt,
                    beta1, beta2, eps, weight_decay, decay_factor)


def optimizer_scalars(optimizer, hyper, lrs, first_step):
    """(len(lrs), SCALARS) float64: the scalars of steps t = first_step + 1, ... with learning
    rates lrs, written as optim.sgd_cuda / adam_cuda compute them."""
    table = np.zeros((len(lrs), SCALARS))
    for i, lr in enumerate(lrs):
        t, lr = first_step + 1 + i, float(lr)
        if optimizer == SGD:
            table[i, :2] = lr, t == 1
        else:
            beta1, beta2, _, weight_decay, decoupled = (float(h) for h in hyper)
            table[i] = (lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t),
                        1.0 - lr * weight_decay if decoupled else 1.0)
    return table


# --- the steps ---------------------------------------------------------------------------------

class CudaMLPSteps:
    """Training steps of one MLP on the dataset (src_x, src_y), batch_size rows, on the GPU.

    Arguments as ``kernels.mlp_step.MLPSteps``, with the parameters, gradients, flat buffers
    and optimizer state CUDA device arrays (float32, C-contiguous) and src_x, src_y host
    arrays, uploaded once (x as float32). ``graph_device``: a ``cuda.core`` Device to capture
    each batch size's step on (kernels/cuda/graphs.py), or None to launch kernel by kernel.
    """

    def __init__(self, layers, flat_data, flat_grad, src_x, src_y, batch_size, loss,
                 optimizer, hyper, state, graph_device=None):
        weights, biases, weight_grads, bias_grads, activations, slopes = layers
        self.batch_size, sizes = check_mlp_step(layers, flat_data, flat_grad, batch_size,
                                                ELEMENTWISE, _check_device_float32)
        if loss not in (CROSS_ENTROPY, MSE):
            raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
        self._loss, self._classes = loss, sizes[-1]
        self._optimizer, self._hyper = optimizer, tuple(hyper)
        state = check_optimizer_state(optimizer, self._hyper, state, flat_data,
                                      _check_device_float32)
        self._layers = (weights, biases, weight_grads, bias_grads, activations,
                        [float(s) for s in slopes])
        self._flat = (flat_data, flat_grad)
        self._src_x, self._src_y = self._upload_source(src_x, src_y, sizes)
        rows = self.batch_size
        self._hs = [cuda.device_array((rows, n), np.float32) for n in sizes]
        self._zs = [cuda.device_array((rows, n), np.float32) if DERIVATIVE[f] == "input"
                    else None for n, f in zip(sizes[1:], activations)]
        self._dzs = [cuda.device_array((rows, n), np.float32) for n in sizes[1:]]
        self._y = cuda.device_array((rows,) + tuple(self._src_y.shape[1:]), self._src_y.dtype)
        self._row_stats = cuda.device_array((rows, 2), np.float64)
        self._progress = cuda.device_array(1, np.int64)
        self._square_partials = cuda.device_array(
            min(blocks_for(flat_grad.shape[0]), SQUARE_BLOCKS), np.float64)
        self._state = cuda.device_array(STATE_SIZE, np.float64)
        self._scalars = cuda.device_array(SCALARS, np.float64)
        self._order = cuda.device_array(self._src_x.shape[0], np.int64)
        self._table = cuda.device_array((-(-self._src_x.shape[0] // rows), SCALARS), np.float64)
        self._scratch = ScratchBuffers()               # split-K work of this step's GEMMs
        self._update = self._update_launch(state)
        self._plans = {}                               # rows -> [launches, graph or None]
        self.graph_device, self.graph_error = graph_device, None

    @property
    def graphs_captured(self):
        """How many batch sizes run as a captured CUDA graph."""
        return sum(graph is not None for _, graph in self._plans.values())

    def load_rows(self, src_x, src_y):
        """The first len(src_x) rows of the device dataset become (src_x, src_y) (checked as
        at construction): a chunk of a dataset too large for the device, or not an array."""
        x, y = _check_source(src_x, src_y, self._src_x.shape[1], self._classes, self._loss,
                             self._src_y.dtype)
        if x.shape[0] > self._src_x.shape[0]:
            raise ValueError(f"src_x holds at most {self._src_x.shape[0]} rows here, got "
                             f"{x.shape[0]}")
        if x.shape[0]:
            self._src_x[:x.shape[0]].copy_to_device(x)
            self._src_y[:x.shape[0]].copy_to_device(y)

    def run(self, order, first_batch, num_batches, lrs, first_step, sums):
        """Steps first_batch .. first_batch + num_batches - 1 of the epoch ordered by
        ``order``, as ``MLPSteps.run``: (steps applied, finite, mean loss of the failing
        batch); sums (float64 [2]) gains each applied batch's summed loss and correct rows.
        After a non-finite batch, flat_grad holds that batch's gradients."""
        if not isinstance(order, np.ndarray) or order.dtype != np.int64 or order.ndim != 1:
            raise ValueError("order must be a 1-D int64 array of row numbers")
        lrs = np.ascontiguousarray(lrs, np.float64)
        rows = self.batch_size
        if lrs.shape != (num_batches,) or first_batch < 0 or num_batches < 1 or \
                (first_batch + num_batches - 1) * rows >= order.shape[0]:
            raise ValueError(f"lrs must hold one rate per step ({num_batches}) and the "
                             f"batches must lie in order ({order.shape[0]} rows)")
        if not isinstance(sums, np.ndarray) or sums.dtype != np.float64 or sums.shape != (2,):
            raise ValueError("sums must be a float64 array of shape (2,)")
        index = order[first_batch * rows:(first_batch + num_batches) * rows]
        self._start(index, optimizer_scalars(self._optimizer, self._hyper, lrs, first_step),
                    sums, stopped=False)
        for b in range(num_batches):
            self._step(min(rows, index.shape[0] - b * rows))
        state = self._state.copy_to_host()
        sums[0], sums[1] = state[LOSS_SUM], state[CORRECT_SUM]
        if not state[STOPPED]:
            return num_batches, True, 0.0
        applied = int(state[APPLIED])            # the failing batch again, for its gradients
        self._progress.copy_to_device(np.array([applied], np.int64))
        self._step(min(rows, index.shape[0] - applied * rows))
        return applied, False, float(state[FAILED_LOSS])

    def gradients(self, rows_index):
        """Forward, loss and backward on the dataset rows ``rows_index`` (int64, at most
        batch_size): (summed loss, correct rows); the gradients are left in flat_grad and
        nothing is updated."""
        if not isinstance(rows_index, np.ndarray) or rows_index.dtype != np.int64 or \
                rows_index.ndim != 1 or not 0 < rows_index.shape[0] <= self.batch_size:
            raise ValueError(f"rows_index must be 1-D int64 with 1 to {self.batch_size} rows")
        self._start(rows_index, np.zeros((1, SCALARS)), np.zeros(2), stopped=True)
        self._step(rows_index.shape[0])
        state = self._state.copy_to_host()
        return float(state[LAST_LOSS]), int(state[LAST_CORRECT])

    def update(self, lr, step):
        """The optimizer's update number ``step`` (from 1) with the gradients in flat_grad."""
        self._scalars.copy_to_device(optimizer_scalars(self._optimizer, self._hyper, [lr],
                                                       int(step) - 1)[0])
        self._state.copy_to_device(np.zeros(STATE_SIZE))
        self._update()

    def _upload_source(self, src_x, src_y, sizes):
        x, y = _check_source(src_x, src_y, sizes[0], sizes[-1], self._loss, None)
        return cuda.to_device(x), cuda.to_device(y)

    def _start(self, index, table, sums, stopped):
        """Upload a call's rows, optimizer scalars and starting state (one copy each)."""
        if index.shape[0] and (index.min() < 0 or index.max() >= self._src_x.shape[0]):
            raise ValueError(f"order must hold row numbers in [0, {self._src_x.shape[0]})")
        if index.shape[0] > self._order.shape[0] or table.shape[0] > self._table.shape[0]:
            self._order = cuda.device_array(max(index.shape[0], self._order.shape[0]), np.int64)
            self._table = cuda.device_array((max(table.shape[0], self._table.shape[0]),
                                             SCALARS), np.float64)
            self._plans.clear()                  # their launches read the old buffers
        self._order[:index.shape[0]].copy_to_device(np.ascontiguousarray(index))
        self._table[:table.shape[0]].copy_to_device(table)
        start = np.zeros(STATE_SIZE)
        start[LOSS_SUM], start[CORRECT_SUM], start[STOPPED] = sums[0], sums[1], stopped
        self._state.copy_to_device(start)
        self._progress.copy_to_device(np.zeros(1, np.int64))

    def _step(self, rows):
        """One step on a batch of ``rows`` rows: its launch list, built (and checked) at the
        first step of that size and captured as a graph after it, when a device is given."""
        plan = self._plans.get(rows)
        if plan is None:
            plan = self._plans[rows] = [self._launches(rows), None]
        if plan[1] is not None:
            plan[1].launch()
            return
        launch_all(plan[0])
        if self.graph_device is not None:         # kernels compiled and loaded by now
            plan[1] = self._capture(plan[0])

    def _capture(self, launches):
        try:
            return CapturedGraph(launches, self.graph_device)
        except Exception as error:                # an API this numba-cuda/cuda.core lacks
            self.graph_device = None
            self.graph_error = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            warnings.warn(f"mlpfast: the training step could not be captured as a CUDA graph "
                          f"({self.graph_error}); it launches its kernels one by one",
                          RuntimeWarning, stacklevel=4)
            return None

    def _launches(self, rows):
        """Every launch of one step on a batch of ``rows`` rows, arguments checked."""
        hs = [h[:rows] for h in self._hs]
        zs = [None if z is None else z[:rows] for z in self._zs]
        dzs = [dz[:rows] for dz in self._dzs]
        weights, biases, _, _, activations, slopes = self._layers
        launches = self._gather_launches(rows, hs[0])
        for l, f in enumerate(activations):
            kept = zs[l] is not None
            launches += gemm_launches(hs[l], weights[l], zs[l] if kept else hs[l + 1],
                                      trans_b=True, bias=biases[l],
                                      activation="identity" if kept else f,
                                      scratch=self._scratch)
            if kept:
                launches.append(_elementwise(_FORWARD_KERNELS[f], zs[l], hs[l + 1], slopes[l]))
        launches.append(self._loss_launch(hs[-1], rows, dzs[-1]))
        launches += self._backward_launches(hs, zs, dzs)
        partials = self._square_partials
        launches += [Launch(square_sums_kernel, partials.shape[0], THREADS_PER_BLOCK,
                            (self._flat[1], partials)),
                     Launch(close_batch_kernel, 1, CLOSE_THREADS,
                            (self._row_stats[:rows], partials, self._progress, self._state,
                             self._table, self._scalars)),
                     self._update]
        check_launches(launches)
        return launches

    def _gather_launches(self, rows, x):
        """x = src_x[rows of the batch], and the labels or targets (as (N, 1) and (B, 1)
        views for labels)."""
        src_y, y = self._src_y, self._y
        if src_y.ndim == 1:
            src_y, y = src_y.reshape(src_y.shape[0], 1), y.reshape(y.shape[0], 1)
        return [Launch(gather_rows_kernel, blocks_for(out.size), THREADS_PER_BLOCK,
                       (src, self._order, self._progress, self.batch_size, out))
                for src, out in ((self._src_x, x), (src_y, y[:rows]))]

    def _loss_launch(self, pred, rows, grad):
        y = self._y[:rows]
        if self._loss == CROSS_ENTROPY:
            kernel = _CROSS_ENTROPY[True]
        else:
            kernel = SQUARED_ERROR["labels" if y.ndim == 1 else "targets"]
        return Launch(kernel, blocks_for(rows), THREADS_PER_BLOCK,
                      (pred, y, grad, self._row_stats[:rows]))

    def _backward_launches(self, hs, zs, dzs):
        """dW_l, db_l for every layer from dzs[L - 1]; dz_{l-1} through the layers."""
        weights, _, weight_grads, bias_grads, activations, slopes = self._layers
        launches = []
        for l in range(len(weights) - 1, -1, -1):
            launches += gemm_launches(dzs[l], hs[l], weight_grads[l], trans_a=True,
                                      scratch=self._scratch)
            if bias_grads[l] is not None:
                launches.append(Launch(_bias_grad_kernel, blocks_for(bias_grads[l].shape[0]),
                                       THREADS_PER_BLOCK, (dzs[l], bias_grads[l])))
            if l == 0:
                break
            f, z = activations[l - 1], zs[l - 1]
            launches += gemm_launches(dzs[l], weights[l], dzs[l - 1],
                                      dact=f if z is None else "identity", y=hs[l],
                                      scratch=self._scratch)
            if z is not None:                         # f' needs z: a pass, in place
                launches.append(_elementwise(_BACKWARD_KERNELS[f], dzs[l - 1], z, hs[l],
                                             dzs[l - 1], slopes[l - 1]))
        return launches

    def _update_launch(self, state):
        data, grad = self._flat
        threads, blocks = THREADS_PER_BLOCK, blocks_for(data.shape[0])
        if self._optimizer == SGD:
            momentum, nesterov, weight_decay = self._hyper
            return Launch(sgd_step_kernel, blocks, threads,
                          (data, grad, state[0], float(momentum), bool(nesterov),
                           float(weight_decay), self._scalars, self._state))
        beta1, beta2, eps, weight_decay, decoupled = (float(h) for h in self._hyper)
        return Launch(adam_step_kernel, blocks, threads,
                      (data, grad, state[0], state[1], beta1, beta2, eps,
                       0.0 if decoupled else weight_decay, self._scalars, self._state))


def _elementwise(kernel, first, *args):
    """A launch of an elementwise activation kernel over ``first``'s elements."""
    return Launch(kernel, blocks_for(first.size), THREADS_PER_BLOCK, (first,) + args)


# --- argument checks (once per steps object) ----------------------------------------------------

def _check_device_float32(a, name, shape):
    if not is_device_array(a):
        raise TypeError(f"{name} must be a CUDA device array, got {type(a).__name__}")
    if a.dtype != np.float32 or tuple(a.shape) != tuple(shape) or not a.is_c_contiguous():
        raise ValueError(f"{name} must be a C-contiguous float32 device array of shape "
                         f"{tuple(shape)}, got {a.dtype} {tuple(a.shape)}")


def _check_source(src_x, src_y, features, outputs, loss, y_dtype):
    """(x as C-contiguous float32, y) for the device: x numeric (N, features); y int64 labels
    (N,) in [0, outputs), or for MSE float32 targets (N, outputs); ``y_dtype`` the one
    allowed (when the device dataset exists already) or None."""
    if not isinstance(src_x, np.ndarray) or src_x.ndim != 2 or src_x.shape[1] != features \
            or src_x.dtype.kind not in "fiub":
        raise ValueError(f"src_x must be a numeric array (N, {features}), got "
                         f"{getattr(src_x, 'dtype', type(src_x).__name__)} "
                         f"{getattr(src_x, 'shape', '')}")
    n = src_x.shape[0]
    labels = isinstance(src_y, np.ndarray) and src_y.dtype == np.int64 and src_y.shape == (n,)
    targets = loss == MSE and isinstance(src_y, np.ndarray) and src_y.dtype == np.float32 \
        and src_y.shape == (n, outputs)
    if not (labels or targets) or (y_dtype is not None and src_y.dtype != y_dtype):
        raise ValueError(f"src_y must be int64 labels of shape ({n},)"
                         + (f" or float32 targets of shape ({n}, {outputs})" if loss == MSE
                            else ""))
    if labels and n and (src_y.min() < 0 or src_y.max() >= outputs):
        raise ValueError(f"labels must lie in [0, {outputs}) for {outputs} outputs")
    return np.ascontiguousarray(src_x, np.float32), np.ascontiguousarray(src_y)
