"""Peers for ``mlpfast bench``: the same MLP training in mlpfast, NumPy, PyTorch and JAX.

A script, run by path (``python .../mlpfast/benchmarks/peers.py``), so that the NumPy,
PyTorch and JAX peers import NumPy, their framework and threadpoolctl, and nothing of mlpfast
(whose import brings Numba and the C kernels into the process); only the mlpfast peer
imports mlpfast. The parent (``mlpfast.benchmarks.harness``) writes MNIST and the initial
weights once as .npy files (``write_mnist``, ``write_weights``), starts each peer in a
process of its own with its threads pinned (CPU affinity, the *_NUM_THREADS variables,
torch.set_num_threads) and, for NumPy, without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, and
reads the JSON lines it prints. Every answer lists the thread pools threadpoolctl sees in
the peer and the mlpfast modules it imported (none, but for the mlpfast peer).

    peers.py PEER --data DIR --weights DIR --batch 64 --threads 2 --epochs 3
        PEER: mlpfast, mlpfast-bf16 (precision="bf16") or one of TRAINERS (torch-bf16:
        the tuned PyTorch under CPU autocast to bf16). Full MNIST epochs; the same warm-up
        for all (32 full batches and one batch of the epoch's tail size, so JAX compiles
        both shapes), the same initial weights, shuffles (``epoch_order``) and Adam (lr
        1e-3) updates; the seconds of every epoch.
    peers.py PEER --serve-epochs --data DIR --weights DIR --batch 64 --threads 2
        the same run an epoch at a time, as ``mlpfast bench --compare`` drives every peer
        in turns: answers {"ready": true} once warmed up, then per JSON line on stdin
        {"epoch": e} -> {"seconds", "loss"} and {"finish": true} -> the result, as above.
    peers.py PEER --infer --data DIR --weights DIR --batch 1024 --threads 2
        PEER: one of PREDICTORS. Predicted classes (argmax of the logits) of the 10,000
        MNIST test images in batches; a warm-up pass, then INFER_ROUNDS timed passes, median.
    peers.py numpy --serve --threads 2
        reads JSON requests on stdin, one per line, answers one JSON line each:
        {"step": "784-256-128-10 b64", "x": PATH, "y": PATH, "seconds": 0.15} times a
        training step of the textbook NumPy MLP on that batch; {"info": true} its BLAS

DIR (--data): x_train.npy (N, 784) float32 in [0, 1], y_train.npy (N,) int64, x_test.npy,
y_test.npy. DIR (--weights): w0.npy (out, in), b0.npy (out,), w1.npy, ... float32.
"""
import argparse
import functools
import json
import os
import sys
import time

import numpy as np

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
WARMUP_BATCHES = 32        # before timed epochs: this many full batches, then one tail batch
INFER_ROUNDS = 7           # timed inference passes over the MNIST test set (median)
INSTALL_HINTS = {
    "torch": "CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "jax": "pip install 'mlpfast[compare]' or pip install jax",
}
MNIST_FILES = ("x_train", "y_train", "x_test", "y_test")


def threads_text(count):
    """"1 thread", "2 threads": a thread count as the reports print it."""
    return f"{count} thread{'' if count == 1 else 's'}"


# --- what the parent hands over -------------------------------------------------------

def initial_weights(sizes, seed):
    """[(w (out, in), b (out,)), ...] drawn like torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))."""
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(n_in)
        layers.append((rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
                       rng.uniform(-bound, bound, n_out).astype(np.float32)))
    return layers


def write_weights(folder, weights):
    os.makedirs(folder, exist_ok=True)
    for i, (w, b) in enumerate(weights):
        np.save(os.path.join(folder, f"w{i}.npy"), w)
        np.save(os.path.join(folder, f"b{i}.npy"), b)


def read_weights(folder):
    weights = []
    while os.path.exists(os.path.join(folder, f"w{len(weights)}.npy")):
        i = len(weights)
        weights.append((np.load(os.path.join(folder, f"w{i}.npy")),
                        np.load(os.path.join(folder, f"b{i}.npy"))))
    if not weights:
        raise ValueError(f"--weights {folder}: no w0.npy there")
    return weights


def write_mnist(folder, train, test):
    """((x_train, y_train), (x_test, y_test)) as the four .npy files of MNIST_FILES."""
    os.makedirs(folder, exist_ok=True)
    for name, array in zip(MNIST_FILES, (*train, *test)):
        np.save(os.path.join(folder, f"{name}.npy"), array)


def read_mnist(folder):
    x_train, y_train, x_test, y_test = (np.load(os.path.join(folder, f"{name}.npy"))
                                        for name in MNIST_FILES)
    return (x_train, y_train), (x_test, y_test)


# --- what the peer reports about itself -----------------------------------------------

def threadpools():
    """The thread pools threadpoolctl finds loaded here: ["openblas 0.3.31 (SkylakeX,
    2 threads)", "openmp libgomp (2 threads)", ...], or why it cannot tell."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["unknown (pip install threadpoolctl)"]
    return [f"{lib.get('internal_api')} "
            f"{lib.get('version') or lib.get('prefix')} ({lib.get('architecture') or '-'}, "
            f"{threads_text(lib.get('num_threads'))})" for lib in threadpool_info()]


def blas_info():
    """The BLAS NumPy uses in this process, as threadpoolctl reports it (or why not)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl)"
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            arch = lib.get("architecture") or "?"
            return (f"{lib.get('internal_api')} {lib.get('version')} ({arch}, "
                    f"{threads_text(lib.get('num_threads'))})")
    return "none found by threadpoolctl"


def mlpfast_modules():
    return sorted(m for m in sys.modules if m == "mlpfast" or m.startswith("mlpfast."))


# --- timing and accounting ------------------------------------------------------------

def time_call(fn, min_seconds=0.15, min_rounds=3, max_rounds=200):
    """Seconds per call of ``fn()``: a list of at least ``min_rounds`` timings, more until
    ``min_seconds`` have passed. Call ``fn`` once before (warm-up) yourself."""
    times = []
    start = time.perf_counter()
    while len(times) < min_rounds or (time.perf_counter() - start < min_seconds
                                      and len(times) < max_rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def mlp_train_flops(sizes, batch):
    """FLOPs of one training step: forward 2*B*in*out per layer, weight gradient as much,
    input gradient as much for every layer but the first (its input needs no gradient).
    Per sample: 1.007 M for 784-256-128-10, 9.56 M for 784-1024-1024-10."""
    layers = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    return 2.0 * batch * (2 * sum(a * b for a, b in layers) + sum(a * b for a, b in layers[1:]))


# --- trainers: make(weights, threads) -> (step(x, y) -> loss, sync(), notes, classes(x)) --

class NumpyMLP:
    """The textbook NumPy MLP: ReLU hidden layers, softmax cross-entropy, Adam."""

    def __init__(self, weights):
        self.params = [p.copy() for layer in weights for p in layer]   # w0, b0, w1, b1, ...
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def forward(self, x):
        """[x, h_1, ..., logits]: the input of every layer, then the logits."""
        ws, bs = self.params[0::2], self.params[1::2]
        activations = [x]
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = activations[-1] @ w.T + b
            activations.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
        return activations

    def step(self, x, y):
        ws = self.params[0::2]
        activations = self.forward(x)
        logits = activations[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(y))
        loss = -log_p[rows, y].mean()
        grad = np.exp(log_p)                                 # dL/dlogits = (p - onehot) / B
        grad[rows, y] -= 1.0
        grad /= len(y)
        grads = [None] * len(self.params)
        for i in reversed(range(len(ws))):
            grads[2 * i] = grad.T @ activations[i]
            grads[2 * i + 1] = grad.sum(axis=0)
            if i > 0:
                grad = (grad @ ws[i]) * (activations[i] > 0)
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= BETA1
            m += (1 - BETA1) * g
            v *= BETA2
            v += (1 - BETA2) * g * g
            m_hat = m / (1 - BETA1 ** self.t)
            v_hat = v / (1 - BETA2 ** self.t)
            p -= LR * m_hat / (np.sqrt(v_hat) + EPS)
        return float(loss)


def numpy_trainer(weights, threads):
    model = NumpyMLP(weights)

    def classes(x):
        return model.forward(x)[-1].argmax(axis=1)
    return model.step, lambda: None, "textbook NumPy", classes


def _torch_model(weights, threads):
    """torch.nn.Sequential of Linear + ReLU layers holding ``weights``."""
    import torch
    torch.set_num_threads(threads)
    layers = []
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear] + ([torch.nn.ReLU()] if i < len(weights) - 1 else [])
    return torch.nn.Sequential(*layers)


def torch_trainer(weights, threads, tuned=False, autocast=False):
    """PyTorch eager, Adam; ``tuned``: fused Adam (one kernel for all parameters) and
    denormals flushed to zero, as mlpfast's C kernels do. The flag is set before PyTorch
    starts its threads, which inherit it. ``autocast``: forward and loss under
    torch.autocast("cpu", dtype=torch.bfloat16) (bf16 GEMMs, float32 weights and Adam),
    PyTorch's mixed precision on CPUs."""
    import contextlib
    import torch
    if tuned:
        torch.set_flush_denormal(True)
    model = _torch_model(weights, threads)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True if tuned else None)
    loss_fn = torch.nn.CrossEntropyLoss()

    def precision():
        if autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        return loss.detach()

    def classes(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).numpy()
    flushed = float(torch.tensor([1e-39]) * 1.0) == 0.0      # a denormal input read as 0
    notes = (f"torch {torch.__version__}, {threads_text(torch.get_num_threads())}, Adam "
             f"{'fused' if optimizer.defaults['fused'] else 'default'}, denormals "
             f"{'flushed' if flushed else 'kept'}{', autocast bf16' if autocast else ''}")
    return step, lambda: None, notes, classes


def _jax_logits(params, x):
    """The MLP's logits in JAX: ReLU hidden layers, params [(w, b), ...]."""
    import jax
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w.T + b)
    w, b = params[-1]
    return h @ w.T + b


def jax_adam_update():
    """The whole training step as one jitted function (params, m, v, t, x, y) -> (params,
    m, v, t, loss) whose parameter and optimizer-state buffers are donated: XLA writes the
    new values over the old ones instead of allocating."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, x, y):
        log_p = jax.nn.log_softmax(_jax_logits(params, x))
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    def update(params, m, v, t, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        t = t + 1
        m = jax.tree.map(lambda m, g: BETA1 * m + (1 - BETA1) * g, m, grads)
        v = jax.tree.map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, v, grads)
        c1, c2 = 1 - BETA1 ** t, 1 - BETA2 ** t
        params = jax.tree.map(lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + EPS),
                              params, m, v)
        return params, m, v, t, loss

    return jax.jit(update, donate_argnums=(0, 1, 2, 3))


def jax_trainer(weights, threads):
    import jax
    import jax.numpy as jnp
    update = jax_adam_update()
    state = {"params": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]}
    state["m"] = jax.tree.map(jnp.zeros_like, state["params"])
    state["v"] = jax.tree.map(jnp.zeros_like, state["params"])
    state["t"] = jnp.asarray(0.0, jnp.float32)

    def step(x, y):
        (state["params"], state["m"], state["v"], state["t"], loss) = update(
            state["params"], state["m"], state["v"], state["t"], x, y)
        return loss

    def sync():
        jax.block_until_ready(state["params"])

    def classes(x):
        return np.asarray(jnp.argmax(_jax_logits(state["params"], x), axis=1))
    notes = (f"jax {jax.__version__} jit on {jax.devices()[0].platform}, whole step, "
             f"params and Adam state donated")
    return step, sync, notes, classes


TRAINERS = {"numpy": numpy_trainer, "torch": torch_trainer,
            "torch-tuned": functools.partial(torch_trainer, tuned=True),
            "torch-bf16": functools.partial(torch_trainer, tuned=True, autocast=True),
            "jax": jax_trainer}
MLPFAST_PRECISIONS = {"mlpfast": "fp32", "mlpfast-bf16": "bf16"}


# --- epochs ---------------------------------------------------------------------------

def epoch_order(n, seed, epoch):
    """The sample order of timed epoch ``epoch`` (0, 1, ...): the first epoch order of
    ``mlpfast.fit(..., seed=seed + 1 + epoch)``, so every peer trains on the same batches."""
    return np.random.default_rng(seed + 1 + epoch).permutation(n)


class EpochRun:
    """One peer's training run, an epoch per call: built and warmed up here (32 full batches
    and one of the epoch's tail size, shuffled by ``seed``, as ``fit(x[:warm], seed=seed)``
    draws them), then ``epoch(e)`` -> (seconds, mean loss) of timed epoch e over the batches
    of ``epoch_order``, then ``result()``: the answer of ``peers.py PEER --epochs``."""

    def __init__(self, peer, data, weights, batch, threads, seed):
        self.mlpfast = peer in MLPFAST_PRECISIONS       # else a peer of TRAINERS
        if not self.mlpfast:                   # first, so that a missing library is reported
            self.step, self.sync, self.notes, self.classes = TRAINERS[peer](weights, threads)
        (self.x, self.y), (self.x_test, self.y_test) = read_mnist(data)
        self.peer, self.batch, self.seed = peer, batch, seed
        self.seconds, self.losses = [], []
        warm = WARMUP_BATCHES * batch + len(self.x) % batch
        if self.mlpfast:
            self._start_mlpfast(weights, warm)
        else:
            self._epoch(np.random.default_rng(seed).permutation(min(warm, len(self.x))))

    def _start_mlpfast(self, weights, warm):
        from mlpfast import CrossEntropyLoss, fit, get_num_threads
        from mlpfast.optim import Adam
        self.model = _mlpfast_model(weights, self.seed, MLPFAST_PRECISIONS[self.peer])
        self.optimizer = Adam(self.model.parameters(), lr=LR)
        self.fit = functools.partial(fit, self.model, self.optimizer, CrossEntropyLoss(),
                                     batch_size=self.batch, progress=False)
        self.fit(self.x[:warm], self.y[:warm], epochs=1, seed=self.seed)
        self.notes = (f"mlpfast backend {self.model.backend.name}, "
                      f"{threads_text(get_num_threads())}")
        if self.model.precision == "bf16":
            from mlpfast.kernels.gemm_bf16 import C_KERNELS
            self.notes += f", bf16 ({C_KERNELS.name()})"

    def _epoch(self, order):
        losses = []
        for lo in range(0, len(order), self.batch):
            index = order[lo:lo + self.batch]
            losses.append(self.step(self.x[index], self.y[index]))
        self.sync()
        return float(np.mean([float(v) for v in losses]))

    def epoch(self, epoch):
        if self.mlpfast:
            history = self.fit(self.x, self.y, epochs=1, seed=self.seed + 1 + epoch)
            seconds, loss = history["seconds"][0], history["loss"][0]
        else:
            order = epoch_order(len(self.x), self.seed, epoch)
            start = time.perf_counter()
            loss = self._epoch(order)
            seconds = time.perf_counter() - start
        self.seconds.append(float(seconds))
        self.losses.append(float(loss))
        return self.seconds[-1], self.losses[-1]

    def result(self):
        """{epoch_seconds, samples (per epoch), loss (of the last epoch), test_accuracy (of
        the trained model), notes}."""
        x_test = np.ascontiguousarray(self.x_test, dtype=np.float32)
        if self.mlpfast:
            from mlpfast import predict
            predicted = predict(self.model, x_test)
        else:
            predicted = self.classes(x_test)
        return {"epoch_seconds": list(self.seconds), "samples": len(self.x),
                "loss": self.losses[-1] if self.losses else None,
                "test_accuracy": float(np.mean(predicted == self.y_test)), "notes": self.notes}


def _mlpfast_model(weights, seed=None, precision="fp32"):
    """mlpfast.MLP (relu, the cpu backend) holding ``weights``."""
    from mlpfast import MLP
    sizes = [weights[0][0].shape[1]] + [w.shape[0] for w, _ in weights]
    model = MLP(sizes, activation="relu", backend="cpu", seed=seed, precision=precision)
    model.load_state_dict({f"{2 * i}.{kind}": value for i, layer in enumerate(weights)
                           for kind, value in zip(("weight", "bias"), layer)})
    return model


def about_me():
    """What every answer says of the peer's process: its thread pools, the mlpfast modules
    it imported and the CPUs it may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"threadpools": threadpools(), "mlpfast_modules": mlpfast_modules(), "cpus": cpus}


# --- inference: make(weights, threads) -> (predict(x, batch) -> classes, notes) -------

def mlpfast_predictor(weights, threads):
    from mlpfast import get_num_threads, predict
    model = _mlpfast_model(weights)
    return (lambda x, batch: predict(model, x, batch_size=batch),
            f"mlpfast backend {model.backend.name}, {threads_text(get_num_threads())}")


def torch_predictor(weights, threads):
    import torch
    model = _torch_model(weights, threads).eval()

    def predict(x, batch):
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[lo:lo + batch])).argmax(1).numpy()
                                   for lo in range(0, len(x), batch)])
    return predict, (f"torch {torch.__version__}, {threads_text(torch.get_num_threads())}, "
                     f"no_grad")


def jax_predictor(weights, threads):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def classes(params, x):
        return jnp.argmax(_jax_logits(params, x), axis=1)

    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]

    def predict(x, batch):
        return np.concatenate([np.asarray(classes(params, x[lo:lo + batch]))
                               for lo in range(0, len(x), batch)])
    return predict, f"jax {jax.__version__} jit on {jax.devices()[0].platform}"


PREDICTORS = {"mlpfast": mlpfast_predictor, "torch": torch_predictor, "jax": jax_predictor}


def infer_rate(peer, data, weights, batch, threads):
    """Classes of the MNIST test images by ``peer``: {samples_per_s, seconds, agree_with}."""
    predict, notes = PREDICTORS[peer](weights, threads)
    _, (x, _) = read_mnist(data)
    x = np.ascontiguousarray(x, dtype=np.float32)
    first = predict(x, batch)                                  # warm-up (and JIT compile)
    seconds = []
    for _ in range(INFER_ROUNDS):
        start = time.perf_counter()
        classes = predict(x, batch)
        seconds.append(time.perf_counter() - start)
    if not np.array_equal(first, classes):
        raise RuntimeError(f"{peer} predicted different classes in two passes")
    median = float(np.median(seconds))
    return {"samples_per_s": len(x) / median, "seconds": median, "agree_with": classes.tolist(),
            "notes": notes}


# --- the step peer of the kernel tables ------------------------------------------------

def numpy_step_row(config, x, y, seconds, seed=0):
    """One textbook NumPy training step of ``config`` ("784-256-128-10 b64") on the batch
    (x, y), timed for ``seconds``: {times, median_s, rate (GFLOP/s), unit}."""
    sizes = [int(s) for s in config.split(" b")[0].split("-")]
    model = NumpyMLP(initial_weights(sizes, seed))
    model.step(x, y)
    model.step(x, y)
    times = time_call(lambda: model.step(x, y), seconds, min_rounds=2)
    median = float(np.median(times))
    return {"times": times, "median_s": median, "unit": "GFLOP/s",
            "rate": mlp_train_flops(sizes, len(x)) / median * 1e-9}


def answer_step(request):
    """{"info": true} -> {"blas": ...}; {"step", "x", "y", "seconds"} -> {"row": ...}."""
    if "info" in request:
        return {"blas": blas_info()}
    x, y = np.load(request["x"]), np.load(request["y"])
    return {"row": numpy_step_row(request["step"], x, y, request["seconds"])}


def serve(stdin, stdout, answer):
    """Answer each JSON request line with the JSON line of ``answer(request)``; a
    ValueError, KeyError, RuntimeError or OSError becomes {"skipped": why}."""
    for line in stdin:
        try:
            reply = answer(json.loads(line))
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            reply = {"skipped": f"{type(e).__name__}: {e}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


def run(args):
    """The result of one training (``--epochs`` timed epochs in a row) or inference run, as
    a JSON-able dict."""
    weights = read_weights(args.weights)
    if args.infer:
        result = infer_rate(args.peer, args.data, weights, args.batch, args.threads)
    else:
        training = EpochRun(args.peer, args.data, weights, args.batch, args.threads, args.seed)
        for epoch in range(args.epochs):
            training.epoch(epoch)
        result = training.result()
    return dict(result, **about_me())


def answer_epochs(training, request):
    """{"epoch": e} -> {"seconds", "loss"} of timed epoch e; {"finish": true} -> the
    result of the run (``EpochRun.result``, with ``about_me``)."""
    if "epoch" in request:
        seconds, loss = training.epoch(int(request["epoch"]))
        return {"seconds": seconds, "loss": loss}
    if request.get("finish"):
        return dict(training.result(), **about_me())
    raise KeyError(f"not an epoch request: {request!r}")


def serve_epochs(args, stdin, stdout):
    """``--serve-epochs``: build and warm up the run, answer {"ready": true} (or
    {"skipped": why}), then ``answer_epochs`` requests (``serve``) until stdin closes."""
    try:
        training = EpochRun(args.peer, args.data, read_weights(args.weights), args.batch,
                            args.threads, args.seed)
    except ImportError as e:
        stdout.write(json.dumps(skipped_for(e, args.peer)) + "\n")
        stdout.flush()
        return
    stdout.write(json.dumps({"ready": True}) + "\n")
    stdout.flush()
    serve(stdin, stdout, functools.partial(answer_epochs, training))


def skipped_for(error, peer):
    """The answer of a peer whose library is missing (an ImportError)."""
    library = peer.split("-")[0]
    return {"skipped": f"{error.name or library} is not installed "
                       f"({INSTALL_HINTS.get(library, '')})"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="peers.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=[*MLPFAST_PRECISIONS, *TRAINERS])
    parser.add_argument("--data", metavar="DIR", help="MNIST as .npy files (MNIST_FILES)")
    parser.add_argument("--weights", metavar="DIR", help="initial weights w0.npy, b0.npy, ...")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infer", action="store_true",
                        help="time inference (predicted classes of the MNIST test set), not "
                             f"training; one of {', '.join(PREDICTORS)}")
    parser.add_argument("--serve", action="store_true",
                        help="numpy only: answer training-step timing requests on stdin")
    parser.add_argument("--serve-epochs", action="store_true",
                        help="train an epoch per request on stdin (what --compare runs)")
    args = parser.parse_args(argv)
    if args.serve:
        if args.peer != "numpy":
            parser.error("--serve is for the numpy peer only")
        serve(sys.stdin, sys.stdout, answer_step)
        return 0
    if args.infer and args.peer not in PREDICTORS:
        parser.error(f"--infer is for {', '.join(PREDICTORS)}, got {args.peer!r}")
    if not args.data or not args.weights:
        parser.error("--data and --weights are required (the parent writes them)")
    if args.serve_epochs:
        if args.infer:
            parser.error("--serve-epochs trains; it does not go with --infer")
        serve_epochs(args, sys.stdin, sys.stdout)
        return 0
    try:
        result = run(args)
    except ImportError as e:
        result = skipped_for(e, args.peer)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
