"""Peers for ``mlpfast bench``: the same MLP training in mlpfast, NumPy, PyTorch and JAX.

Each peer runs in its own process, started by ``mlpfast.benchmarks.harness.run_peer`` (or kept up
by ``PeerProcess`` for the NumPy peer of the kernel and step tables) with its
threads pinned (CPU affinity, the *_NUM_THREADS variables, torch.set_num_threads) and,
for NumPy, without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE. It prints one JSON line.

    python -m mlpfast.benchmarks.peers PEER --sizes 784,256,128,10 --batch 64 --threads 2 --epochs 1
        PEER: mlpfast | numpy | torch | jax. Full MNIST epochs; the same warm-up for all
        (32 full batches and one batch of the epoch's tail size, so JAX compiles both
        shapes), the same initial weights, shuffles and Adam (lr 1e-3) updates.
    python -m mlpfast.benchmarks.peers PEER --infer --sizes 784,1024,1024,10 --batch 1024 --threads 2
        PEER: mlpfast | torch | jax. Inference: predicted classes (argmax of the logits)
        of the 10,000 MNIST test images in batches, the same initial weights; a warm-up
        pass, then benchmark.INFER_ROUNDS timed passes, median.
    python -m mlpfast.benchmarks.peers numpy --serve --threads 2
        reads JSON requests on stdin, one per line, and times what each asks for, like
        one turn of mlpfast's own rows: {"kernel": "gemm.sgemm 512x512x512 NN", "mode":
        "quick", "seconds": 0.05} (the NumPy reference of a kernel case), {"step":
        "784-256-128-10 b64", "seconds": 0.15} (a training step of the textbook NumPy MLP),
        {"info": true} (its BLAS); answers one JSON line each
"""
import argparse
import json
import sys
import time

import numpy as np

from . import harness as benchmark

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8


def initial_weights(sizes, seed):
    """[(w (out, in), b (out,)), ...] drawn like torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))."""
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(n_in)
        layers.append((rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
                       rng.uniform(-bound, bound, n_out).astype(np.float32)))
    return layers


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
    return model.step, lambda: None, f"textbook NumPy, {benchmark.blas_info()}", classes


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


def torch_trainer(weights, threads):
    import torch
    model = _torch_model(weights, threads)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        return loss.detach()

    def classes(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).numpy()
    return (step, lambda: None, f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            classes)


def _jax_logits(params, x):
    """The MLP's logits in JAX: ReLU hidden layers, params [(w, b), ...]."""
    import jax
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w.T + b)
    w, b = params[-1]
    return h @ w.T + b


def jax_trainer(weights, threads):
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

    update = jax.jit(update, donate_argnums=(0, 1, 2))
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
    return step, sync, f"jax {jax.__version__} jit on {jax.devices()[0].platform}", classes


def train_epochs(peer, sizes, batch, threads, epochs, seed):
    """Warm-up, then ``epochs`` timed epochs; {samples_per_s, seconds_per_epoch, loss,
    test_accuracy (of the trained model on the 10,000 MNIST test images), ...}."""
    from ..datasets import mnist
    weights = initial_weights(sizes, seed)
    if peer != "mlpfast":          # first, so that a missing library is reported at once
        make = {"numpy": numpy_trainer, "torch": torch_trainer, "jax": jax_trainer}[peer]
        step, sync, notes, classes = make(weights, threads)
    (x, y), (x_test, y_test) = mnist()
    n = len(x)
    warm = benchmark.WARMUP_BATCHES * batch + n % batch
    if peer == "mlpfast":
        return mlpfast_epochs(x, y, x_test, y_test, weights, sizes, batch, epochs, seed, warm)

    def epoch(order):
        losses = []
        for lo in range(0, len(order), batch):
            index = order[lo:lo + batch]
            losses.append(step(x[index], y[index]))
        sync()
        return float(np.mean([float(v) for v in losses]))

    # the batches fit() draws: warm-up over x[:warm] shuffled by seed, then epochs by seed + 1
    epoch(np.random.default_rng(seed).permutation(warm))
    rng = np.random.default_rng(seed + 1)
    seconds, losses = [], []
    for _ in range(epochs):
        order = rng.permutation(n)
        start = time.perf_counter()
        losses.append(epoch(order))
        seconds.append(time.perf_counter() - start)
    accuracy = float(np.mean(classes(np.ascontiguousarray(x_test, dtype=np.float32)) == y_test))
    return epoch_result(seconds, losses[-1], n, notes, accuracy)


def mlpfast_epochs(x, y, x_test, y_test, weights, sizes, batch, epochs, seed, warm):
    from .. import get_num_threads
    from ..losses import CrossEntropyLoss
    from ..optim import Adam
    from ..train import fit, predict
    model = _mlpfast_model(weights, sizes, seed)
    optimizer = Adam(model.parameters(), lr=LR)
    fit(model, optimizer, CrossEntropyLoss(), x[:warm], y[:warm], epochs=1, batch_size=batch,
        seed=seed, progress=False)
    history = fit(model, optimizer, CrossEntropyLoss(), x, y, epochs=epochs, batch_size=batch,
                  seed=seed + 1, progress=False)
    notes = f"mlpfast backend {model.backend.name}, {get_num_threads()} threads"
    accuracy = float(np.mean(predict(model, x_test) == y_test))
    return epoch_result(history["seconds"], history["loss"][-1], len(x), notes, accuracy)


def epoch_result(seconds, loss, n, notes, test_accuracy):
    median = float(np.median(seconds))
    return {"samples_per_s": n / median, "seconds_per_epoch": median,
            "epoch_seconds": [float(s) for s in seconds], "loss": loss,
            "test_accuracy": test_accuracy, "notes": notes}


def _mlpfast_model(weights, sizes, seed=None):
    """mlpfast.MLP (relu, the default backend) holding ``weights``."""
    from ..nn import MLP
    model = MLP(list(sizes), activation="relu", seed=seed)
    model.load_state_dict({f"{2 * i}.{kind}": value for i, layer in enumerate(weights)
                           for kind, value in zip(("weight", "bias"), layer)})
    return model


def mlpfast_predictor(weights, sizes, threads):
    from .. import get_num_threads
    from ..train import predict
    model = _mlpfast_model(weights, sizes)
    return (lambda x, batch: predict(model, x, batch_size=batch),
            f"mlpfast backend {model.backend.name}, {get_num_threads()} threads")


def torch_predictor(weights, sizes, threads):
    import torch
    model = _torch_model(weights, threads).eval()

    def predict(x, batch):
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[lo:lo + batch])).argmax(1).numpy()
                                   for lo in range(0, len(x), batch)])
    return predict, f"torch {torch.__version__}, {torch.get_num_threads()} threads, no_grad"


def jax_predictor(weights, sizes, threads):
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


def infer_rate(peer, sizes, batch, threads, seed):
    """Classes of the MNIST test images by ``peer``: {samples_per_s, seconds, accuracy...}."""
    from ..datasets import mnist
    make = {"mlpfast": mlpfast_predictor, "torch": torch_predictor, "jax": jax_predictor}[peer]
    predict, notes = make(initial_weights(sizes, seed), sizes, threads)
    _, (x, y) = mnist()
    x = np.ascontiguousarray(x, dtype=np.float32)
    first = predict(x, batch)                                  # warm-up (and JIT compile)
    seconds = []
    for _ in range(benchmark.INFER_ROUNDS):
        start = time.perf_counter()
        classes = predict(x, batch)
        seconds.append(time.perf_counter() - start)
    if not np.array_equal(first, classes):
        raise RuntimeError(f"{peer} predicted different classes in two passes")
    median = float(np.median(seconds))
    return {"samples_per_s": len(x) / median, "seconds": median, "agree_with": classes.tolist(),
            "notes": notes}


def numpy_step_row(config, seconds, seed=0):
    """One textbook NumPy training step of ``config`` ("784-256-128-10 b64") timed for
    ``seconds``, like one turn of the mlpfast step rows of ``benchmark.train_step_rows``."""
    sizes_text, batch_text = config.split(" b")
    sizes, batch = [int(s) for s in sizes_text.split("-")], int(batch_text)
    model = NumpyMLP(initial_weights(sizes, seed))
    x, y = benchmark.mnist_batch(batch, seed)
    model.step(x, y)
    model.step(x, y)
    times = benchmark.time_call(lambda: model.step(x, y), seconds, min_rounds=2)
    return benchmark._rate_row(f"train.step {config} [numpy-textbook]", "train", "train",
                               "step", config, "numpy-textbook", None, times,
                               benchmark.mlp_train_flops(sizes, batch), samples=batch)


def numpy_kernel_row(case, mode, seconds):
    """The NumPy reference timed on kernel ``case`` ("gemm.sgemm 512x512x512 NN") for
    ``seconds``, like one turn of the mlpfast kernel rows."""
    rows = benchmark.kernel_rows(mode, variants="reference", min_seconds=seconds,
                                 select=lambda row_id: row_id.split(" [")[0] == case)
    if not rows:
        raise ValueError(f"no kernel case {case!r} in mode {mode!r}")
    return rows[0]


def serve(stdin, stdout):
    """Answer one JSON request per line: {"info": true} -> {"blas": ...};
    {"kernel": case, "mode": m, "seconds": s} or {"step": config, "seconds": s} -> {"row":
    ...} timed for about s seconds; errors -> {"skipped": why}."""
    for line in stdin:
        request = json.loads(line)
        try:
            if "info" in request:
                reply = {"blas": benchmark.blas_info()}
            elif "kernel" in request:
                reply = {"row": numpy_kernel_row(request["kernel"], request["mode"],
                                                 request["seconds"])}
            else:
                reply = {"row": numpy_step_row(request["step"], request["seconds"])}
        except (ValueError, KeyError, RuntimeError) as e:
            reply = {"skipped": f"{type(e).__name__}: {e}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlpfast.benchmarks.peers", description=__doc__)
    parser.add_argument("peer", choices=["mlpfast", "numpy", "torch", "jax"])
    parser.add_argument("--sizes", default="784,256,128,10")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infer", action="store_true",
                        help="time inference (predicted classes of the MNIST test set), not "
                             "training; mlpfast, torch or jax")
    parser.add_argument("--serve", action="store_true",
                        help="numpy only: answer kernel and step timing requests on stdin")
    args = parser.parse_args(argv)
    if args.serve:
        if args.peer != "numpy":
            parser.error("--serve is for the numpy peer only")
        serve(sys.stdin, sys.stdout)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.infer and args.peer == "numpy":
        parser.error("--infer is for mlpfast, torch and jax")
    try:
        if args.infer:
            result = infer_rate(args.peer, sizes, args.batch, args.threads, args.seed)
        else:
            result = train_epochs(args.peer, sizes, args.batch, args.threads, args.epochs,
                                  args.seed)
    except ImportError as e:
        result = {"skipped": f"{e.name or args.peer} is not installed "
                             f"({benchmark.INSTALL_HINTS.get(args.peer, '')})"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
