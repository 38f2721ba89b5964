"""Linear layer kernels on the GPU: fused forward y = act(x @ w.T + b) and the bias gradient.

Shapes as in ``mlpfast.kernels.linear``: x (B, in), w (out, in), b (out,), y (B, out).

Versions:
    cuda   forward_cuda: one tiled GEMM (kernels/cuda/gemm.py) with w read transposed in
           place and bias + activation applied in its epilogue;
           grad_input_cuda: dz = (grad_y @ w) * f'(z) in one GEMM, f' (from the layer input
           x = f(z): relu [x > 0], sigmoid x (1 - x), tanh 1 - x^2) in its epilogue;
           bias_grad_cuda: one thread per column sums grad_y over the batch (a warp reads
           consecutive columns of a row, so loads are coalesced).
"""
from numba import cuda

from .. import _checks as shared_checks
from ..linear import check_grad_input_args
from ._device import blocks_for, check_device_float, check_device_out, THREADS_PER_BLOCK
from .gemm import gemm_tiled

# activations applied in the GEMM epilogue (leaky_relu needs a parameter, softmax a row)
FUSED_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "gelu", "gelu_tanh")


def forward_cuda(x, w, b, activation="identity", out=None):
    """y = act(x @ w.T + b) in one kernel."""
    shared_checks.check_linear_args(x, w, b, activation, out, FUSED_ACTIVATIONS,
                                    check_device_float, check_device_out)
    return gemm_tiled(x, w, out, trans_b=True, bias=b, activation=activation)


def grad_input_cuda(grad_y, w, activation="identity", x=None, out=None):
    """dz = (grad_y @ w) * f'(z), f' from the layer input x = f(z), in one kernel."""
    check_grad_input_args(grad_y, w, activation, x, out, check_device_float, check_device_out)
    return gemm_tiled(grad_y, w, out, dact=activation, y=x)


@cuda.jit
def _bias_grad_kernel(grad_y, out):
    # out_j = sum_i grad_y_ij, one thread per column j, summed in float64
    rows, cols = grad_y.shape
    for j in range(cuda.grid(1), cols, cuda.gridsize(1)):
        total = 0.0
        for i in range(rows):
            total += grad_y[i, j]
        out[j] = total


def bias_grad_cuda(grad_y, out=None):
    """grad_b_j = sum_i grad_y_ij."""
    check_device_float(grad_y, "grad_y", 2)
    check_device_out(out, (grad_y.shape[1],), grad_y.dtype, inputs=(("grad_y", grad_y),))
    if out is None:
        out = cuda.device_array(grad_y.shape[1], dtype=grad_y.dtype)
    if grad_y.shape[1]:
        _bias_grad_kernel[blocks_for(grad_y.shape[1]), THREADS_PER_BLOCK](grad_y, out)
    return out


VARIANTS = {"cuda": {"linear_forward": forward_cuda, "bias_grad": bias_grad_cuda,
                     "linear_grad_input": grad_input_cuda}}
FUSED = {"cuda": FUSED_ACTIVATIONS}
