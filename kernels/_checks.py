"""Argument checks shared by the kernel modules: clear errors before any write."""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(a, name, ndim=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")


def check_out(out, shape, dtype, name="out", inputs=()):
    """out must be a writeable array of the given shape/dtype that overlaps no input."""
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for other_name, other in inputs:
        if other is not None and np.shares_memory(out, other):
            raise ValueError(f"{name} must not overlap input {other_name}")


def check_gemm_args(a, b, out, trans_a, trans_b, beta, check_array=None, check_output=None):
    """Returns (m, n, k) for out(m,n) = op(a)(m,k) @ op(b)(k,n).

    check_array / check_output default to the NumPy checks; a device backend passes its own.
    """
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(a, "a", 2)
    check_array(b, "b", 2)
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k_b:
        raise ValueError(f"inner dimensions differ: op(a) is {m}x{k}, op(b) is {k_b}x{n} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    if out is None and beta != 0.0:
        raise ValueError("beta != 0 needs an out array to accumulate into")
    check_output(out, (m, n), a.dtype, inputs=(("a", a), ("b", b)))
    return m, n, k


def check_linear_args(x, w, b, activation, out, activations, check_array=None,
                      check_output=None):
    """x (B, in), w (out, in), b (out,) or None; check_array / check_output as in
    check_gemm_args."""
    check_array = check_array or check_float_array
    check_output = check_output or check_out
    check_array(x, "x", 2)
    check_array(w, "w", 2)
    if x.dtype != w.dtype:
        raise TypeError(f"x and w must have the same dtype, got {x.dtype} and {w.dtype}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[1]} "
                         f"(w is (out_features, in_features) = {w.shape})")
    if b is not None:
        check_array(b, "b", 1)
        if b.shape[0] != w.shape[0] or b.dtype != w.dtype:
            raise ValueError(f"b must be {w.dtype} of shape ({w.shape[0]},), "
                             f"got {b.dtype} {tuple(b.shape)}")
    if activation not in activations:
        raise ValueError(f"activation must be one of {activations}, got {activation!r}")
    check_output(out, (x.shape[0], w.shape[0]), x.dtype,
                 inputs=(("x", x), ("w", w), ("b", b)))


def check_same_shape(a, a_name, b, b_name):
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the shape of {a_name} {a.shape}, got {b.shape}")


def check_labels(labels, batch, num_classes, name="labels"):
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {labels.shape}")
    if batch and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{name} must lie in [0, {num_classes}), found {bad}")


# --- the compiled MLP steps (kernels/mlp_step.py and its cuda twin) ------------------------------

def check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_mlp_step(layers, flat_data, flat_grad, batch_size, allowed, check_float32):
    """(batch_size, layer sizes [in_0, out_0, ..., out_L]) of the compiled steps of a chain
    of Linear layers, layers = (weights, biases, weight_grads, bias_grads, activations, ...),
    after checking every array with ``check_float32(a, name, shape)`` (float32, C-contiguous,
    on the step's device) and every activation against ``allowed`` (the last: identity)."""
    weights, biases, weight_grads, bias_grads, activations = layers[:5]
    batch_size = check_positive(batch_size, "batch_size")
    if not weights:
        raise ValueError("an MLP needs at least one Linear layer")
    if activations[-1] != "identity":
        raise ValueError(f"the last layer must output predictions (identity), got "
                         f"{activations[-1]!r}")
    sizes = [weights[0].shape[1]]
    for l, (w, b, gw, gb, f) in enumerate(zip(weights, biases, weight_grads, bias_grads,
                                              activations)):
        if f not in allowed:
            raise ValueError(f"layer {l}: activation must be one of {allowed}, got {f!r}")
        check_float32(w, f"weights[{l}]", (w.shape[0], sizes[-1]))
        check_float32(gw, f"weight_grads[{l}]", w.shape)
        if (b is None) != (gb is None):
            raise ValueError(f"layer {l}: a bias needs a bias gradient and vice versa")
        if b is not None:
            check_float32(b, f"biases[{l}]", (w.shape[0],))
            check_float32(gb, f"bias_grads[{l}]", (w.shape[0],))
        sizes.append(w.shape[0])
    for name, a in (("flat_data", flat_data), ("flat_grad", flat_grad)):
        check_float32(a, name, (flat_grad.shape[0],))
    return batch_size, sizes


def check_optimizer_state(optimizer, hyper, state, flat_data, check_float32):
    """The state arrays of "sgd" (hyper (momentum, nesterov, weight_decay), state
    (momentum_buffer,)) or "adam" (hyper (beta1, beta2, eps, weight_decay, decoupled), state
    (exp_avg, exp_avg_sq)), checked like flat_data; SGD without momentum keeps none and gets
    (flat_data,), never read."""
    expected = {"sgd": (3, 1), "adam": (5, 2)}
    if optimizer not in expected:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    n_hyper, n_state = expected[optimizer]
    if len(hyper) != n_hyper or not all(np.isfinite(h) for h in hyper):
        raise ValueError(f"{optimizer} takes {n_hyper} finite hyperparameters, got {hyper!r}")
    if optimizer == "sgd" and not hyper[0]:
        state = (flat_data,)
    if len(state) != n_state:
        raise ValueError(f"{optimizer} keeps {n_state} state arrays, got {len(state)}")
    for i, a in enumerate(state):
        check_float32(a, f"state[{i}]", flat_data.shape)
    return tuple(state)
