"""The ``mlpfast`` command: train, info (and the subcommands other modules add).

    mlpfast train mnist [--hidden 512,256] [--activation relu] [--epochs N] [--batch-size B]
                        [--lr LR] [--optimizer adam|sgd] [--backend NAME] [--seed S] [--save PATH]
    mlpfast info
"""
import argparse
import platform
import sys

import numpy as np

from . import __version__
from .backend import backends, get_backend, get_num_threads, set_num_threads


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers like "
                                         f"512,256, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def add_training_arguments(parser, hidden="512,256", epochs=10, batch_size=128):
    """Options shared by the ``train`` subcommands."""
    parser.add_argument("--hidden", type=_hidden_sizes, default=_hidden_sizes(hidden),
                        help=f"hidden layer sizes, comma-separated (default {hidden})")
    parser.add_argument("--activation", default="relu",
                        choices=["relu", "tanh", "sigmoid", "leaky_relu", "gelu", "gelu_tanh"])
    parser.add_argument("--epochs", type=_positive(int), default=epochs)
    parser.add_argument("--batch-size", type=_positive(int), default=batch_size)
    parser.add_argument("--lr", type=_positive(float), default=1e-3)
    parser.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    parser.add_argument("--momentum", type=float, default=0.9, help="for --optimizer sgd")
    parser.add_argument("--backend", default="auto", help="numpy, numba, cpu, cuda or auto")
    parser.add_argument("--threads", type=_positive(int), default=None,
                        help="threads for every kernel (default: MLPFAST_NUM_THREADS or all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_optimizer(args, model):
    from . import optim
    if args.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    if args.optimizer == "adamw":
        return optim.AdamW(model.parameters(), lr=args.lr)
    return optim.Adam(model.parameters(), lr=args.lr)


def _train_mnist(args):
    from . import datasets
    from .losses import CrossEntropyLoss
    from .nn import MLP
    from .train import evaluate, fit

    (x_train, y_train), (x_test, y_test) = datasets.mnist(root=args.data)
    model = MLP([784, *args.hidden, 10], activation=args.activation, backend=args.backend,
                seed=args.seed)
    print(f"mlpfast {__version__}: MNIST {len(x_train)} train / {len(x_test)} test, "
          f"MLP {'-'.join(str(s) for s in model.sizes)} ({args.activation}), "
          f"backend {model.backend.name}, {get_num_threads()} threads, "
          f"{args.optimizer} lr {args.lr}, batch {args.batch_size}")
    optimizer = make_optimizer(args, model)
    fit(model, optimizer, CrossEntropyLoss(), x_train, y_train, epochs=args.epochs,
        batch_size=args.batch_size, val=(x_test, y_test), seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(), verbose=True)
    result = evaluate(model, x_test, y_test)
    print(f"test accuracy: {100 * result['accuracy']:.2f}%  (loss {result['loss']:.4f})")
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    return 0


def cpu_features():
    """The SIMD features of this CPU that matter to the kernels."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _info(args):
    import cffi
    import numba
    print(f"mlpfast {__version__}")
    print(f"python {platform.python_version()}  numpy {np.__version__}  numba {numba.__version__}"
          f"  cffi {cffi.__version__}")
    print(f"cpu: {cpu_model()} ({platform.machine()})")
    print(f"cpu features: {' '.join(cpu_features()) or 'none detected'}")
    print(f"threads: {get_num_threads()} (set with MLPFAST_NUM_THREADS or --threads)")
    print(f"backends available: {', '.join(backends())}; auto -> {get_backend('auto').name}")
    for name in backends():
        for key, value in get_backend(name).info.items():
            print(f"  {name}: {key}: {value}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="mlpfast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlpfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on a dataset")
    train_sub = train.add_subparsers(dest="dataset", required=True)
    mnist = train_sub.add_parser("mnist", help="MNIST digits, 784 -> 10 classes")
    add_training_arguments(mnist)
    mnist.add_argument("--data", metavar="DIR", default=None,
                       help="folder holding the MNIST IDX files (default: $MLPFAST_DATA/mnist "
                            "or ~/.cache/mlpfast/mnist; fetched when missing)")
    mnist.set_defaults(handler=_train_mnist)

    info = sub.add_parser("info", help="version, backends, CPU features, threads, libraries")
    info.set_defaults(handler=_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        set_num_threads(args.threads)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"mlpfast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
