"""Benchmarks: ``mlpfast bench`` and the helpers the pytest-benchmark suite in bench/ shares.

    mlpfast bench [--quick|--full] [--compare] [--config "SIZES bBATCH"]... [--json PATH]
                  [--baseline PATH] [--plot PATH]

What is measured (every case is validated against its NumPy reference before it is timed,
and called once more after validation so JIT compilation never lands in a timing):
    kernels   every variant but the reference of each op in ``OP_SPECS`` (read from the
              kernel registries, so a new variant shows up here by itself), on square and
              MLP shapes; GFLOP/s or GB/s; the peer is the NumPy reference of the same op,
              timed right after ours by a child process (``PeerProcess`` running
              ``serve_kernels``) without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, with NumPy's
              BLAS on the same threads
    train     one training step (forward, loss, backward, Adam) of the reference
              configurations on every backend; samples/s and GFLOP/s; the peer is a
              textbook NumPy MLP (peers.NumpyMLP) in a second child process, which imports
              nothing of mlpfast
    epochs    (--full) full MNIST epochs of each configuration per backend, through fit()
    compare   (--compare) full epochs of mlpfast (backend cpu), NumPy, PyTorch (default and
              tuned) and JAX, each in its own process (peers.py run by path: the NumPy,
              PyTorch and JAX peers import nothing of mlpfast) with the same data, sizes,
              batch, threads, warm-up and epochs; samples/s of the best and the median
              epoch and their % of the measured FMA peak (``mlp_train_flops`` per sample)

Reference configurations (real MNIST, Adam lr 1e-3, cross-entropy, ReLU): see ``CONFIGS``;
``--config`` (``parse_config``) replaces them in the step, epoch and compare tables.
A row's ``id`` (op, shape, variant, threads) is what ``--baseline`` matches on; a row whose
median and best times both grew by more than ``--threshold`` (default 25%) is flagged as a
regression and the command exits with status 1.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import platform
import re
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np

from .. import __version__
from ..backend import backends, get_num_threads, to_numpy
from .peers import (INFER_ROUNDS, WARMUP_BATCHES, blas_info, initial_weights,  # noqa: F401
                    mlp_train_flops, serve, threads_text, time_call, write_mnist,
                    write_weights)

# (sizes, batch) of the three reference configurations
CONFIGS = (((784, 256, 128, 10), 64), ((784, 256, 128, 10), 256), ((784, 1024, 1024, 10), 256))
INFER_BATCH = 1024                     # --compare's inference: batches of 1024 test images
PEER_PACKAGES = ("torch", "jax", "jaxlib", "threadpoolctl", "matplotlib")
# float32 tolerances atol + rtol * |ref| for kernels whose error does not grow with a size
TOL = {np.dtype(np.float32): (1e-5, 1e-4), np.dtype(np.float64): (1e-12, 1e-10)}


def config_name(sizes, batch):
    return f"{'-'.join(str(s) for s in sizes)} b{batch}"


MNIST_FEATURES, MNIST_CLASSES, MNIST_TRAIN_ROWS = 784, 10, 60000


def parse_config(text):
    """``--config``: "784-300-100-10 b32" (the form of a row's configuration; the space may
    be left out) -> ((784, 300, 100, 10), 32). An MLP trained on MNIST, so it takes 784
    inputs and gives 10 classes; every layer at least 1 wide, the batch 1 .. 60,000."""
    match = re.fullmatch(r"\s*(\d+(?:-\d+)+)\s*b(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes and a batch such as '784-256-128-10 b64', got {text!r}")
    sizes = tuple(int(v) for v in match.group(1).split("-"))
    batch = int(match.group(2))
    if sizes[0] != MNIST_FEATURES or sizes[-1] != MNIST_CLASSES:
        raise argparse.ArgumentTypeError(
            f"the race trains on MNIST: sizes must start at {MNIST_FEATURES} and end at "
            f"{MNIST_CLASSES}, got {match.group(1)} in {text!r}")
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"every layer size must be at least 1, got {text!r}")
    if not 1 <= batch <= MNIST_TRAIN_ROWS:
        raise argparse.ArgumentTypeError(
            f"the batch must be 1 .. {MNIST_TRAIN_ROWS:,} (MNIST's training rows), got "
            f"{batch} in {text!r}")
    return sizes, batch


def inference_config(configs):
    """The network of ``configs`` with the most FLOPs per sample, in batches of 1024: what
    ``--compare`` times inference on (the wide network for the reference configurations)."""
    sizes = max((sizes for sizes, _ in configs), key=lambda s: mlp_train_flops(s, 1))
    return tuple(sizes), INFER_BATCH


# --- machine header -------------------------------------------------------------------

def package_version(name):
    """Installed version of a distribution without importing it, or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def fp32_peak_gflops(threads, milliseconds=25, repeats=8):
    """Measured fp32 FMA peak of ``threads`` threads in GFLOP/s (csrc/peak.c), or None.
    The best of ``repeats`` runs: other processes can only make a run slower."""
    try:
        from .. import _peak
    except ImportError:
        return None
    gflops = max(_peak.lib.mlpf_fma_peak_gflops(int(threads), int(milliseconds))
                 for _ in range(repeats))
    return gflops if gflops > 0 else None


def fp32_peak_isa():
    try:
        from .. import _peak
    except ImportError:
        return None
    return _peak.ffi.string(_peak.lib.mlpf_fma_peak_isa()).decode()


def oversubscription_warning(threads, cpus):
    """A warning line when ``threads`` outnumber ``cpus``, else None."""
    if cpus and threads > cpus:
        return (f"warning: {threads} threads share {cpus} cpus, so these figures do not show "
                f"what {threads} cores do")
    return None


def machine_info(threads=None, peak=True):
    """Everything a reader needs to judge the numbers: CPU, ISA, threads, versions, BLAS."""
    from ..machine import available_cpus, cpu_features, cpu_model, isa_name
    threads = threads or get_num_threads()
    cores = available_cpus()
    features = cpu_features()
    isa = isa_name(features)
    info = {
        "cpu": cpu_model(), "machine": platform.machine(), "isa": isa,
        "cpu_features": " ".join(features), "cpus_available": cores, "threads": threads,
        "python": platform.python_version(), "mlpfast": __version__,
        "numpy": np.__version__, "numba": package_version("numba"),
        "cffi": package_version("cffi"), "blas": blas_info(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                         if k in os.environ},
        "backends": backends(),
    }
    for name in PEER_PACKAGES:
        info[name] = package_version(name)
    if peak:
        info["fp32_peak_gflops"] = fp32_peak_gflops(threads)
        info["fp32_peak_isa"] = fp32_peak_isa()
    return info


def format_machine(info):
    """The header lines printed above every report."""
    peers = ", ".join(f"{n} {info[n]}" for n in ("torch", "jax") if info.get(n)) or "none"
    peak = info.get("fp32_peak_gflops")
    peak_text = (f"{peak:.0f} GFLOP/s fp32 measured ({info.get('fp32_peak_isa')} FMA probe, "
                 f"{threads_text(info['threads'])})" if peak else
                 "not measured (mlpfast._peak is not built: pip install -e .)")
    env = info.get("openblas_env") or {}
    env_text = (" [this process: " + " ".join(f"{k}={v}" for k, v in env.items()) +
                "; the NumPy peer runs without them]") if env else ""
    lines = [
        f"cpu: {info['cpu']} ({info['machine']}), ISA {info['isa']}; "
        f"{info['cpus_available']} cpus available, {threads_text(info['threads'])} used",
        f"fp32 peak: {peak_text}",
        f"mlpfast {info['mlpfast']}, python {info['python']}, numpy {info['numpy']}, "
        f"numba {info['numba']}, cffi {info['cffi']}; peers: {peers}",
        f"numpy BLAS: {info['blas']}{env_text}",
        f"backends: {', '.join(info['backends'])}",
    ]
    warning = oversubscription_warning(info["threads"], info["cpus_available"])
    if warning:
        lines.insert(1, warning)
    return lines


# --- validation and timing ------------------------------------------------------------

def assert_close(actual, expected, atol, rtol, what):
    """Raise AssertionError unless |actual - expected| <= atol + rtol * |expected| everywhere."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, reference {expected.shape}")
    excess = (np.abs(actual.astype(np.float64) - expected)
              - (atol + rtol * np.abs(expected.astype(np.float64))))
    if excess.size and not excess.max() <= 0:        # also catches NaN
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)),
                             excess.shape)
        raise AssertionError(f"{what}: at {tuple(int(j) for j in i)} got {actual[i]!r}, "
                             f"reference {expected[i]!r} (atol {atol:g}, rtol {rtol:g})")


# --- kernel cases ---------------------------------------------------------------------

@dataclass
class OpSpec:
    """How to benchmark one op of a kernel registry.

    ``implementations()``  variant -> function for this op (read from the registry each time)
    ``inputs(shape, rng)`` a dict of fresh float32 arrays for one call
    ``call(fn, inputs)``   runs the op, returns the array to compare with the reference
    ``work(shape)``        (flops, bytes) of one call; flops 0 means "report GB/s"
    ``tolerance(shape)``   (atol, rtol) for float32
    """
    family: str
    op: str
    implementations: Callable[[], Dict[str, Callable]]
    inputs: Callable
    call: Callable
    work: Callable
    shapes: Dict[str, List[tuple]]
    tolerance: Callable = lambda shape: TOL[np.dtype(np.float32)]
    describe: Callable = lambda shape: "x".join(str(s) for s in shape)


def _registry_ops(module_name, op):
    """variant -> function for ``op`` over a registry of op tables (families but gemm)."""
    def implementations():
        import importlib
        module = importlib.import_module(f"mlpfast.kernels.{module_name}")
        return {v: table[op] for v, table in module.VARIANTS.items() if op in table}
    return implementations


def _linear_relu_implementations():
    from ..kernels import linear
    return {v: table["linear_forward"] for v, table in linear.VARIANTS.items()
            if "linear_forward" in table and "relu" in linear.FUSED.get(v, ())}


def _gemm_implementations():
    from ..kernels import gemm
    return dict(gemm.VARIANTS)


def _activation_implementations(direction):
    def implementations():
        from ..kernels import activations
        return {v: getattr(table["relu"], direction) for v, table in activations.VARIANTS.items()
                if "relu" in table}
    return implementations


def _uniform(rng, shape):
    return rng.uniform(-1.0, 1.0, shape).astype(np.float32)


# GEMM shapes (m, n, k, trans_a, trans_b); the MLP ones are the three GEMMs of one Linear
# layer (out, in) at batch B: forward y = x @ w.T (B, out, in, N, T); weight gradient
# grad_w = grad_y.T @ x (out, in, B, T, N); input gradient grad_x = grad_y @ w (B, in, out, N, N)
def mlp_gemm_shapes(n_in, n_out, batch):
    return [(batch, n_out, n_in, False, True), (n_out, n_in, batch, True, False),
            (batch, n_in, n_out, False, False)]


def _gemm_describe(shape):
    m, n, k, ta, tb = shape
    return f"{m}x{n}x{k} {'T' if ta else 'N'}{'T' if tb else 'N'}"


def _gemm_inputs(shape, rng):
    m, n, k, ta, tb = shape
    return {"a": _uniform(rng, (k, m) if ta else (m, k)),
            "b": _uniform(rng, (n, k) if tb else (k, n)),
            "out": np.empty((m, n), np.float32), "ta": ta, "tb": tb}


def _squares(sizes):
    return [(s, s, s, False, False) for s in sizes]


GEMM_QUICK = (_squares([512, 1024]) + mlp_gemm_shapes(784, 256, 64)[:1]
              + mlp_gemm_shapes(1024, 1024, 256))
GEMM_FULL = (_squares([128, 256, 512, 1024, 2048]) + mlp_gemm_shapes(784, 256, 64)
             + mlp_gemm_shapes(256, 128, 64) + mlp_gemm_shapes(784, 1024, 256)
             + mlp_gemm_shapes(1024, 1024, 256))
LINEAR_SHAPES = [(64, 784, 256), (256, 784, 1024), (256, 1024, 1024)]   # (batch, in, out)
ELEMENTWISE_SHAPES = [(64, 256), (256, 1024)]
ADAM_SIZES = [(235146,), (1863690,)]      # parameters of 784-256-128-10 and 784-1024-1024-10


def _adam_inputs(shape, rng):
    n = shape[0]
    return {"param": _uniform(rng, n), "grad": _uniform(rng, n),
            "m": _uniform(rng, n) * 0.1, "v": np.abs(_uniform(rng, n)) * 0.01}


def _adam_call(fn, d):
    fn(d["param"], d["grad"], d["m"], d["v"], step=10, lr=1e-3, beta1=0.9, beta2=0.999,
       eps=1e-8, weight_decay=0.0, decoupled=False)
    return d["param"]


def _relu_backward_inputs(shape, rng):
    x = _uniform(rng, shape)
    return {"g": _uniform(rng, shape), "x": x, "y": np.maximum(x, 0),
            "out": np.empty(shape, np.float32)}


def _cross_entropy_inputs(shape, rng):
    batch, classes = shape
    return {"logits": rng.standard_normal(shape).astype(np.float32) * 3,
            "labels": rng.integers(0, classes, batch), "grad": np.empty(shape, np.float32)}


def _cross_entropy_call(fn, d):
    loss, grad, _ = fn(d["logits"], d["labels"], d["grad"])
    return np.append(grad.ravel(), np.float32(loss))


OP_SPECS = [
    OpSpec("gemm", "sgemm", _gemm_implementations, _gemm_inputs,
           lambda fn, d: fn(d["a"], d["b"], d["out"], trans_a=d["ta"], trans_b=d["tb"]),
           lambda s: (2.0 * s[0] * s[1] * s[2], 4.0 * (s[0] * s[2] + s[2] * s[1] + s[0] * s[1])),
           {"quick": GEMM_QUICK, "full": GEMM_FULL},
           tolerance=lambda s: (1e-5 * s[2], 2e-5 * math.sqrt(s[2])), describe=_gemm_describe),
    OpSpec("linear", "linear_forward_relu", _linear_relu_implementations,
           lambda s, rng: {"x": _uniform(rng, s[:2]), "w": _uniform(rng, (s[2], s[1])),
                           "b": _uniform(rng, s[2]), "out": np.empty((s[0], s[2]), np.float32)},
           lambda fn, d: fn(d["x"], d["w"], d["b"], "relu", d["out"]),
           lambda s: (2.0 * s[0] * s[1] * s[2], 4.0 * (s[0] * s[1] + s[1] * s[2] + s[0] * s[2])),
           {"quick": LINEAR_SHAPES[1:2], "full": LINEAR_SHAPES},
           tolerance=lambda s: (1e-5 * s[1], 2e-5 * math.sqrt(s[1]))),
    OpSpec("activations", "relu_forward", _activation_implementations("forward"),
           lambda s, rng: {"x": _uniform(rng, s), "out": np.empty(s, np.float32)},
           lambda fn, d: fn(d["x"], d["out"]),
           lambda s: (0.0, 2 * 4.0 * s[0] * s[1]),          # read x, write y
           {"quick": ELEMENTWISE_SHAPES[1:], "full": ELEMENTWISE_SHAPES}),
    OpSpec("activations", "relu_backward", _activation_implementations("backward"),
           _relu_backward_inputs,
           lambda fn, d: fn(d["g"], d["x"], d["y"], d["out"]),
           lambda s: (0.0, 3 * 4.0 * s[0] * s[1]),          # read grad_y and x, write grad_x
           {"quick": ELEMENTWISE_SHAPES[1:], "full": ELEMENTWISE_SHAPES}),
    OpSpec("losses", "softmax_cross_entropy", _registry_ops("losses", "softmax_cross_entropy"),
           _cross_entropy_inputs, _cross_entropy_call,
           lambda s: (0.0, 2 * 4.0 * s[0] * s[1] + 8.0 * s[0]),  # read logits + labels, write grad
           {"quick": [(256, 10)], "full": [(64, 10), (256, 10)]}),
    OpSpec("optim", "adam", _registry_ops("optim", "adam"), _adam_inputs, _adam_call,
           lambda s: (0.0, 7 * 4.0 * s[0]),   # read param, grad, m, v; write param, m, v
           {"quick": ADAM_SIZES[1:], "full": ADAM_SIZES},
           tolerance=lambda s: (1e-6, 1e-5)),
]


def validate_op(spec, shape, fn, reference, seed=0):
    """Run ``fn`` and the reference on the same fresh inputs and compare (AssertionError)."""
    got = np.array(spec.call(fn, spec.inputs(shape, np.random.default_rng(seed))), copy=True)
    ref = np.array(spec.call(reference, spec.inputs(shape, np.random.default_rng(seed))),
                   copy=True)
    atol, rtol = spec.tolerance(shape)
    assert_close(got, ref, atol, rtol, f"{spec.op} {spec.describe(shape)}")


ROUNDS = 3     # turns per case: ours, the peer's, ours, the peer's, ...
# idle time before each turn: thread pools that just finished (OpenBLAS, OpenMP, the C
# GEMM's) spin on their cores for up to ~0.1 s and would slow down whoever runs next
PAUSE_S = 0.12


def time_side_by_side(calls, seconds, min_rounds, peer=None, request=None):
    """Time each of ``calls`` (name -> fn(), warmed up) and the peer's ``request`` in turns,
    ROUNDS times, each turn ``seconds / ROUNDS`` long after a pause of PAUSE_S, so that load
    from other processes falls on every side alike. Returns ({name: [seconds per call]}, the peer's reply with
    the times of all its turns merged, or None without a peer)."""
    times = {name: [] for name in calls}
    reply = None
    for _ in range(ROUNDS):
        for name, fn in calls.items():
            time.sleep(PAUSE_S)
            times[name] += time_call(fn, seconds / ROUNDS, max(1, -(-min_rounds // ROUNDS)))
        if peer is not None and (reply is None or "row" in reply):
            time.sleep(PAUSE_S)
            turn = peer.ask(dict(request, seconds=seconds / ROUNDS))
            if reply is not None and "row" in turn:
                turn["row"]["times"] = reply["row"]["times"] + turn["row"]["times"]
            reply = turn
    if reply is not None and "row" in reply:
        row = reply["row"]
        median = float(np.median(row["times"]))
        row["rate"] *= row["median_s"] / median
        row["median_s"], row["rounds"] = median, len(row["times"])
    return times, reply


def kernel_rows(mode, variants="fast", select=None, min_seconds=0.15, peer=None):
    """Validate, warm up and time every (op, shape, variant); a list of result rows.

    variants: "fast" = every variant but the NumPy reference, "reference" = only it.
    select(row_id) -> bool restricts the cases (``--only``).
    peer: a ``PeerProcess`` timing the same case in turns with ours (``time_side_by_side``).
    """
    rows = []
    threads = get_num_threads()
    for spec in OP_SPECS:
        implementations = spec.implementations()
        reference = implementations.get("numpy")
        chosen = {v: fn for v, fn in implementations.items()
                  if (v == "numpy") == (variants == "reference")}
        for shape in spec.shapes[mode]:
            case = f"{spec.family}.{spec.op} {spec.describe(shape)}"
            failed, calls = [], {}
            for variant, fn in chosen.items():
                row_id = f"{case} [{variant}] t{threads}"
                if select is not None and not select(row_id):
                    continue
                if variant != "numpy":
                    try:
                        validate_op(spec, shape, fn, reference)
                    except AssertionError as e:
                        failed.append(_failed_row(row_id, spec.family, spec.op,
                                                  spec.describe(shape), variant, threads, e))
                        continue
                inputs = spec.inputs(shape, np.random.default_rng(1))
                spec.call(fn, inputs)                      # warm-up, past any JIT compile
                calls[variant] = functools.partial(spec.call, fn, inputs)
            if not calls:
                rows += failed
                continue
            times, reply = time_side_by_side(calls, min_seconds, 3, peer,
                                             {"kernel": case, "mode": mode})
            case_rows = [_rate_row(f"{case} [{variant}] t{threads}", "kernel", spec.family,
                                   spec.op, spec.describe(shape), variant, threads, t,
                                   *spec.work(shape)) for variant, t in times.items()]
            if reply is not None:
                attach_peer(case_rows, reply, peer.name)
            rows += case_rows + failed
    return rows


def _failed_row(row_id, family, op, shape, variant, threads, error):
    """A case whose result disagreed with the reference: reported, never timed."""
    return {"id": row_id, "kind": "failed", "family": family, "op": op, "shape": shape,
            "variant": variant, "threads": threads, "error": str(error)}


def _rate_row(row_id, kind, family, op, shape, variant, threads, times, flops=0.0, nbytes=0.0,
              samples=None):
    median = float(np.median(times))
    row = {"id": row_id, "kind": kind, "family": family, "op": op, "shape": shape,
           "variant": variant, "threads": threads, "median_s": median,
           "min_s": float(np.min(times)), "rounds": len(times), "flops": flops,
           "times": [float(t) for t in times]}
    if flops:
        row["unit"], row["rate"] = "GFLOP/s", flops / median * 1e-9
    else:
        row["unit"], row["rate"] = "GB/s", nbytes / median * 1e-9
    if samples:
        row["samples_per_s"] = samples / median
    return row


# --- training cases -------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def mnist_train():
    """MNIST's training images (60000, 784) float32 and labels, loaded once per process."""
    from ..datasets import mnist
    (x, y), _ = mnist()
    return x, y


def mnist_batch(batch, seed=0):
    """A fixed batch of real MNIST training images and labels."""
    x, y = mnist_train()
    index = np.random.default_rng(seed).choice(len(x), batch, replace=False)
    return np.ascontiguousarray(x[index]), y[index]


def train_step_setup(backend, sizes, batch, seed=0):
    """A model, Adam and loss on ``backend`` plus one MNIST batch, trained by the step that
    ``fit`` runs (the backend's ``make_step``). Returns (model, step() -> the mean loss of
    one step on the batch; the gradients stay in the model's .grad)."""
    from ..datasets import as_dataset
    from ..losses import CrossEntropyLoss
    from ..nn import MLP
    from ..optim import Adam
    model = MLP(list(sizes), activation="relu", backend=backend, seed=seed)
    optimizer = Adam(model.parameters(), lr=1e-3)
    x, y = mnist_batch(batch, seed)
    train_step = model.backend.make_step(model.plan(), CrossEntropyLoss(), optimizer,
                                         as_dataset(model, x, y), batch)
    order, lrs, sums = np.arange(batch), np.full(1, optimizer.lr), np.zeros(2)
    model.train()

    def step():
        sums[:] = 0
        train_step.run(order, 0, 1, lrs, sums)
        return sums[0] / batch
    return model, step


def validate_train_step(backend, sizes, batch, steps=3):
    """A training step on ``backend`` against the numpy backend from the same weights: the
    loss and every gradient of the first step, then the losses of ``steps`` more Adam steps.
    (Parameters after Adam steps are not compared: Adam moves a weight by about lr whatever
    the size of its gradient, so rounding in a gradient near 0 can flip that move.)"""
    model, step = train_step_setup(backend, sizes, batch)
    ref_model, ref_step = train_step_setup("numpy", sizes, batch)
    assert_close(step(), ref_step(), 1e-5, 1e-4, f"{backend} loss")
    ref_grads = {name: to_numpy(p.grad) for name, p in ref_model.named_parameters()}
    for name, p in model.named_parameters():
        ref = ref_grads[name]
        scale = float(np.abs(ref).max()) or 1.0
        assert_close(to_numpy(p.grad), ref, 1e-4 * scale, 1e-3, f"{backend} gradient of {name}")
    losses = [(step(), ref_step()) for _ in range(steps)]
    assert_close([a for a, _ in losses], [b for _, b in losses], 1e-4, 1e-3,
                 f"{backend} losses of {steps} Adam steps")


def train_step_rows(backend_names, configs=CONFIGS, select=None, min_seconds=0.45, peer=None,
                    inputs=None):
    """Validate, warm up and time a training step per configuration and backend; ``peer``
    (a ``PeerProcess`` of the numpy step peer) times its textbook MLP step in turns with
    ours, on the same MNIST batch, which ``inputs`` (``PeerInputs``) hands over."""
    rows = []
    threads = get_num_threads()
    for sizes, batch in configs:
        config = config_name(sizes, batch)
        failed, calls = [], {}
        for name in backend_names:
            row_id = f"train.step {config} [{name}] t{threads}"
            if select is not None and not select(row_id):
                continue
            if name != "numpy":
                try:
                    validate_train_step(name, sizes, batch)
                except AssertionError as e:
                    failed.append(_failed_row(row_id, "train", "step", config, name, threads,
                                              e))
                    continue
            _, step = train_step_setup(name, sizes, batch)
            step()
            step()                                       # warm-up, past any JIT compile
            calls[name] = step
        if not calls:
            rows += failed
            continue
        request = None if peer is None else {"step": config, **inputs.batch(batch)}
        times, reply = time_side_by_side(calls, min_seconds, 6, peer, request)
        config_rows = [_rate_row(f"train.step {config} [{name}] t{threads}", "train", "train",
                                 "step", config, name, threads, t,
                                 mlp_train_flops(sizes, batch), samples=batch)
                       for name, t in times.items()]
        if reply is not None:
            attach_peer(config_rows, reply, peer.name)
        rows += config_rows + failed
    return rows


def epoch_rows(backend_names, configs=CONFIGS, epochs=1, select=None):
    """Full MNIST epochs through ``fit`` after a warm-up of a few dozen steps."""
    from ..losses import CrossEntropyLoss
    from ..nn import MLP
    from ..optim import Adam
    from ..train import fit
    x, y = mnist_train()
    rows = []
    threads = get_num_threads()
    for sizes, batch in configs:
        for name in backend_names:
            row_id = f"train.epoch {config_name(sizes, batch)} [{name}] t{threads}"
            if select is not None and not select(row_id):
                continue
            model = MLP(list(sizes), backend=name, seed=0)
            optimizer = Adam(model.parameters(), lr=1e-3)
            warm = WARMUP_BATCHES * batch + len(x) % batch
            fit(model, optimizer, CrossEntropyLoss(), x[:warm], y[:warm], epochs=1,
                batch_size=batch, seed=0, progress=False)
            history = fit(model, optimizer, CrossEntropyLoss(), x, y, epochs=epochs,
                          batch_size=batch, seed=1, progress=False)
            times = history["seconds"]
            rows.append(_rate_row(row_id, "epoch", "train", "epoch", config_name(sizes, batch),
                                  name, threads, times, mlp_train_flops(sizes, 1) * len(x),
                                  samples=len(x)))
            rows[-1]["loss"] = history["loss"][-1]
    return rows


# --- peers in child processes ---------------------------------------------------------

def peer_env(peer, threads, base=None):
    """The environment of a peer's child process (from ``base``, default ours): every thread
    pool sized ``threads``, and for the NumPy peer no OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
    (they slow OpenBLAS down)."""
    env = dict(os.environ if base is None else base)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "MLPFAST_NUM_THREADS"):
        env[name] = str(threads)
    if threads == 1:      # XLA's CPU thread pool otherwise follows the CPU affinity below
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + " --xla_cpu_multi_thread_eigen=false").strip()
    if peer == "numpy":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def _pin_cpus(threads):
    """In the child, before it starts: run on the first ``threads`` CPUs we may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])


PEERS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")


def peer_command(peer, threads, args):
    """The command line of ``peer`` (peers.py run by path, so the NumPy, PyTorch and JAX
    peers import nothing of mlpfast) with ``args``."""
    return [sys.executable, PEERS_SCRIPT, peer, "--threads", str(threads), *args]


# the NumPy peer of the kernel rows: it times mlpfast's own NumPy references, so it has to
# import mlpfast (``serve_kernels`` below)
KERNEL_PEER_COMMAND = [sys.executable, "-m", "mlpfast.benchmarks.harness", "--serve-kernels"]


def _child_options(peer, threads):
    """subprocess options of a peer's child: its environment and CPU affinity."""
    pin = (lambda: _pin_cpus(threads)) if hasattr(os, "sched_setaffinity") else None
    return dict(env=peer_env(peer, threads), preexec_fn=pin, text=True)


def _last_error(stderr):
    return (stderr.strip().splitlines() or ["no output"])[-1]


def run_peer(peer, args, threads, timeout=1800):
    """``peers.py PEER ARGS`` in its own process; its JSON result (a dict)."""
    proc = subprocess.run(peer_command(peer, threads, args), capture_output=True,
                          timeout=timeout, **_child_options(peer, threads))
    if proc.returncode != 0:
        return {"peer": peer, "skipped": f"failed: {_last_error(proc.stderr)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


class PeerProcess:
    """A peer that stays up and answers one JSON request per line: the NumPy peer that
    times one case per request, so ours and the peer's timings of a case are taken one
    right after the other (``command`` KERNEL_PEER_COMMAND for kernel requests, or
    ``peer_command("numpy", threads, ["--serve"])`` for training-step requests), or a
    training peer of ``--compare`` (``TrainingPeer``). ``ask(request)`` -> the reply dict
    ({"row": ...}, ... or {"skipped": why}); a peer silent for ``timeout`` seconds is
    stopped and skipped.

    The peer's stderr goes to a temporary file, not a pipe: a training peer stays up for
    a whole run, and one that wrote more than a pipe holds (64 KiB) would block on it.
    Its last line is the reason given when the peer exits."""

    def __init__(self, command, threads, name="numpy", timeout=1800):
        self.name, self.timeout = name, timeout
        self._stderr = tempfile.TemporaryFile("w+")
        self._unread = b""            # bytes of stdout read but not yet answered
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, **_child_options(name, threads))

    def ask(self, request):
        if self.proc.poll() is not None:
            return self._exited()
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:                    # it exited since poll()
            return self._exited()
        return self.reply()

    def reply(self):
        """The peer's next JSON line, or {"skipped": why} when it exits or stays silent.
        Reads the pipe itself (select, then os.read) rather than through a buffered file,
        whose buffer could hold a line that select does not see."""
        deadline = time.monotonic() + self.timeout
        stdout = self.proc.stdout.fileno()
        while b"\n" not in self._unread:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                self.proc.kill()
                self.proc.wait()
                return {"skipped": f"peer silent for {self.timeout} s, stopped"}
            chunk = os.read(stdout, 1 << 16)
            if not chunk:
                return self._exited()
            self._unread += chunk
        line, self._unread = self._unread.split(b"\n", 1)
        return json.loads(line)

    def _exited(self):
        self.proc.wait()
        self._stderr.seek(0)
        return {"skipped": f"peer exited: {_last_error(self._stderr.read())}"}

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TrainingPeer(PeerProcess):
    """``peers.py PEER --serve-epochs ARGS``: built and warmed up before the constructor
    returns (``started``: {"ready": true} or {"skipped": why}), then ``epoch(e)`` ->
    {"seconds", "loss"} and ``finish()`` -> its result (peers.EpochRun.result)."""

    def __init__(self, peer, args, threads):
        super().__init__(peer_command(peer, threads, [*args, "--serve-epochs"]), threads, peer)
        self.started = self.reply()

    def epoch(self, epoch):
        return self.ask({"epoch": epoch})

    def finish(self):
        return self.ask({"finish": True})


def answer_kernel(request):
    """{"info": true} -> {"blas": ...}; {"kernel": "gemm.sgemm 512x512x512 NN", "mode":
    "quick", "seconds": s} -> {"row": ...}: the NumPy reference of that case timed for
    about s seconds, like one turn of mlpfast's kernel rows."""
    if "info" in request:
        return {"blas": blas_info()}
    case = request["kernel"]
    rows = kernel_rows(request["mode"], variants="reference", min_seconds=request["seconds"],
                       select=lambda row_id: row_id.split(" [")[0] == case)
    if not rows:
        raise ValueError(f"no kernel case {case!r} in mode {request['mode']!r}")
    return {"row": rows[0]}


def serve_kernels(stdin, stdout):
    """``python -m mlpfast.benchmarks.harness --serve-kernels``: answer kernel requests."""
    with limit_blas_threads(get_num_threads()):
        serve(stdin, stdout, answer_kernel)


class PeerInputs:
    """The .npy files the peers read, written once per run into a temporary folder:
    ``mnist()`` and ``weights(sizes)`` -> a folder (peers.py --data, --weights),
    ``batch(batch)`` -> {"x": path, "y": path} (the batch of ``mnist_batch``)."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="mlpfast-peers-")
        self._written = {}

    def _once(self, name, write):
        path = os.path.join(self._tmp.name, name)
        if name not in self._written:
            self._written[name] = write(path)
        return self._written[name]

    def mnist(self):
        from ..datasets import mnist

        def write(path):
            write_mnist(path, *mnist())
            return path
        return self._once("mnist", write)

    def weights(self, sizes, seed=0):
        def write(path):
            write_weights(path, initial_weights(sizes, seed))
            return path
        return self._once(f"weights-{'-'.join(map(str, sizes))}-s{seed}", write)

    def batch(self, batch, seed=0):
        def write(path):
            files = {"x": path + "-x.npy", "y": path + "-y.npy"}
            for name, array in zip(("x", "y"), mnist_batch(batch, seed)):
                np.save(files[name], array)
            return files
        return self._once(f"batch-{batch}-s{seed}", write)

    def close(self):
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def attach_peer(rows, reply, peer_name):
    """Put the peer's rate next to each timed row; ratio = ours / peer (>1: we are faster)."""
    peer_row = reply.get("row")
    for row in rows:
        if "rate" not in row:
            continue
        if peer_row is None:
            row["peer_error"] = reply.get("skipped", "no reply")
            continue
        row["peer"], row["peer_rate"] = peer_name, peer_row["rate"]
        row["ratio"] = row["rate"] / peer_row["rate"]


# --- report ---------------------------------------------------------------------------

def format_table(rows, peak=None):
    """Rows as a fixed-width table: what, shape, variant, rate, % of peak, peer, ratio."""
    lines = [f"{'benchmark':<28} {'shape':<22} {'variant':<8} {'median':>9} {'rate':>16} "
             f"{'%peak':>6} {'peer rate':>16} {'ratio':>6}"]
    for r in rows:
        what = f"{r['family']}.{r['op']}" if r["family"] != "train" else f"train {r['op']}"
        if "error" in r:
            lines.append(f"{what:<28} {r['shape']:<22} {r['variant']:<8} NOT TIMED, differs "
                         f"from the reference: {r['error']}")
            continue
        rate = f"{r['rate']:,.1f} {r['unit']}"
        if "samples_per_s" in r:
            rate = f"{r['samples_per_s']:,.0f} samples/s"
        pct = f"{100 * r['rate'] / peak:.0f}%" if peak and r["unit"] == "GFLOP/s" else ""
        peer = ratio = ""
        if "peer_rate" in r:
            peer_value = r["peer_rate"]
            if "samples_per_s" in r:
                peer_value *= r["samples_per_s"] / r["rate"]   # same unit as the rate column
                peer = f"{peer_value:,.0f} {r['peer']}"
            else:
                peer = f"{peer_value:,.1f} {r['peer']}"
            ratio = f"{r['ratio']:.2f}x"
        lines.append(f"{what:<28} {r['shape']:<22} {r['variant']:<8} "
                     f"{_format_seconds(r['median_s']):>9} {rate:>16} {pct:>6} {peer:>16} "
                     f"{ratio:>6}")
    return lines


def _format_seconds(s):
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def compare_with_baseline(rows, baseline, threshold):
    """Lines describing each row whose median and best times both grew by more than
    ``threshold`` (a fraction) over its baseline, and the number of such regressions."""
    old = {r["id"]: r for r in baseline.get("results", [])}
    lines, regressions, matched = [], 0, 0
    for row in rows:
        base = old.get(row["id"])
        if base is None or "median_s" not in row or "median_s" not in base:
            continue
        matched += 1
        # both the median and the best call must have moved: load from other processes
        # raises medians, and rarely spoils every single call of a row
        best, base_best = row.get("min_s", row["median_s"]), base.get("min_s", base["median_s"])
        ratios = (row["median_s"] / base["median_s"], best / base_best)
        vs = f"{_format_seconds(row['median_s'])} vs {_format_seconds(base['median_s'])} baseline"
        if min(ratios) - 1.0 > threshold:
            regressions += 1
            lines.append(f"REGRESSION {row['id']}: {vs} (+{100 * (min(ratios) - 1):.0f}%)")
        elif max(ratios) - 1.0 < -threshold:
            lines.append(f"faster     {row['id']}: {vs} ({100 * (max(ratios) - 1):.0f}%)")
    lines.append(f"baseline: {matched} rows matched, {regressions} regressions beyond "
                 f"+{100 * threshold:.0f}%")
    return lines, regressions


def write_plot(rows, path, peak=None):
    """A PNG of GFLOP/s against problem size (GFLOP per call), one line per variant."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'mlpfast[plot]'") from None
    rows = [r for r in rows if r.get("unit") == "GFLOP/s" and r["kind"] == "kernel"]
    ops = sorted({(r["family"], r["op"]) for r in rows})
    if not ops:
        raise ValueError("--plot: no kernel GFLOP/s results to plot (see --only)")
    fig, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 4.5), squeeze=False)
    for ax, (family, op) in zip(axes[0], ops):
        mine = [r for r in rows if (r["family"], r["op"]) == (family, op)]
        for variant in sorted({r["variant"] for r in mine}):
            pts = sorted((r["flops"] * 1e-9, r["rate"]) for r in mine if r["variant"] == variant)
            ax.plot(*zip(*pts), "o-", label=variant)
        peer = sorted({(r["flops"] * 1e-9, r["peer_rate"], r["peer"]) for r in mine
                       if "peer_rate" in r})
        if peer:
            ax.plot([p[0] for p in peer], [p[1] for p in peer], "s--", color="gray",
                    label=f"{peer[0][2]} (peer)")
        if peak:
            ax.axhline(peak, color="red", lw=0.8, ls=":", label=f"fp32 peak {peak:.0f}")
        ax.set_xscale("log")
        ax.set_xlabel("GFLOP per call")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{family}.{op}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------

def add_arguments(parser):
    from ..argtypes import positive as _positive
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="a curated run, under 2 minutes (the default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="every shape, and full MNIST epochs per backend (several minutes)")
    parser.set_defaults(mode="quick")
    parser.add_argument("--compare", action="store_true",
                        help="train the reference configurations with mlpfast, NumPy, PyTorch "
                             "and JAX side by side (samples/s, ratios, test accuracy), then "
                             "time inference of the wide one against PyTorch and JAX")
    parser.add_argument("--epochs", type=_positive(int), default=3,
                        help="timed epochs per run of --compare and --full (default 3; "
                             "--compare reports the best and the median)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--baseline", metavar="PATH",
                        help="a --json file to compare against; rows whose median and best "
                         "times both grew beyond --threshold are flagged (exit status 1)")
    parser.add_argument("--threshold", type=_positive(float), default=0.25,
                        help="relative slowdown flagged by --baseline (default 0.25 = 25%%)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of GFLOP/s against size")
    parser.add_argument("--only", metavar="TEXT",
                        help="run only the rows whose id contains TEXT (e.g. 'gemm', 'b256')")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip the NumPy peer processes of the kernel and step tables")
    parser.add_argument("--threads", type=_positive(int), default=None,
                        help="threads for mlpfast and every peer (default: MLPFAST_NUM_THREADS "
                             "or all cores)")
    parser.add_argument("--config", metavar="SIZES bBATCH", type=parse_config,
                        action="append", dest="configs",
                        help="train this MNIST network instead of the reference "
                             "configurations in the step, --full epoch and --compare tables, "
                             "e.g. '784-300-100-10 b32' (repeat for several); --compare then "
                             "times inference on the one with the most FLOPs per sample")


def _select(only):
    return None if not only else (lambda row_id: only in row_id)


TRAIN_PEERS = ("mlpfast", "numpy", "torch", "torch-tuned", "jax", "mlpfast-bf16", "torch-bf16")
BF16_PEERS = ("mlpfast-bf16", "torch-bf16")      # mixed precision: compared with each other


def _log_result(log, result, what):
    log(f"  {result['peer']:<11} {what}: " +
        (f"{result['samples_per_s']:,.0f} samples/s" if "samples_per_s" in result
         else f"skipped: {result['skipped']}"))


TURN_PAUSE_SECONDS = 0.2    # between two peers' turns: the last one's threads stop spinning


def compare_training(configs, threads, epochs, log, inputs):
    """Full epochs of every peer of TRAIN_PEERS on every configuration, each peer in its own
    process (``TrainingPeer``), from the MNIST and initial weights that ``inputs``
    (``PeerInputs``) wrote. The peers of a configuration start and warm up one after the
    other, then train in turns, one epoch each, the first of each round moving on by one
    peer: a slow spell of a shared machine falls on all of them, not on one peer's epochs.
    Each result gets peer, config, sizes and, when it ran, samples/s of its best and median
    epoch (``best_samples_per_s``, ``samples_per_s``)."""
    results = []
    for sizes, batch in configs:
        args = ["--data", inputs.mnist(), "--weights", inputs.weights(sizes),
                "--batch", str(batch)]
        config = {"config": config_name(sizes, batch), "sizes": list(sizes)}
        with contextlib.ExitStack() as stack:
            answers, running = {}, {}
            for peer in TRAIN_PEERS:
                started = stack.enter_context(TrainingPeer(peer, args, threads))
                if "skipped" in started.started:
                    answers[peer] = started.started
                else:
                    running[peer] = started
            for epoch in range(epochs):
                order = list(running)
                first = epoch % len(order) if order else 0
                for peer in order[first:] + order[:first]:
                    time.sleep(TURN_PAUSE_SECONDS)
                    reply = running[peer].epoch(epoch)
                    if "skipped" in reply:
                        answers[peer] = reply
                        del running[peer]
            for peer, training in running.items():
                answers[peer] = training.finish()
        for peer in TRAIN_PEERS:
            result = dict(answers[peer], peer=peer, **config)
            if "epoch_seconds" in result:
                seconds = result["epoch_seconds"]
                result["best_samples_per_s"] = result["samples"] / min(seconds)
                result["samples_per_s"] = result["samples"] / float(np.median(seconds))
            _log_result(log, result, result["config"])
            results.append(result)
    return results


def better_torch(results):
    """Of one configuration's results, the PyTorch run (plain or tuned) with the higher
    median samples/s: what the table calls "PyTorch"; None when neither ran."""
    ran = [r for r in results if r["peer"] in ("torch", "torch-tuned") and "samples_per_s" in r]
    return max(ran, key=lambda r: r["samples_per_s"], default=None)


def compare_inference(threads, log, inputs, config):
    """Predicted classes of the MNIST test set by mlpfast, PyTorch and JAX, each in its own
    process, from the same weights: samples/s and agreement with mlpfast's classes."""
    sizes, batch = config
    args = ["--infer", "--data", inputs.mnist(), "--weights", inputs.weights(sizes),
            "--batch", str(batch)]
    results = []
    for peer in ("mlpfast", "torch", "jax"):
        result = run_peer(peer, args, threads)
        result.update(peer=peer, config=config_name(sizes, batch))
        _log_result(log, result, f"inference {result['config']}")
        results.append(result)
    ours = results[0].get("agree_with")
    for r in results:
        classes = r.pop("agree_with", None)
        if ours is not None and classes is not None:
            r["agreement"] = float(np.mean(np.array(classes) == np.array(ours)))
    return results


def format_inference(results):
    lines = [f"{'configuration':<22} {'peer':<8} {'samples/s':>10} {'s/pass':>8} "
             f"{'agree':>7} {'mlpfast/peer':>12}  notes"]
    ours = results[0].get("samples_per_s") if results else None
    for r in results:
        if "samples_per_s" not in r:
            lines.append(f"{r['config']:<22} {r['peer']:<8} {'-':>10} {'-':>8} {'-':>7} "
                         f"{'-':>12}  skipped: {r['skipped']}")
            continue
        ratio = f"{ours / r['samples_per_s']:.2f}x" if ours else "-"
        agree = f"{100 * r['agreement']:.2f}%" if "agreement" in r else "-"
        lines.append(f"{r['config']:<22} {r['peer']:<8} {r['samples_per_s']:>10,.0f} "
                     f"{r['seconds']:>8.3f} {agree:>7} {ratio:>12}  {r.get('notes', '')}")
    return lines


def percent_of_peak(samples_per_s, sizes, peak):
    """Training samples/s as a % of ``peak`` GFLOP/s, by ``mlp_train_flops`` per sample."""
    return 100 * samples_per_s * mlp_train_flops(sizes, 1) * 1e-9 / peak


COMPARE_HEADER = (f"{'configuration':<22} {'peer':<11} {'best/s':>9} {'%peak':>5} "
                  f"{'median/s':>9} {'%peak':>5} {'last loss':>9} {'test acc':>8} "
                  f"{'x best':>7} {'x median':>8}  notes")


def _compare_line(r, ours, peak):
    """One row of the --compare table; ``ours`` is the mlpfast result of its configuration."""
    if "samples_per_s" not in r:
        return (f"{r['config']:<22} {r['peer']:<11} {'-':>9} {'-':>5} {'-':>9} {'-':>5} "
                f"{'-':>9} {'-':>8} {'-':>7} {'-':>8}  skipped: {r['skipped']}")
    best, median = r["best_samples_per_s"], r["samples_per_s"]
    pct = [f"{percent_of_peak(v, r['sizes'], peak):.0f}%" if peak else "-"
           for v in (best, median)]
    ratios = ["-", "-"]
    if ours:
        ratios = [f"{ours['best_samples_per_s'] / best:.2f}x",
                  f"{ours['samples_per_s'] / median:.2f}x"]
    notes = [r.get("notes", "")] + r.get("threadpools", [])
    if not r["peer"].startswith("mlpfast") and r.get("mlpfast_modules"):
        notes.append(f"NOT CLEAN: imported {len(r['mlpfast_modules'])} mlpfast modules")
    return (f"{r['config']:<22} {r['peer']:<11} {best:>9,.0f} {pct[0]:>5} {median:>9,.0f} "
            f"{pct[1]:>5} {r['loss']:>9.4f} {100 * r['test_accuracy']:>7.2f}% {ratios[0]:>7} "
            f"{ratios[1]:>8}  {'; '.join(n for n in notes if n)}")


def format_compare(results, peak=None):
    """The --compare table: per configuration a row per peer and, after the fp32 PyTorch
    runs, a "PyTorch" row repeating the better of them (``better_torch``). best/s and
    median/s: samples/s of the best and the median timed epoch; %peak: of ``peak`` (GFLOP/s,
    the measured FMA peak, fp32 FLOPs); x best, x median: mlpfast's rate over the peer's
    (for torch-bf16: mlpfast-bf16's); then a line of mlpfast-bf16's median over the others'."""
    lines = [COMPARE_HEADER]
    for config in dict.fromkeys(r["config"] for r in results):
        rows = [r for r in results if r["config"] == config]
        ran = {r["peer"]: r for r in rows if "samples_per_s" in r}
        better = better_torch(rows)
        if better is not None:
            last_torch = max(i for i, r in enumerate(rows)
                             if r["peer"] in ("torch", "torch-tuned"))
            rows.insert(last_torch + 1, dict(better, peer="PyTorch", threadpools=[],
                                             notes=f"= {better['peer']}, the better median"))
            ran["PyTorch"] = rows[last_torch + 1]
        for r in rows:
            ours = ran.get("mlpfast-bf16" if r["peer"] == "torch-bf16" else "mlpfast")
            lines.append(_compare_line(r, None if r["peer"] == "mlpfast-bf16" else ours, peak))
        if "mlpfast-bf16" in ran:
            bf16 = ran["mlpfast-bf16"]["samples_per_s"]
            versus = [f"{bf16 / ran[p]['samples_per_s']:.2f}x {name}" for p, name in
                      (("mlpfast", "mlpfast fp32"), ("jax", "JAX fp32"),
                       ("PyTorch", "PyTorch fp32"), ("torch-bf16", "PyTorch autocast bf16"))
                      if p in ran]
            lines.append(f"{config:<22} mlpfast-bf16 median: {', '.join(versus)}")
    return lines


def epoch_over_step(results, step_rows):
    """{configuration: mlpfast's median epoch over its train step}: samples/s of the median
    --compare epoch (all of MNIST through ``fit``, the cpu backend) over those of the cpu
    row of the step table (one batch, hot, timed again and again), i.e. the share of the
    step's speed that the epoch loop keeps. Configurations missing either are left out."""
    steps = {r["shape"]: r["samples_per_s"] for r in step_rows
             if (r.get("kind"), r.get("op"), r.get("variant")) == ("train", "step", "cpu")
             and "samples_per_s" in r}
    return {r["config"]: r["samples_per_s"] / steps[r["config"]] for r in results
            if r["peer"] == "mlpfast" and "samples_per_s" in r and r["config"] in steps}


def compare_rows(results, threads, peak=None):
    """--compare results as rows that --json / --baseline understand: rate and samples_per_s
    of the median epoch, best_samples_per_s, and % of ``peak`` (kept as peak_gflops) for
    both."""
    rows = []
    for r in results:
        if "samples_per_s" not in r:
            continue
        rows.append({"id": f"compare {r['config']} [{r['peer']}] t{threads}",
                     "kind": "compare", "family": "train", "op": "epoch",
                     "shape": r["config"], "variant": r["peer"], "threads": threads,
                     "median_s": float(np.median(r["epoch_seconds"])),
                     "min_s": min(r["epoch_seconds"]), "times": r["epoch_seconds"],
                     "rate": r["samples_per_s"], "unit": "samples/s",
                     "samples_per_s": r["samples_per_s"],
                     "best_samples_per_s": r["best_samples_per_s"],
                     "flops": mlp_train_flops(r["sizes"], r["samples"]),
                     "loss": r["loss"], "test_accuracy": r["test_accuracy"],
                     "notes": r.get("notes", ""), "threadpools": r.get("threadpools", [])})
        if peak:
            rows[-1]["peak_gflops"] = peak
            rows[-1]["peak_percent_best"] = percent_of_peak(r["best_samples_per_s"],
                                                            r["sizes"], peak)
            rows[-1]["peak_percent_median"] = percent_of_peak(r["samples_per_s"], r["sizes"],
                                                              peak)
    return rows


def inference_rows(results, threads):
    """compare_inference results as rows that --json / --baseline understand."""
    return [{"id": f"inference {r['config']} [{r['peer']}] t{threads}", "kind": "compare",
             "family": "inference", "op": "predict", "shape": r["config"],
             "variant": r["peer"], "threads": threads, "median_s": r["seconds"],
             "min_s": r["seconds"], "rate": r["samples_per_s"], "unit": "samples/s",
             "samples_per_s": r["samples_per_s"]}
            for r in results if "samples_per_s" in r]


def _print(text=""):
    print(text, flush=True)


def limit_blas_threads(threads):
    """A context in which NumPy's BLAS (used by the numpy backend and the references) runs
    ``threads`` threads, like every other kernel; no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def run(args, out=_print):
    """``mlpfast bench``: returns the exit status (1 when --baseline flags a regression)."""
    with limit_blas_threads(get_num_threads()):
        return _run(args, out)


def _run(args, out):
    baseline = None
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
        if not isinstance(baseline, dict) or "results" not in baseline:
            raise ValueError(f"--baseline {args.baseline} is not a `mlpfast bench --json` file")
    started = time.perf_counter()
    threads = get_num_threads()
    select = _select(args.only)
    info = machine_info(threads)
    out(f"mlpfast bench --{args.mode}{' --compare' if args.compare else ''}")
    for line in format_machine(info):
        out("  " + line)

    configs = tuple(args.configs or CONFIGS)
    with PeerInputs() as inputs:
        rows = _kernel_and_step_rows(args, threads, select, info, inputs, out, configs)
        if args.mode == "full":
            rows += epoch_rows(backends(), configs, epochs=args.epochs, select=select)
        out("")
        if rows:
            out("rate: median of repeated calls; peer: NumPy in its own process (textbook MLP "
                "for train rows); ratio = mlpfast / peer, >1 is faster")
            for line in format_table(rows, info.get("fp32_peak_gflops")):
                out(line)
            for error in sorted({r["peer_error"] for r in rows if "peer_error" in r}):
                out(f"NumPy peer: {error}")
        else:
            out(f"no benchmark matched --only {args.only!r}")
        if args.compare:
            rows += _compare(args, threads, select, info.get("fp32_peak_gflops"), inputs,
                             out, configs, step_rows=rows)
    out(f"total time {time.perf_counter() - started:.0f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "mode": args.mode, "results": rows}, f, indent=1)
        out(f"wrote {args.json}")
    if args.plot:
        write_plot(rows, args.plot, info.get("fp32_peak_gflops"))
        out(f"wrote {args.plot}")
    if baseline is not None:
        lines, regressions = compare_with_baseline(rows, baseline, args.threshold)
        for line in lines:
            out(line)
        if regressions:
            return 1
    failed = [r["id"] for r in rows if "error" in r]
    if failed:
        out(f"{len(failed)} case(s) differ from the reference and were not timed: "
            f"{', '.join(failed)}")
        return 1
    return 0


def _kernel_and_step_rows(args, threads, select, info, inputs, out, configs):
    """The kernel and training-step rows (the step's of ``configs``), each timed in turns
    with its NumPy peer (two processes: mlpfast's NumPy references for kernels, the
    textbook MLP for steps)."""
    if args.no_peers:
        return (kernel_rows(args.mode, select=select)
                + train_step_rows(backends(), configs, select=select))
    with PeerProcess(KERNEL_PEER_COMMAND, threads) as kernel_peer, \
            PeerProcess(peer_command("numpy", threads, ["--serve"]), threads) as step_peer:
        for key, peer in (("numpy_peer_blas", kernel_peer), ("numpy_step_peer_blas", step_peer)):
            reply = peer.ask({"info": True})
            info[key] = reply.get("blas", reply.get("skipped"))
        out(f"  NumPy peers (own processes, OPENBLAS_CORETYPE/L2_SIZE unset): kernels "
            f"{info['numpy_peer_blas']}; training step {info['numpy_step_peer_blas']}")
        return (kernel_rows(args.mode, select=select, peer=kernel_peer)
                + train_step_rows(backends(), configs, select=select, peer=step_peer,
                                  inputs=inputs))


def _compare(args, threads, select, peak, inputs, out, configs=CONFIGS, step_rows=()):
    """--compare of ``configs``: the training table, mlpfast's epochs against its step
    (``step_rows``: the step table's rows), then inference (``inference_config``); their
    rows for --json."""
    infer = inference_config(configs)
    configs = [c for c in configs if select is None or select(config_name(*c))]
    out("")
    if configs:
        rows = _compare_training(args, threads, peak, inputs, out, configs, step_rows)
    else:
        rows = []
        out(f"--compare: no training configuration matched --only {args.only!r}")
    if select is None or select("inference " + config_name(*infer)):
        out("")
        out("inference: classes of the 10,000 MNIST test images (argmax of the logits), "
            f"median of {INFER_ROUNDS} passes; {threads_text(threads)}; each peer in its own "
            "process")
        inference = compare_inference(threads, out, inputs, infer)
        out("")
        for line in format_inference(inference):
            out(line)
        rows += inference_rows(inference, threads)
    return rows


def _peak_after_the_epochs(threads, peak, out):
    """The FMA probe again after the epochs; the higher of it and ``peak`` (the probe at
    the start). A slow spell of the machine during one probe reads the peak low and every
    %peak high; nothing makes a probe read high (bench/README.md, "Columns")."""
    after = fp32_peak_gflops(threads)
    if after is None or peak is None:
        return peak
    out(f"fp32 peak measured again after the epochs: {after:.0f} GFLOP/s (at the start: "
        f"{peak:.0f}); %peak below is of {max(peak, after):.0f}")
    return max(peak, after)


def _compare_training(args, threads, peak, inputs, out, configs, step_rows):
    """--compare's training table of ``configs`` (at least one) and its rows."""
    out(f"training on MNIST: {args.epochs} timed full epochs after a warm-up of "
        f"{WARMUP_BATCHES} batches + one tail batch; {threads_text(threads)}; each peer in its own "
        f"process (NumPy, PyTorch, JAX: nothing of mlpfast imported)")
    results = compare_training(configs, threads, args.epochs, out, inputs)
    peak = _peak_after_the_epochs(threads, peak, out)
    out("")
    out("best/s, median/s: samples/s of the best and the median epoch; %peak: of the fp32 FMA "
        "peak (the higher of the probes before and after the epochs), at " +
        ", ".join(f"{mlp_train_flops(s, 1) / 1e6:.3f} MFLOP per sample "
                  f"for {'-'.join(map(str, s))}" for s in dict.fromkeys(s for s, _ in configs)) +
        " (bench/README.md); x best, x median: mlpfast / peer, best over best and median over "
        "median; torch: default Adam; torch-tuned: fused Adam, denormals flushed; PyTorch: "
        "the better of the two by median; mlpfast-bf16: precision bf16; torch-bf16: "
        "torch-tuned under CPU autocast to bf16, its x columns mlpfast-bf16 / torch-bf16")
    for line in format_compare(results, peak):
        out(line)
    rows = compare_rows(results, threads, peak)
    kept = epoch_over_step(results, step_rows)
    if kept:
        out("epoch loop: mlpfast's median epoch over its cpu train step above (samples/s): " +
            ", ".join(f"{config} {share:.2f}" for config, share in kept.items()))
        for row in rows:
            if row["variant"] == "mlpfast" and row["shape"] in kept:
                row["epoch_over_step"] = kept[row["shape"]]
    return rows


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve-kernels"]:
        sys.exit("usage: python -m mlpfast.benchmarks.harness --serve-kernels "
                 "(the NumPy kernel peer that `mlpfast bench` starts)")
    serve_kernels(sys.stdin, sys.stdout)
