"""GPU check: every CUDA kernel against its NumPy reference at real sizes, then the speed of
the CUDA GEMM and of training epochs on backend "cuda" next to cuBLAS, PyTorch and JAX, and a
``mlpfast train mnist`` run on cuda next to cpu; a last table says which bars of issue 16 hold.

    python bench/gpu_check.py           # on a machine with an NVIDIA GPU, in under 5 minutes
    python bench/gpu_check.py --mnist DIR   # MNIST's four IDX files (raw or .gz) in DIR
    python bench/gpu_check.py --quick   # tiny sizes: a smoke test of this script, e.g. under
                                        # NUMBA_ENABLE_CUDASIM=1 (its timings mean nothing)

Prints one table: one row per validated kernel (worst error as a fraction of its tolerance,
so <= 1 passes), then the timed rows, then the bars. The cuda training step is validated as
a kernel is: its CUDA graph replays against the same kernels launched one by one (bit for
bit) and against the layer-by-layer step; its timing row says whether the graph path ran. Each check runs on its own: one that
fails prints an ERROR row and the others still run. Exit status: 0 when every kernel matches
and no check failed, 1 otherwise, 2 when no GPU is usable.

Tolerances: elementwise ops ``atol + rtol * |ref|`` per dtype against a float64 reference;
GEMMs the forward-error bound |C - ref| <= 2 k eps (|op(A)| @ |op(B)|) + tiny, which any
correct summation order meets and a wrong element or a missed tile edge does not.

Timings: medians of several synchronized calls after warm-up (past JIT compilation). The
GEMM peer is cuBLAS through CuPy (``cupy.matmul``) or else PyTorch (``torch.matmul``), both
with TF32 off; every GEMM tile is also timed at the MLP's shapes (with its registers and
local memory per thread), to check ``choose_config``. Epochs: MNIST 784-512-256-10 at batch
128 and the wide 784-1024-1024-10 at batch 1024, Adam, from the same initial weights and
batches in each framework, the data on the GPU for the peers: PyTorch eager, and JAX with the
whole step jitted and its buffers donated; all fp32 (TF32 off). mlpfast's epoch is one call
of ``mf.fit`` (``mlpfast_epoch_seconds``): whatever step ``fit`` uses on cuda is what is
timed. MNIST comes from ``--mnist DIR``, else the local cache
(``mlpfast.datasets.mnist(download=False)``), else random data of MNIST's shape (the row says
which); the ``mlpfast train mnist`` rows need the real data (without it they say skipped).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

os.environ["CUPY_TF32"] = "0"           # before CuPy is imported: plain fp32 cuBLAS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mlpfast as mf  # noqa: E402
from mlpfast.kernels import activations as ref_activations  # noqa: E402
from mlpfast.kernels import losses as ref_losses  # noqa: E402
from mlpfast.kernels import optim as ref_optim  # noqa: E402

# epochs: (name, samples or None for all, input features, hidden sizes, batch size)
SIZES = {
    "full": dict(gemm=(1031, 1543, 517), gemm_time=4096, linear=(512, 784, 1000),
                 elementwise=(4096, 1000), logits=[(8192, 10), (1024, 1000)], flat=10_000_000,
                 gather=(60000, 784, 4096), repeats=10,
                 epochs=[("MNIST b128", None, 784, (512, 256), 128),
                         ("wide b1024", None, 784, (1024, 1024), 1024)],
                 tile_shapes=[(4096, 4096, 4096), (1024, 1024, 784), (1024, 784, 1024),
                              (128, 512, 784), (512, 784, 128), (1024, 10, 1024),
                              (10, 1024, 1024)],
                 step_batches=200, train_epochs=10,
                 # choose_config's picks where a GPU refused launches: the float64 128x64
                 # tile's shared memory, a grid of more than 65535 row blocks
                 chosen_gemms=[(2048, 1024, 1024, np.float64), (1_100_000, 10, 32, np.float32)]),
    "quick": dict(gemm=(37, 29, 19), gemm_time=32, linear=(9, 12, 7), elementwise=(13, 9),
                  logits=[(9, 10)], flat=1000, gather=(50, 12, 16), repeats=2,
                  epochs=[("MNIST-like b16", 48, 20, (8,), 16),
                          ("wide-like b32", 64, 20, (12, 12), 32)],
                  tile_shapes=[], step_batches=4, train_epochs=None,
                  chosen_gemms=[(45, 10, 8, np.float64), (70, 10, 8, np.float32)]),
}
TOL = {np.dtype(np.float32): (1e-5, 2e-4), np.dtype(np.float64): (1e-12, 1e-10)}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PARAMS = {"leaky_relu": {"negative_slope": 0.07}}
# issue 16's bars: name -> (what is measured, at least)
BARS = {"sgemm": ("sgemm 4096^3 vs cuBLAS fp32", 0.6),
        "MNIST b128 torch": ("MNIST b128 epoch vs PyTorch eager", 6.0),
        "MNIST b128 jax": ("MNIST b128 epoch vs JAX jit", 4.0),
        "wide b1024 torch": ("wide b1024 epoch vs PyTorch eager", 2.0),
        "wide b1024 jax": ("wide b1024 epoch vs JAX jit", 1.2)}
TRAIN_GAP = 0.3        # points of test accuracy between cuda and cpu, at most


class Table:
    """Rows of (item, shape, dtype, error/tol, mlpfast, peer, status), printed once at the end,
    and the measured ratios of the bars."""
    HEADER = ("item", "shape", "dtype", "err/tol", "mlpfast", "peer", "status")

    def __init__(self):
        self.rows, self.failures, self.measured = [], 0, {}

    def check(self, item, shape, dtype, ratio):
        ok = bool(np.isfinite(ratio) and ratio <= 1.0)
        self.failures += not ok
        self.rows.append((item, shape, str(np.dtype(dtype)) if dtype else "", f"{ratio:.3g}",
                          "", "", "ok" if ok else "MISMATCH"))
        return ok

    def timing(self, item, shape, dtype, ours, peer, status):
        self.rows.append((item, shape, str(np.dtype(dtype)) if dtype else "", "", ours, peer,
                          status))

    def error(self, check, error):
        self.failures += 1
        words = " ".join(str(error).split())[:160]
        self.rows.append((check, "", "", "", "", "", f"ERROR {type(error).__name__}: {words}"))

    def print(self, title):
        widths = [max(len(str(r[i])) for r in self.rows + [self.HEADER])
                  for i in range(len(self.HEADER))]
        line = "  ".join("-" * w for w in widths)
        print(title)
        print(line)
        for row in [self.HEADER] + self.rows:
            print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
        print(line)

    def print_bars(self):
        """Each bar of issue 16: measured, needed, and whether it holds."""
        print("bars (issue 16)")
        lines = [("0 mismatches, no failed check", f"{self.failures} failures", "",
                  "holds" if not self.failures else "FAILS")]
        for key, (what, needed) in BARS.items():
            value = self.measured.get(key)
            lines.append((what, "not measured" if value is None else f"{value:.2f}x",
                          f">= {needed}x", "" if value is None else
                          ("holds" if value >= needed else "FAILS")))
        gap = self.measured.get("train gap")
        lines.append(("train mnist: cuda test accuracy - cpu", "not measured" if gap is None
                      else f"{gap:+.2f} points", f"within {TRAIN_GAP}",
                      "" if gap is None else ("holds" if abs(gap) <= TRAIN_GAP else "FAILS")))
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        for line in lines:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def error_ratio(actual, expected, dtype, tol=None):
    """max over elements of |actual - expected| / (atol + rtol |expected|)."""
    atol, rtol = tol or TOL[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != np.shape(expected):
        return float("inf")
    if actual.size == 0:
        return 0.0
    return float((np.abs(actual - expected) / (atol + rtol * np.abs(expected))).max())


def gemm_error_ratio(c, a, b, dtype):
    """|C - A@B| against 2 k eps (|A| @ |B|): a and b are float64 op(A), op(B) on the host."""
    k = a.shape[1]
    bound = 2 * max(k, 1) * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b)) + 1e-30
    return float((np.abs(c.astype(np.float64) - a @ b) / bound).max())


def dev(a):
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a))


def synchronize():
    from numba import cuda
    cuda.synchronize()


def median_seconds(fn, sync, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- validation ----------------------------------------------------------------------------

def check_gemm(table, sizes, rng):
    from mlpfast.kernels.cuda import gemm
    m, n, k = sizes["gemm"]
    for dtype in DTYPES:
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
                c = gemm.VARIANTS["cuda"](dev(a), dev(b), trans_a=trans_a, trans_b=trans_b)
                op_a = (a.T if trans_a else a).astype(np.float64)
                op_b = (b.T if trans_b else b).astype(np.float64)
                name = f"gemm {'T' if trans_a else 'N'}{'T' if trans_b else 'N'}"
                table.check(name, f"{m}x{n}x{k}", dtype,
                            gemm_error_ratio(c.copy_to_host(), op_a, op_b, dtype))
    for rows, cols, depth, dtype in sizes["chosen_gemms"]:
        a = rng.standard_normal((rows, depth)).astype(dtype)
        b = rng.standard_normal((depth, cols)).astype(dtype)
        c = gemm.VARIANTS["cuda"](dev(a), dev(b))
        table.check("gemm NN, the tile choose_config picks", f"{rows}x{cols}x{depth}",
                    np.dtype(dtype), gemm_error_ratio(c.copy_to_host(), a.astype(np.float64),
                                                      b.astype(np.float64), np.dtype(dtype)))
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    expected = 0.5 * (a.astype(np.float64) @ b) - 2.0 * c0
    bound = np.finfo(np.float32).eps * (2 * k * 0.5 * (np.abs(a).astype(np.float64)
                                                          @ np.abs(b)) + 4 * np.abs(c0))
    for tile, splits in [(tile, 1) for tile in gemm.TILES] + [(gemm.TILES[0], 3)]:
        out = dev(c0)
        gemm.gemm_tiled(dev(a), dev(b), out, alpha=0.5, beta=-2.0, tile=tile, splits=splits)
        ratio = float((np.abs(out.copy_to_host() - expected) / (bound + 1e-30)).max())
        table.check(f"gemm tile {'x'.join(map(str, tile))}, split-K {splits}, alpha, beta",
                    f"{m}x{n}x{k}", np.float32, ratio)


def check_linear(table, sizes, rng):
    from mlpfast.kernels.cuda import linear
    batch, n_in, n_out = sizes["linear"]
    for dtype in DTYPES:
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
        b = rng.standard_normal(n_out).astype(dtype)
        z = x.astype(np.float64) @ w.T.astype(np.float64) + b
        for activation in linear.FUSED["cuda"]:
            y = linear.VARIANTS["cuda"]["linear_forward"](dev(x), dev(w), dev(b), activation)
            expected = ref_activations.REFERENCE[activation].forward(z.copy())
            # the GEMM's rounding, carried through the activation (|f'| <= 1.13 for all)
            gemm_bound = 2 * n_in * np.finfo(dtype).eps * (np.abs(x) @ np.abs(w).T + np.abs(b))
            atol, rtol = TOL[dtype]
            table.check(f"linear_forward {activation}", f"{batch}x{n_in}->{n_out}", dtype,
                        error_ratio(y.copy_to_host(), expected, dtype,
                                    tol=(atol + 1.13 * gemm_bound.max(), rtol)))
        g = rng.standard_normal((batch, n_out)).astype(dtype)
        for activation in ("relu", "sigmoid", "tanh"):        # dz = (g @ w) * f'(z), one GEMM
            x_in = ref_activations.REFERENCE[activation].forward(
                rng.standard_normal((batch, n_in))).astype(dtype)     # the layer input f(z)
            dz = linear.VARIANTS["cuda"]["linear_grad_input"](dev(g), dev(w), activation,
                                                              dev(x_in))
            expected = ref_activations.REFERENCE[activation].backward(
                g.astype(np.float64) @ w, x_in.astype(np.float64), x_in.astype(np.float64))
            gemm_bound = 2 * n_out * np.finfo(dtype).eps * (np.abs(g) @ np.abs(w))
            atol, rtol = TOL[dtype]
            table.check(f"linear_grad_input {activation}'", f"{batch}x{n_out}->{n_in}", dtype,
                        error_ratio(dz.copy_to_host(), expected, dtype,
                                    tol=(atol + gemm_bound.max(), rtol)))
        out = linear.VARIANTS["cuda"]["bias_grad"](dev(g))
        table.check("bias_grad", f"{batch}x{n_out}", dtype,
                    error_ratio(out.copy_to_host(), g.astype(np.float64).sum(axis=0), dtype,
                                tol=(TOL[dtype][0] * batch, TOL[dtype][1])))


def check_activations(table, sizes, rng):
    from mlpfast.kernels.cuda import activations
    shape = sizes["elementwise"]
    for name in ref_activations.NAMES:
        params = PARAMS.get(name, {})
        ref, fast = ref_activations.REFERENCE[name], activations.VARIANTS["cuda"][name]
        for dtype in DTYPES:
            x = (3 * rng.standard_normal(shape)).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            x_dev = dev(x)
            y = fast.forward(x_dev, **params)
            y_ref = ref.forward(x.astype(np.float64), **params)
            dx = fast.backward(dev(g), x_dev, y, **params)
            dx_ref = ref.backward(g.astype(np.float64), x.astype(np.float64), y_ref, **params)
            ratio = max(error_ratio(y.copy_to_host(), y_ref, dtype),
                        error_ratio(dx.copy_to_host(), dx_ref, dtype))
            table.check(f"{name} forward+backward", "x".join(map(str, shape)), dtype, ratio)


def check_losses(table, sizes, rng):
    from mlpfast.kernels.cuda import losses
    ops = losses.VARIANTS["cuda"]
    for shape in sizes["logits"]:
        for dtype in DTYPES:
            logits = (4 * rng.standard_normal(shape)).astype(dtype)
            labels = rng.integers(0, shape[1], shape[0])
            loss_ref, grad_ref, correct_ref = ref_losses.softmax_cross_entropy_ref(
                logits.astype(np.float64), labels)
            loss, grad, correct = ops["softmax_cross_entropy"](dev(logits), labels)
            loss_only = ops["softmax_cross_entropy_forward"](dev(logits), labels)
            ratio = max(error_ratio(grad.copy_to_host(), grad_ref, dtype),
                        error_ratio([loss, loss_only], [loss_ref, loss_ref], dtype),
                        0.0 if correct == correct_ref else float("inf"))
            table.check("softmax_cross_entropy (+grad, correct)", f"{shape[0]}x{shape[1]}",
                        dtype, ratio)
    shape = sizes["elementwise"]
    for dtype in DTYPES:
        pred = rng.standard_normal(shape).astype(dtype)
        target = rng.standard_normal(shape).astype(dtype)
        loss = ops["mse"](dev(pred), dev(target))
        grad = ops["mse_backward"](dev(pred), dev(target))
        ratio = max(error_ratio([loss], [ref_losses.mse_ref(pred, target)], np.float64),
                    error_ratio(grad.copy_to_host(),
                                ref_losses.mse_backward_ref(pred.astype(np.float64), target),
                                dtype))
        table.check("mse + mse_backward", "x".join(map(str, shape)), dtype, ratio)


def check_optimizers(table, sizes, rng):
    from mlpfast.kernels.cuda import optim
    size = sizes["flat"]
    cases = [("sgd momentum nesterov wd", "sgd",
              dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
             ("adam wd", "adam", dict(lr=1e-3, weight_decay=1e-2)),
             ("adamw", "adam", dict(lr=1e-3, weight_decay=1e-2, decoupled=True))]
    for label, op, hyper in cases:
        for dtype in DTYPES:
            param = rng.standard_normal(size).astype(dtype)
            state = [np.zeros(size, dtype) for _ in range(1 if op == "sgd" else 2)]
            on_device = [dev(param)] + [dev(s) for s in state]
            for step in range(1, 4):
                grad = rng.standard_normal(size).astype(dtype)
                when = dict(first_step=step == 1) if op == "sgd" else dict(step=step)
                getattr(ref_optim, f"{op}_ref")(param, grad, *state, **hyper, **when)
                optim.VARIANTS["cuda"][op](on_device[0], dev(grad), *on_device[1:],
                                           **hyper, **when)
            ratio = max(error_ratio(d.copy_to_host(), h, dtype)
                        for d, h in zip(on_device, [param] + state))
            table.check(f"{label}, 3 steps", f"{size:,}", dtype, ratio)


def check_gather(table, sizes, rng):
    from mlpfast.kernels.cuda import data
    rows, cols, batch = sizes["gather"]
    src = rng.integers(0, 256, (rows, cols)).astype(np.uint8)
    labels = rng.integers(0, 10, rows)
    index = rng.integers(0, rows, batch)
    out = data.VARIANTS["cuda"]["gather"](dev(src), index, dev(np.empty((batch, cols),
                                                                        np.float32)))
    out_labels = data.VARIANTS["cuda"]["gather"](dev(labels), index,
                                                 dev(np.empty(batch, np.int64)))
    exact = (np.array_equal(out.copy_to_host(), src[index].astype(np.float32))
             and np.array_equal(out_labels.copy_to_host(), labels[index]))
    table.check("gather uint8->float32 rows, int64 labels", f"{batch} of {rows}x{cols}", None,
                0.0 if exact else float("inf"))


def step_variants(layer_sizes, x, y, batch_size):
    """{label: (model, step)} from the same initial weights: the cuda step with CUDA graphs,
    the same step kernel by kernel, and the engine's layer-by-layer step (Adam)."""
    from mlpfast.backend.cpu import compiled_spec
    from mlpfast.backend.cuda_step import CudaStep
    from mlpfast.backend.steps import LayerByLayerStep
    from mlpfast.datasets import as_dataset
    variants = {}
    for label in ("graph", "kernel by kernel", "layer by layer"):
        model = mf.MLP(layer_sizes, activation="relu", backend="cuda", seed=0)
        optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn, dataset, plan = mf.CrossEntropyLoss(), as_dataset(model, x, y), model.plan()
        if label == "layer by layer":
            step = LayerByLayerStep(plan, loss_fn, optimizer, dataset, batch_size)
        else:
            spec = compiled_spec(plan, loss_fn, optimizer, dataset, lambda a: True)
            step = CudaStep(plan, spec, optimizer, dataset, batch_size,
                            "auto" if label == "graph" else None)
        variants[label] = model, step
    return variants


def check_step(table, sizes, rng):
    """The cuda training step run as CUDA graphs against the same step kernel by kernel (bit
    for bit) and against the layer-by-layer step, over the same Adam steps of the first
    epoch configuration (random data), then its time per step: the graph path is validated
    on the device here, where the simulator has no graphs."""
    name, _, features, hidden, batch_size = sizes["epochs"][0]
    timed = sizes["step_batches"]
    rows = batch_size * (timed + 3) + batch_size // 2 + 1           # the last batch short
    x = rng.random((rows, features), dtype=np.float32)
    y = rng.integers(0, 10, rows)
    order = rng.permutation(rows).astype(np.int64)
    last = -(-rows // batch_size) - 1
    results = {}
    for label, (model, step) in step_variants([features, *hidden, 10], x, y,
                                              batch_size).items():
        sums = np.zeros(2)
        step.run(order, 0, 3, np.full(3, 1e-3), sums)     # compiles, captures the full batch
        step.run(order, last, 1, np.full(1, 1e-3), sums)  # and the short one
        start = time.perf_counter()
        done = step.run(order, 3, timed, np.full(timed, 1e-3), sums)   # reads back: synced
        seconds = time.perf_counter() - start
        results[label] = (done, sums, mf.to_numpy(model.flat_data), seconds / timed, step)
    shape = f"{'-'.join(map(str, [features, *hidden, 10]))} b{batch_size}, {timed + 4} steps"
    graph, plain, engine = (results[k] for k in ("graph", "kernel by kernel", "layer by layer"))
    same = graph[0] == plain[0] and np.array_equal(graph[1], plain[1]) \
        and np.array_equal(graph[2], plain[2])
    table.check("cuda step: graph replay vs kernel by kernel, bit for bit", shape, np.float32,
                0.0 if same else float("inf"))
    table.check("cuda step vs layer-by-layer step (params, loss, correct)", shape, np.float32,
                max(error_ratio(graph[2], engine[2].astype(np.float64), np.float32,
                                tol=(1e-5, 1e-3)),
                    error_ratio([graph[1][0]], [engine[1][0]], np.float32),
                    0.0 if graph[:1] == engine[:1] and graph[1][1] == engine[1][1]
                    else float("inf")))
    table.timing("cuda step us/step: graph; kernel by kernel, layer by layer", shape,
                 np.float32, f"{graph[3] * 1e6:,.0f}",
                 f"{plain[3] * 1e6:,.0f}; {engine[3] * 1e6:,.0f}", graph[4].graphs)


# --- timings -------------------------------------------------------------------------------

def cublas_peer():
    """(name, prepare(a, b) -> timed call, synchronize) for cuBLAS through CuPy or PyTorch,
    or None when neither can run here."""
    try:
        import cupy
        cupy.cuda.Device().synchronize()

        def prepare_cupy(a, b):
            a_gpu, b_gpu = cupy.asarray(a), cupy.asarray(b)
            return lambda: cupy.matmul(a_gpu, b_gpu)
        return "cuBLAS (CuPy)", prepare_cupy, cupy.cuda.Device().synchronize
    except Exception:                      # not installed, or built for another CUDA
        pass
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    torch.backends.cuda.matmul.allow_tf32 = False

    def prepare_torch(a, b):
        a_gpu, b_gpu = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        return lambda: torch.matmul(a_gpu, b_gpu)
    return "cuBLAS (PyTorch)", prepare_torch, torch.cuda.synchronize


def time_gemm(table, sizes, rng):
    from mlpfast.kernels.cuda import gemm
    size = sizes["gemm_time"]
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    a_dev, b_dev = dev(a), dev(b)
    c_dev = gemm.VARIANTS["cuda"](a_dev, b_dev)
    ok = table.check("sgemm NN (before timing)", f"{size}^3", np.float32,
                     gemm_error_ratio(c_dev.copy_to_host(), a.astype(np.float64),
                                      b.astype(np.float64), np.float32))
    if not ok:
        return
    flops = 2.0 * size ** 3
    ours = flops / median_seconds(lambda: gemm.VARIANTS["cuda"](a_dev, b_dev, c_dev),
                                  synchronize, sizes["repeats"]) * 1e-9
    peer = cublas_peer()
    if peer is None:
        table.timing("sgemm NN GFLOP/s", f"{size}^3", np.float32, f"{ours:,.0f}",
                     "no CuPy/PyTorch", "")
        return
    name, make, sync = peer
    theirs = flops / median_seconds(make(a, b), sync, sizes["repeats"]) * 1e-9
    table.measured["sgemm"] = ours / theirs
    table.timing("sgemm NN GFLOP/s", f"{size}^3", np.float32, f"{ours:,.0f}",
                 f"{theirs:,.0f} {name}", f"{ours / theirs:.2f}x")


def time_gemm_tiles(table, sizes, rng):
    """Every tile (and split-K where choose_config picks it) at the MLP's GEMM shapes, to
    check choose_config's pick: GFLOP/s, registers and local memory per thread."""
    from mlpfast.kernels.cuda import gemm
    for m, n, k in sizes["tile_shapes"]:
        a = dev(rng.standard_normal((m, k)).astype(np.float32))
        b = dev(rng.standard_normal((k, n)).astype(np.float32))
        c = dev(np.empty((m, n), np.float32))
        chosen = gemm.choose_config(m, n, k)
        configs = sorted({(tile, 1) for tile in gemm.TILES} | {chosen})
        for tile, splits in configs:
            seconds = median_seconds(lambda: gemm.gemm_tiled(a, b, c, tile=tile, splits=splits),
                                     synchronize, sizes["repeats"])
            kernel, _ = gemm.gemm_kernel(np.dtype(np.float32), False, False, "identity", False,
                                         tile, "identity", splits > 1)
            usage = ""
            if hasattr(kernel, "get_regs_per_thread"):
                usage = (f"{kernel.get_regs_per_thread()} regs, "
                         f"{kernel.get_local_mem_per_thread()} B local")
            table.timing(f"gemm {'x'.join(map(str, tile))} split {splits}"
                         + (" (chosen)" if (tile, splits) == chosen else ""),
                         f"{m}x{n}x{k}", np.float32, f"{2.0 * m * n * k / seconds * 1e-9:,.0f}",
                         "GFLOP/s", usage)


def mnist_data(sizes_of_run, rng, root):
    """(x, y, source): MNIST's training set (from root, the cache) or random data of its shape,
    cut to the run's samples and features."""
    _, samples, features, _, _ = sizes_of_run
    try:
        (x, y), _ = mf.datasets.mnist(root=root, download=False)
        source = "MNIST"
    except (RuntimeError, OSError, ValueError):
        x = rng.random((60000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        source = "random, MNIST-shaped"
    return np.ascontiguousarray(x[:samples, :features]), y[:samples], source


def mlpfast_epoch_seconds(model, x, y, batch_size, order):
    """(seconds, mean loss, train accuracy) of one epoch of ``mf.fit`` on the model's backend
    (Adam, lr 1e-3): the step fit uses is the one timed. A warm-up fit on a few batches and
    the tail batch compiles every kernel first."""
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = mf.CrossEntropyLoss()
    tail = len(order) % batch_size
    warm = np.concatenate([order[:8 * batch_size], order[len(order) - tail:]])
    mf.fit(model, optimizer, loss_fn, x[warm], y[warm], epochs=1, batch_size=batch_size,
           shuffle=False, progress=False)        # the full and the tail batch's shapes
    history = mf.fit(model, optimizer, loss_fn, x[order], y[order], epochs=1,
                     batch_size=batch_size, shuffle=False, progress=False)
    return history["seconds"][0], history["loss"][0], history["train_accuracy"][0]


def torch_epoch_seconds(state, x, y, layer_sizes, batch_size, order, device="cuda"):
    """(seconds, mean loss) of one epoch of the same MLP (initial weights ``state``) in
    PyTorch eager, the data and the batches' indices already on the device, the loss summed
    there; None without PyTorch on that device."""
    try:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    layers = []
    for i, (n_in, n_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(layer_sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_dev, y_dev = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    batches = [torch.from_numpy(order[lo:lo + batch_size]).to(device)
               for lo in range(0, len(order), batch_size)]

    def epoch(batches):
        total = torch.zeros((), device=device)
        for index in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_dev[index]), y_dev[index])
            loss.backward()
            optimizer.step()
            total += loss.detach() * index.shape[0]
        return float(total) / sum(index.shape[0] for index in batches)   # waits for the GPU

    epoch(batches[:8] + batches[-1:])             # warm-up, the tail batch's shape included
    start = time.perf_counter()
    loss = epoch(batches)
    return time.perf_counter() - start, loss


def jax_epoch_seconds(state, x, y, layer_sizes, batch_size, order, platform="gpu"):
    """(seconds, mean loss) of the same epoch in JAX: the whole step (gather, forward, loss,
    backward, Adam) one jitted function with its parameter and optimizer buffers donated, the
    data and the batches' indices on the device, fp32 matmuls; None without JAX there."""
    try:
        import jax
        import jax.numpy as jnp
        gpu = jax.devices(platform)[0]
    except Exception:                      # not installed, or no such backend
        return None
    layers = len(layer_sizes) - 1
    params = [(jax.device_put(state[f"{2 * i}.weight"], gpu),
               jax.device_put(state[f"{2 * i}.bias"], gpu)) for i in range(layers)]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    x_gpu, y_gpu = jax.device_put(x, gpu), jax.device_put(y.astype(np.int32), gpu)
    batches = [jax.device_put(order[lo:lo + batch_size].astype(np.int32), gpu)
               for lo in range(0, len(order), batch_size)]

    def loss_of(params, xb, yb):
        h = xb
        for i, (w, b) in enumerate(params):
            h = jnp.dot(h, w.T, precision=jax.lax.Precision.HIGHEST) + b
            if i < layers - 1:
                h = jax.nn.relu(h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), yb[:, None], axis=1))

    def step(params, m, v, t, x_all, y_all, index):
        loss, grads = jax.value_and_grad(loss_of)(params, x_all[index], y_all[index])
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        step_size = 1e-3 / (1 - 0.9 ** t)
        root = jnp.sqrt(1 - 0.999 ** t)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / root + 1e-8), params, m, v)
        return params, m, v, t, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2, 3))
    carry = (params, zeros, jax.tree_util.tree_map(jnp.zeros_like, params),
             jnp.zeros((), jnp.float32))           # params, Adam's m and v, step count

    def epoch(carry, batches):
        losses = []
        for index in batches:
            *carry, loss = step(*carry, x_gpu, y_gpu, index)
            losses.append(loss * index.shape[0])
        total = float(jnp.sum(jnp.stack(losses)))      # waits for the last step
        return carry, total / sum(index.shape[0] for index in batches)

    carry, _ = epoch(carry, batches[:8] + batches[-1:])   # compiles both batch shapes
    start = time.perf_counter()
    _, loss = epoch(carry, batches)
    return time.perf_counter() - start, loss


def time_epochs(table, sizes, rng, root=None):
    """One epoch per configuration on cuda, next to PyTorch eager and JAX jit."""
    for run in sizes["epochs"]:
        name, _, features, hidden, batch_size = run
        x, y, source = mnist_data(run, rng, root)
        layer_sizes = [features, *hidden, 10]
        model = mf.MLP(layer_sizes, activation="relu", backend="cuda", seed=0)
        state = model.state_dict()                     # the peers start from these weights
        order = np.random.default_rng(1).permutation(len(x))
        ours, loss, accuracy = mlpfast_epoch_seconds(model, x, y, batch_size, order)
        shape = f"{'-'.join(map(str, layer_sizes))}, {len(x)} {source}"
        table.timing(f"{name} epoch s (Adam)", shape, np.float32, f"{ours:.3f}",
                     f"{len(x) / ours:,.0f} samples/s",
                     f"loss {loss:.4f}, train acc {100 * accuracy:.1f}%")
        for peer, timer in (("torch", torch_epoch_seconds), ("jax", jax_epoch_seconds)):
            measured = timer(state, x, y, layer_sizes, batch_size, order)
            label = {"torch": "PyTorch eager", "jax": "JAX jit"}[peer]
            if measured is None:
                table.timing(f"{name} epoch s, {label}", shape, np.float32, "", "no GPU " +
                             label.split()[0], "")
                continue
            theirs, their_loss = measured           # same weights and batches: same loss
            table.measured[f"{name} {peer}"] = theirs / ours
            table.timing(f"{name} epoch s, {label} (data on GPU)", shape, np.float32,
                         f"{ours:.3f}", f"{theirs:.3f}",
                         f"{theirs / ours:.2f}x speed, loss {their_loss:.4f}")


def train_mnist_cli(table, sizes, rng, root=None):
    """``mlpfast train mnist`` on cuda and on cpu, same recipe and seed: test accuracy and
    samples/s (median over the epochs after the first)."""
    epochs = sizes["train_epochs"]
    if epochs is None:
        table.timing("mlpfast train mnist", "", None, "", "", "skipped (--quick)")
        return
    try:                       # a GPU machine without a network has no MNIST unless given
        mf.datasets.mnist(root=root, download=False)
    except (RuntimeError, OSError, ValueError) as error:
        table.timing("mlpfast train mnist", "", None, "", "",
                     f"skipped: no MNIST files here, pass --mnist DIR ({type(error).__name__})")
        return
    results = {}
    for backend in ("cuda", "cpu"):
        command = [sys.executable, "-m", "mlpfast.cli", "train", "mnist", "--backend", backend,
                   "--epochs", str(epochs)] + (["--data", root] if root else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=150,
                              cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed: {done.stderr.strip()[-300:]}")
        accuracy = float(re.search(r"test accuracy: ([0-9.]+)%", done.stdout).group(1))
        rates = [float(r.replace(",", "")) for r in re.findall(r"\(([0-9,]+) samples/s\)",
                                                                  done.stdout)]
        results[backend] = (accuracy, statistics.median(rates[1:] or rates))
    (acc_cuda, rate_cuda), (acc_cpu, rate_cpu) = results["cuda"], results["cpu"]
    table.measured["train gap"] = acc_cuda - acc_cpu
    table.timing(f"mlpfast train mnist, {epochs} epochs: test acc %, samples/s", "cuda vs cpu",
                 np.float32, f"{acc_cuda:.2f}%, {rate_cuda:,.0f}/s",
                 f"cpu {acc_cpu:.2f}%, {rate_cpu:,.0f}/s",
                 f"{acc_cuda - acc_cpu:+.2f} points, {rate_cuda / rate_cpu:.2f}x speed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--mnist", metavar="DIR", default=None,
                        help="folder with MNIST's IDX files (default: MLPFAST_DATA, the cache)")
    args = parser.parse_args(argv)
    if "cuda" not in mf.backends():
        print("gpu_check: no usable CUDA GPU here (needs an NVIDIA GPU and the `cuda` extra: "
              "pip install -e '.[cuda]'); nothing checked", file=sys.stderr)
        return 2
    sizes = SIZES["quick" if args.quick else "full"]
    rng = np.random.default_rng(2026)
    start = time.perf_counter()
    table = Table()
    for check in (check_gemm, check_linear, check_activations, check_losses, check_optimizers,
                  check_gather, check_step, time_gemm, time_gemm_tiles):
        run_check(table, check, sizes, rng)
    for check in (time_epochs, train_mnist_cli):
        run_check(table, check, sizes, rng, args.mnist)
    backend = mf.get_backend("cuda")
    table.print(f"mlpfast gpu_check{' --quick' if args.quick else ''}: {backend.info['gpu']}, "
                f"numba-cuda {backend.info['numba-cuda']}")
    print(f"{len(table.rows)} rows, {table.failures} mismatches or failed checks, "
          f"{time.perf_counter() - start:.0f} s")
    table.print_bars()
    return 1 if table.failures else 0


def run_check(table, check, *args):
    """Run one check; a failure becomes an ERROR row, and the next check still runs."""
    try:
        check(table, *args)
    except Exception as error:           # any failure: reported, never fatal
        table.error(check.__name__, error)


if __name__ == "__main__":
    sys.exit(main())
