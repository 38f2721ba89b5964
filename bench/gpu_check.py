"""GPU check: every CUDA kernel against its NumPy reference at real sizes, then the speed of
the CUDA GEMM and of one MNIST epoch on backend "cuda", next to cuBLAS and PyTorch.

    python bench/gpu_check.py           # on a machine with an NVIDIA GPU, in under 5 minutes
    python bench/gpu_check.py --quick   # tiny sizes: a smoke test of this script, e.g. under
                                        # NUMBA_ENABLE_CUDASIM=1 (its timings mean nothing)

Prints one table: one row per validated kernel (worst error as a fraction of its tolerance,
so <= 1 passes), then the timed rows. Exit status: 0 when every kernel matches, 1 on any
mismatch, 2 when no GPU is usable.

Tolerances: elementwise ops ``atol + rtol * |ref|`` per dtype against a float64 reference;
GEMMs the forward-error bound |C - ref| <= 2 k eps (|op(A)| @ |op(B)|) + tiny, which any
correct summation order meets and a wrong element or a missed tile edge does not.

Timings: medians of several synchronized calls after warm-up (past JIT compilation). The
GEMM peer is cuBLAS through CuPy (``cupy.matmul``) or else PyTorch (``torch.matmul``), both
with TF32 off; the MNIST peer is the same MLP, optimizer and batches in PyTorch on CUDA.
MNIST comes from the local cache (``mlpfast.datasets.mnist(download=False)``), else random
data of MNIST's shape (the row says which).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ["CUPY_TF32"] = "0"           # before CuPy is imported: plain fp32 cuBLAS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mlpfast as mf  # noqa: E402
from mlpfast.kernels import activations as ref_activations  # noqa: E402
from mlpfast.kernels import losses as ref_losses  # noqa: E402
from mlpfast.kernels import optim as ref_optim  # noqa: E402

SIZES = {
    "full": dict(gemm=(1031, 1543, 517), gemm_time=4096, linear=(512, 784, 1000),
                 elementwise=(4096, 1000), logits=[(8192, 10), (1024, 1000)], flat=10_000_000,
                 gather=(60000, 784, 4096), mnist=(None, 784, (512, 256), 128), repeats=10),
    "quick": dict(gemm=(37, 29, 19), gemm_time=32, linear=(9, 12, 7), elementwise=(13, 9),
                  logits=[(9, 10)], flat=1000, gather=(50, 12, 16), mnist=(48, 20, (8,), 16),
                  repeats=2),
}
TOL = {np.dtype(np.float32): (1e-5, 2e-4), np.dtype(np.float64): (1e-12, 1e-10)}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PARAMS = {"leaky_relu": {"negative_slope": 0.07}}


class Table:
    """Rows of (item, shape, dtype, error/tol, mlpfast, peer, status), printed once at the end."""
    HEADER = ("item", "shape", "dtype", "err/tol", "mlpfast", "peer", "status")

    def __init__(self):
        self.rows, self.failures = [], 0

    def check(self, item, shape, dtype, ratio):
        ok = bool(np.isfinite(ratio) and ratio <= 1.0)
        self.failures += not ok
        self.rows.append((item, shape, str(np.dtype(dtype)) if dtype else "", f"{ratio:.3g}",
                          "", "", "ok" if ok else "MISMATCH"))
        return ok

    def timing(self, item, shape, dtype, ours, peer, status):
        self.rows.append((item, shape, str(np.dtype(dtype)) if dtype else "", "", ours, peer,
                          status))

    def print(self, title):
        widths = [max(len(str(r[i])) for r in self.rows + [self.HEADER])
                  for i in range(len(self.HEADER))]
        line = "  ".join("-" * w for w in widths)
        print(title)
        print(line)
        for row in [self.HEADER] + self.rows:
            print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
        print(line)


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
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    for tile in gemm.TILES:
        out = dev(c0)
        gemm.gemm_tiled(dev(a), dev(b), out, alpha=0.5, beta=-2.0, tile=tile)
        expected = 0.5 * (a.astype(np.float64) @ b) - 2.0 * c0
        bound = np.finfo(np.float32).eps * (2 * k * 0.5 * (np.abs(a).astype(np.float64)
                                                              @ np.abs(b)) + 4 * np.abs(c0))
        ratio = float((np.abs(out.copy_to_host() - expected) / (bound + 1e-30)).max())
        table.check(f"gemm tile {'x'.join(map(str, tile))}, alpha, beta", f"{m}x{n}x{k}",
                    np.float32, ratio)


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
    ratio = ours / theirs
    table.timing("sgemm NN GFLOP/s", f"{size}^3", np.float32, f"{ours:,.0f}",
                 f"{theirs:,.0f} {name}", f"{ratio:.2f}x " + ("(>= 0.5x)" if ratio >= 0.5
                                                              else "(below 0.5x)"))


def mnist_data(sizes, rng):
    try:
        (x, y), _ = mf.datasets.mnist(download=False)
        source = "MNIST"
    except (RuntimeError, OSError, ValueError):
        x = rng.random((60000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        source = "random, MNIST-shaped"
    samples, features, _, _ = sizes["mnist"]
    x = np.ascontiguousarray(x[:samples, :features])
    return x, y[:samples], source


def time_mnist_epoch(table, sizes, rng):
    x, y, source = mnist_data(sizes, rng)
    _, features, hidden, batch_size = sizes["mnist"]
    layer_sizes = [features, *hidden, 10]
    model = mf.MLP(layer_sizes, activation="relu", backend="cuda", seed=0)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = mf.CrossEntropyLoss()
    warm = min(len(x), 8 * batch_size)                 # compiles every kernel of a step
    mf.fit(model, optimizer, loss_fn, x[:warm], y[:warm], epochs=1, batch_size=batch_size,
           progress=False)
    history = mf.fit(model, optimizer, loss_fn, x, y, epochs=1, batch_size=batch_size, seed=1,
                     progress=False)
    ours = history["seconds"][0]
    shape = f"{'-'.join(map(str, layer_sizes))}, {len(x)} {source}, batch {batch_size}"
    theirs = torch_epoch_seconds(x, y, layer_sizes, batch_size)
    accuracy = f"train acc {100 * history['train_accuracy'][0]:.1f}%"
    if theirs is None:
        table.timing("MNIST epoch s (Adam)", shape, np.float32, f"{ours:.2f}", "no PyTorch",
                     accuracy)
    else:
        table.timing("MNIST epoch s (Adam)", shape, np.float32, f"{ours:.2f}",
                     f"{theirs:.2f} PyTorch", f"{theirs / ours:.2f}x speed, {accuracy}")


def torch_epoch_seconds(x, y, layer_sizes, batch_size):
    """One epoch of the same MLP in PyTorch on CUDA, batches copied from the host each step."""
    try:
        import torch
        if not torch.cuda.is_available():
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
    model = torch.nn.Sequential(*layers).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = np.random.default_rng(1).permutation(len(x))

    def epoch(count):
        total = 0.0
        for lo in range(0, count, batch_size):
            index = order[lo:lo + batch_size]
            xb = torch.from_numpy(x[index]).cuda()
            yb = torch.from_numpy(y[index]).cuda()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()                      # the loss crosses to the host, as ours
        return total

    epoch(min(len(x), 8 * batch_size))
    torch.cuda.synchronize()
    start = time.perf_counter()
    epoch(len(x))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
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
                  check_gather, time_gemm, time_mnist_epoch):
        check(table, sizes, rng)
    backend = mf.get_backend("cuda")
    table.print(f"mlpfast gpu_check{' --quick' if args.quick else ''}: {backend.info['gpu']}, "
                f"numba-cuda {backend.info['numba-cuda']}")
    print(f"{len(table.rows)} rows, {table.failures} mismatches, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if table.failures else 0


if __name__ == "__main__":
    sys.exit(main())
