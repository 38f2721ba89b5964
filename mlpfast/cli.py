"""The ``mlpfast`` command: train, info (and the subcommands other modules add).

    mlpfast train mnist [--hidden 512,256] [--activation relu] [--epochs N] [--batch-size B]
                        [--lr LR] [--lr-schedule cosine|constant] [--optimizer adam|adamw|sgd]
                        [--backend NAME] [--seed S] [--save PATH]
                        [--plots DIR] [--distributed]   (under mpiexec -n N)
    mlpfast train xor|moons [--hidden 8] [--epochs 300] [--noise SD] [--per-corner N | --samples N]
                            [--perceptron-epochs 100] [--plots DIR]  (perceptron vs MLP in 2-D)
    mlpfast info
    mlpfast bench [--quick|--full] [--compare] [--config "SIZES bBATCH"]... [--json PATH]
                  [--baseline PATH] [--plot PATH]
    mlpfast bench --distributed [--rounds N] [--json PATH]   (MPI: 1x2 vs 2x1, projection)
    mlpfast train speech DIR [DIR ...] [--context K] [--hidden 1024,512] [--epochs N]
                         [--holdout FRACTION] [--test DIR ...] [--vtln] [--phones FILE]
                         [--n-mfcc N] [--deltas 0|1|2] [--train-warps 0.9,1.0,1.1]
    mlpfast data synth-speech OUT [--voices kal,ked,slt] [--utterances N] [--seed S]
"""
import argparse
import contextlib
import os
import platform
import sys

import numpy as np

from . import __version__
from .backend import backends, get_backend, get_num_threads, gpu_summary, set_num_threads
from .benchmarks.peers import threads_text
from .checkpoint import unwritable_file
from .argtypes import non_negative as _non_negative, positive as _positive, \
    probability as _probability
from .init import INITS
from .schedules import SCHEDULES, make_schedule
from .machine import cpu_features, cpu_model


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers like "
                                         f"512,256, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _warp_list(text):
    try:
        warps = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated factors like 0.9,1.0,1.1, "
                                         f"got {text!r}") from None
    if not warps or any(not 0.5 <= w <= 2.0 for w in warps):
        raise argparse.ArgumentTypeError(f"warp factors must lie in [0.5, 2], got {text!r}")
    return warps


# the schedules that need no arguments of their own (step, multistep and exponential do)
BY_NAME = [name for name in sorted(SCHEDULES) if name not in ("step", "multistep",
                                                                "exponential")]


def add_training_arguments(parser, hidden="512,256", epochs=10, batch_size=128,
                           lr_schedule="constant"):
    """Options shared by the ``train`` subcommands."""
    parser.add_argument("--hidden", type=_hidden_sizes, default=_hidden_sizes(hidden),
                        help=f"hidden layer sizes, comma-separated (default {hidden})")
    parser.add_argument("--activation", default="relu",
                        choices=["relu", "tanh", "sigmoid", "leaky_relu", "gelu", "gelu_tanh"],
                        help="hidden layers' activation (default %(default)s)")
    parser.add_argument("--epochs", type=_positive(int), default=epochs,
                        help="(default %(default)s)")
    parser.add_argument("--batch-size", type=_positive(int), default=batch_size,
                        help="(default %(default)s)")
    parser.add_argument("--lr", type=_positive(float), default=1e-3,
                        help="learning rate (default %(default)s)")
    parser.add_argument("--lr-schedule", choices=BY_NAME, default=lr_schedule,
                        help=f"how the lr moves over the run (mlpfast.schedules; default "
                             f"{lr_schedule}): cosine decays from --lr to 0 after "
                             f"--warmup-steps, onecycle rises to --lr then falls, plateau "
                             f"divides it by 10 when the validation loss stalls")
    parser.add_argument("--warmup-steps", type=_non_negative(int), default=0,
                        help="linear warm-up steps of --lr-schedule cosine (default %(default)s)")
    parser.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                        help="(default %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="for --optimizer sgd (default %(default)s)")
    parser.add_argument("--weight-decay", type=_non_negative(float), default=None,
                        help="L2 (adam, sgd) or decoupled (adamw) weight decay (default: "
                             "the optimizer's, 0 for adam and sgd, 0.01 for adamw)")
    parser.add_argument("--max-norm", type=_positive(float), default=None,
                        help="after each step, each neuron's incoming weights onto the L2 "
                             "ball of this radius")
    parser.add_argument("--batchnorm", action="store_true",
                        help="BatchNorm1d after each hidden Linear layer")
    parser.add_argument("--dropout", type=_probability, default=0.0,
                        help="dropout after each hidden activation (default %(default)s)")
    parser.add_argument("--input-dropout", type=_probability, default=0.0,
                        help="dropout on the inputs (default %(default)s)")
    parser.add_argument("--init", choices=INITS, default="kaiming_uniform",
                        help="Linear weights' initialization (torch's names; default %(default)s)")
    parser.add_argument("--early-stopping", type=_positive(int), default=None,
                        metavar="PATIENCE", help="stop after PATIENCE epochs without a better "
                                                 "validation loss; keep the best weights")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: the GEMMs take bf16 operands and sum in fp32, the "
                             "rest stays fp32 (cpu backend; fastest with AVX512-BF16 or "
                             "AMX; default %(default)s)")
    parser.add_argument("--backend", default="auto",
                        help="numpy, numba, cpu, cuda or auto (default %(default)s)")
    parser.add_argument("--threads", type=_positive(int), default=None,
                        help="threads for every kernel (default: MLPFAST_NUM_THREADS or all cores)")
    parser.add_argument("--seed", type=_non_negative(int), default=0, help="(default %(default)s)")
    parser.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="keep the run's full state in PATH, replaced atomically after "
                             "every epoch (or every --checkpoint-every steps)")
    parser.add_argument("--checkpoint-every", type=_positive(int), default=None,
                        metavar="STEPS", help="checkpoint every STEPS optimizer steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --checkpoint when that file exists "
                             "(same arguments: --epochs is the total)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def fit_options(args, root=True):
    """fit()'s lr_schedule, checkpoint, checkpoint_every and resume from the options."""
    resume = args.checkpoint if args.resume and os.path.exists(args.checkpoint) else None
    if resume and root:
        print(f"resuming from {resume}")
    schedule = {"cosine": {"warmup_steps": args.warmup_steps}}.get(args.lr_schedule, {})
    return {"checkpoint": args.checkpoint, "checkpoint_every": args.checkpoint_every or "epoch",
            "resume": resume, "lr_schedule": make_schedule(args.lr_schedule, **schedule),
            "early_stopping": args.early_stopping}


def make_optimizer(args, model):
    from . import optim
    options = {"max_norm": args.max_norm}
    if args.weight_decay is not None:
        options["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, **options)
    if args.optimizer == "adamw":
        return optim.AdamW(model.parameters(), lr=args.lr, **options)
    return optim.Adam(model.parameters(), lr=args.lr, **options)


def make_model(args, sizes):
    from .nn import MLP
    return MLP(sizes, activation=args.activation, batchnorm=args.batchnorm,
               dropout=args.dropout, input_dropout=args.input_dropout, init=args.init,
               backend=args.backend, seed=args.seed, precision=args.precision)


def check_training_arguments(args, given):
    """Refuse (parser.error, exit 2), before any data is read, the train options that cannot
    work or would be ignored; ``given``: given_options."""
    error = args.parser.error
    _refuse_unwritable(error, ("--save", args.save), ("--checkpoint", args.checkpoint))
    if args.checkpoint_every and not args.checkpoint:
        error("--checkpoint-every needs --checkpoint PATH")
    if args.resume and not args.checkpoint:
        error("--resume needs --checkpoint PATH")
    if "warmup_steps" in given and args.lr_schedule != "cosine":
        error(f"--warmup-steps applies to --lr-schedule cosine only, got {args.lr_schedule}")
    if "momentum" in given and args.optimizer != "sgd":
        error(f"--momentum applies to --optimizer sgd only, got {args.optimizer}")
    if args.dataset == "mnist" and not args.holdout:
        if args.early_stopping:
            error("--early-stopping needs --holdout N: validation images taken from the "
                  "training set (selecting epochs on the test set would overfit it)")
        if args.lr_schedule == "plateau":
            error("--lr-schedule plateau needs --holdout N: validation images taken from the "
                  "training set (a rate set from the test set's loss would overfit it)")
    missing = _missing_validation(args)
    if missing and args.early_stopping:
        error(f"--early-stopping needs a validation set: {missing}")
    if missing and args.lr_schedule == "plateau":
        error(f"--lr-schedule plateau needs a validation set: {missing}")
    if args.dataset == "speech":
        _check_speech_arguments(args, given)
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        _check_resumed_settings(args)


def _refuse_unwritable(error, *options):
    """error() for the first (option, path) whose file cannot be written; None paths pass."""
    for option, path in options:
        problem = None if path is None else unwritable_file(option, path)
        if problem:
            error(problem)


def _missing_validation(args):
    """Why the run has no validation set, or None when it has one (MNIST: its holdout, or
    else its test set, shown only)."""
    if args.dataset in ("xor", "moons"):
        return f"{args.dataset} has none"
    if args.dataset == "speech" and not args.holdout:
        return "--holdout 0 holds out no utterances"
    return None


# The options whose values fit's resume replaces by the checkpoint's: option -> hyperparameter.
RESUMED_OPTIONS = {"--lr": "lr", "--momentum": "momentum", "--weight-decay": "weight_decay",
                   "--max-norm": "max_norm"}


def _check_resumed_settings(args):
    """fit's resume restores the optimizer's hyperparameters from the checkpoint (README,
    Reliability): an option that says otherwise is refused, so that what the run prints is
    what it uses."""
    from .checkpoint import read_checkpoint

    hyper = read_checkpoint(args.checkpoint).optimizer_state()["hyper"]
    for option, key in RESUMED_OPTIONS.items():
        value = getattr(args, key)
        if value is not None and key in hyper and value != hyper[key]:
            args.parser.error(f"{option} {value} differs from the {hyper[key]} of the run in "
                              f"{args.checkpoint}, which --resume continues with its own "
                              f"settings: give {option} {hyper[key]}, or drop --resume to "
                              f"start a new run")


def _train_mnist(args):
    from . import datasets
    from .losses import CrossEntropyLoss
    from .metrics import classification_report
    from .summary import summary
    from .train import evaluate, fit, predict

    plot = _plot_module() if args.plots else None        # fail before training, not after
    cluster = _cluster(args)
    root = cluster is None or cluster.rank == 0          # the rank that prints and writes
    with cluster.root_first("load MNIST") if cluster else contextlib.nullcontext():
        (x_train, y_train), (x_test, y_test) = datasets.mnist(root=args.data)
    (x_train, y_train), val = _holdout(x_train, y_train, args.holdout, args.seed)
    val = val or (x_test, y_test)              # without a holdout: the test set, shown only
    model = make_model(args, [784, *args.hidden, 10])
    ranks = f", {cluster.size} ranks" if cluster else ""
    if root:
        held_out = f" / {len(val[0])} held out" if args.holdout else ""
        print(f"mlpfast {__version__}: MNIST {len(x_train)} train{held_out} / {len(x_test)} "
              f"test{f', recipe {args.recipe}' if args.recipe else ''}, "
              f"MLP {'-'.join(str(s) for s in model.sizes)} ({args.activation}), "
              f"backend {model.backend.name}{ranks}{_precision_and_threads(args)}, "
              f"{args.optimizer} lr {args.lr} ({args.lr_schedule}), batch {args.batch_size}")
        summary(model, 784, batch_size=args.batch_size)
    optimizer = make_optimizer(args, model)
    history = fit(model, optimizer, CrossEntropyLoss(), x_train, y_train, epochs=args.epochs,
                  batch_size=args.batch_size, val=val, seed=args.seed,
                  progress=root and not args.no_progress and sys.stderr.isatty(),
                  verbose=root, comm=cluster, **fit_options(args, root))
    if not root:
        return 0
    result = evaluate(model, x_test, y_test)
    print(f"test accuracy: {100 * result['accuracy']:.2f}%  (loss {result['loss']:.4f})")
    print(classification_report(y_test, predict(model, x_test), digits=4), end="")
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    if plot is not None:
        for path in plot.mnist_report(model, history, x_test, y_test, args.plots):
            print(f"wrote {path}")
    return 0


def _cluster(args):
    """The ranks of MPI.COMM_WORLD with --distributed (mlpfast.distributed), else None."""
    if not args.distributed:
        return None
    from .distributed import Cluster, mpi
    return Cluster(mpi().COMM_WORLD)


def _precision_and_threads(args):
    """The banners' ' bf16, 2 threads' (fp32 unnamed)."""
    precision = f" {args.precision}" if args.precision != "fp32" else ""
    return f"{precision}, {threads_text(get_num_threads())}"


def _holdout(x, y, count, seed):
    """((x, y) without ``count`` images drawn by ``seed``, those images as (x, y)), or
    ((x, y), None) when count is 0."""
    if count == 0:
        return (x, y), None
    if count >= len(x):
        raise ValueError(f"--holdout must be below the {len(x)} training images, got {count}")
    held = np.zeros(len(x), bool)
    held[np.random.default_rng(seed).choice(len(x), count, replace=False)] = True
    return (x[~held], y[~held]), (x[held], y[held])


# The documented recipes of `mlpfast train mnist --recipe NAME`: each sets these options
# (those given on the command line win). README, "The MNIST recipe", has what they reach.
RECIPES = {
    "best": {"hidden": [1024, 1024], "batchnorm": True, "dropout": 0.3, "input_dropout": 0.2,
             "epochs": 30, "lr_schedule": "onecycle", "lr": 2e-3, "batch_size": 128},
}


def _apply_recipe(args, given):
    """The options of the recipe args.recipe that are not in ``given`` (given_options: those
    on the command line, whatever their values) take the recipe's values."""
    for key, value in RECIPES[args.recipe].items():
        if key not in given:
            setattr(args, key, value)
    return args


def given_options(argv):
    """The destinations of the options that argv gives, a value equal to the default
    included: argv parsed again by a parser without defaults."""
    parser = build_parser()
    _drop_defaults(parser)
    return set(vars(parser.parse_args(argv)))


def _drop_defaults(parser):
    parser._defaults.clear()                    # set_defaults(): handler, the 2-D sets' lr
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        if isinstance(action.choices, dict):    # a subcommand's parsers
            for subparser in action.choices.values():
                _drop_defaults(subparser)


def _as_option(key, value):
    """A recipe's setting as the command line would give it: --flag, or --option value."""
    option = "--" + key.replace("_", "-")
    if value is True:
        return option
    return f"{option} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _plot_module():
    try:
        from . import plot
    except ImportError:
        raise RuntimeError("--plots needs matplotlib: pip install 'mlpfast[plot]'") from None
    return plot


def _train_2d(args):
    """A perceptron and an MLP on the same 2-D set: their accuracy and decision regions."""
    from .data import toy2d
    from .losses import CrossEntropyLoss
    from .perceptron import Perceptron
    from .summary import summary
    from .train import evaluate, fit

    plot = _plot_module() if args.plots else None
    if args.dataset == "xor":
        x, y = toy2d.xor(args.per_corner, noise=args.noise, seed=args.seed)
    else:
        x, y = toy2d.moons(args.samples, noise=args.noise, seed=args.seed)
    print(f"mlpfast {__version__}: {args.dataset}, {len(x)} points (noise {args.noise})")
    perceptron = Perceptron(max_epochs=args.perceptron_epochs, seed=args.seed).fit(x, y)
    print(f"perceptron: training accuracy {100 * perceptron.score(x, y):.1f}%, converged: "
          f"{perceptron.converged_} after {perceptron.n_epochs_} epochs")
    model = make_model(args, [2, *args.hidden, 2])
    name = f"MLP {'-'.join(str(s) for s in model.sizes)}"
    print(f"{name} ({args.activation}), backend {model.backend.name}, {args.optimizer} "
          f"lr {args.lr}, batch {min(args.batch_size, len(x))}")
    summary(model, 2, batch_size=min(args.batch_size, len(x)))
    history = fit(model, make_optimizer(args, model), CrossEntropyLoss(), x, y,
                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  progress=not args.no_progress and sys.stderr.isatty(),
                  **fit_options(args))
    print(f"{name}: training accuracy {100 * evaluate(model, x, y)['accuracy']:.1f}% "
          f"(loss {history['loss'][-1]:.4f} after {args.epochs} epochs)")
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    if plot is not None:
        os.makedirs(args.plots, exist_ok=True)
        paths = [os.path.join(args.plots, f"decision_regions_{args.dataset}.png"),
                 os.path.join(args.plots, f"training_curves_{args.dataset}.png")]
        plot.decision_regions({"perceptron": perceptron, name: model}, x, y, paths[0])
        plot.training_curves(history, paths[1])
        for path in paths:
            print(f"wrote {path}")
    return 0


def _info(args):
    import cffi
    import numba
    print(f"mlpfast {__version__}")
    print(f"python {platform.python_version()}  numpy {np.__version__}  numba {numba.__version__}"
          f"  cffi {cffi.__version__}")
    print(f"cpu: {cpu_model()} ({platform.machine()})")
    print(f"cpu features: {' '.join(cpu_features()) or 'none detected'}")
    print(f"gpu: {gpu_summary()}")
    print(f"threads: {get_num_threads()} (set with MLPFAST_NUM_THREADS or --threads)")
    print(f"backends available: {', '.join(backends())}; auto -> {get_backend('auto').name}")
    for name in backends():
        for key, value in get_backend(name).info.items():
            print(f"  {name}: {key}: {value}")
    return 0


def check_bench_arguments(args, given):
    """Refuse (parser.error, exit 2), before anything is timed, the bench options that
    cannot work: output files whose folder is missing (they were written after the run),
    and options of the other kind of run (``given``: given_options)."""
    error = args.parser.error
    option = {action.dest: action.option_strings[0] for action in args.parser._actions}
    option["mode"] = f"--{args.mode}"                   # --quick or --full, whichever given
    if args.distributed:
        ignored = [option[dest] for dest in option if dest in given
                   and dest not in ("distributed", "rounds", "json", "help")]
        if ignored:
            error(f"--distributed launches its own layouts (1 rank x 2 threads, 2 ranks x 1 "
                  f"thread) and takes only --rounds and --json; got {', '.join(ignored)}")
    elif "rounds" in given:
        error("--rounds applies to --distributed only")
    _refuse_unwritable(error, ("--json", args.json), ("--plot", args.plot))
    if args.plot:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            error("--plot needs matplotlib: pip install 'mlpfast[plot]'")


def _bench(args):
    if args.distributed:
        from .benchmarks.distributed import run
    else:
        from .benchmarks.harness import run
    return run(args)


def _is_feature_folder(folder):
    """Whether folder holds precomputed features (mfcc/ + transcript/), not audio."""
    from pathlib import Path

    from .data import speech
    return (Path(folder) / speech.FEATURE_DIR).is_dir()


def _check_speech_arguments(args, given):
    """Options that precomputed features make meaningless, and --test/--vtln's needs."""
    error = args.parser.error
    test_features = [d for d in args.test or [] if _is_feature_folder(d)]
    if test_features and len(args.test) != 1:
        error(f"--test takes one folder of precomputed features (mfcc/, transcript/) or "
              f"folders of audio, got {' '.join(args.test)}")
    if args.vtln and not args.test:
        error("--vtln needs --test DIR: it reads the test audio with warped mel filters")
    if args.vtln and test_features:
        error(f"--vtln needs --test audio folders: {test_features[0]} holds precomputed "
              f"features")
    if not _is_feature_folder(args.dirs[0]):
        return
    fixed = ["--train-warps"] if args.test and not test_features else \
        ["--n-mfcc", "--deltas", "--train-warps"]         # no audio is read at all
    ignored = [o for o in fixed if o[2:].replace("-", "_") in given]
    if ignored:
        error(f"{', '.join(ignored)} cannot apply: {args.dirs[0]} holds precomputed features")


def _speech_sets(args):
    """(train, held_out or None, test or None) SpeechFrames from the folders of args."""
    from pathlib import Path

    from .data import speech

    def load(dirs, stems=None, phones=None, warp=1.0):
        kwargs = dict(context=args.context, phones=phones)
        if stems is not None:                             # precomputed features
            return speech.SpeechFrames.from_folder(dirs, stems=stems, **kwargs)
        return speech.SpeechFrames(dirs, n_mfcc=args.n_mfcc, deltas=args.deltas, warp=warp,
                                   **kwargs)

    phones = speech.read_phone_list(args.phones) if args.phones else None
    precomputed = _is_feature_folder(args.dirs[0])
    if precomputed:
        if len(args.dirs) != 1:
            raise ValueError("give one folder of precomputed features (mfcc/, transcript/)")
        folder = Path(args.dirs[0])
        files = sorted((folder / speech.FEATURE_DIR).glob("*.npy"))
    else:
        files = speech.find_audio(args.dirs)
        if not files:
            raise ValueError(f"no .flac or .wav files under {args.dirs}")
        listed = [Path(args.dirs[0]) / speech.PHONES_FILE,          # DIR/ or the corpus root
                  Path(args.dirs[0]).resolve().parent / speech.PHONES_FILE]
        if phones is None and any(p.exists() for p in listed):
            phones = speech.read_phone_list(next(p for p in listed if p.exists()))
    train_files, held_files = (speech.split_by_utterance(files, args.holdout, args.seed)
                               if args.holdout else (files, []))
    if precomputed:
        train = load(folder, [f.stem for f in train_files], phones)
        held = load(folder, [f.stem for f in held_files], train.phones) if held_files else None
    else:
        train = load(train_files, phones=phones, warp=args.train_warps)
        held = load(held_files, phones=train.phones) if held_files else None
    test = _speech_test_set(args, load, train) if args.test else None
    return train, held, test


def _speech_test_set(args, load, train):
    """The --test folders' frames (load: _speech_sets' loader of audio files): one folder of
    precomputed features, or audio folders."""
    from .data import speech

    if _is_feature_folder(args.test[0]):
        test = speech.SpeechFrames.from_folder(args.test[0], context=args.context,
                                               phones=train.phones)
    else:
        files = speech.find_audio(args.test)
        if not files:
            raise ValueError(f"--test: no .flac or .wav files under {args.test}")
        test = load(files, phones=train.phones)
    if test.feature_dim != train.feature_dim:
        raise ValueError(f"--test {' '.join(args.test)}: {test.feature_dim} features per "
                         f"frame, the training set has {train.feature_dim}")
    return test


def _report_speech(name, model, data):
    from . import speech
    from .train import evaluate

    result = evaluate(model, data)
    print(f"{name}: frame accuracy {100 * result['accuracy']:.2f}% on {result['n']} frames of "
          f"{data.num_utterances} utterances (loss {result['loss']:.4f})")
    accuracy = speech.per_phone_accuracy(result["confusion_matrix"])
    counts = result["confusion_matrix"].sum(axis=1)
    print("  per-phone accuracy (frames): " + "  ".join(
        f"{p} {100 * a:.0f}% ({c})" for p, a, c in zip(data.phones, accuracy, counts) if c))
    print("  most confused (true -> predicted: frames): " + ", ".join(
        f"{t}->{p}: {n}" for t, p, n in speech.top_confusions(result["confusion_matrix"],
                                                              data.phones, 10)))
    return result


def _report_vtln(args, model, phones):
    """Each --test folder read with the VTLN warp its own frames suggest (labels unused)."""
    from pathlib import Path

    from . import speech
    from .data.speech import SpeechFrames, find_audio
    from .train import evaluate

    options = dict(context=args.context, n_mfcc=args.n_mfcc, deltas=args.deltas)
    correct = total = 0
    for folder in args.test:
        files = find_audio([folder])
        warp, confidence = speech.estimate_warp(model, files, phones, **options)
        result = evaluate(model, SpeechFrames(files, phones=phones, warp=warp, **options),
                          confusion=False)
        correct += result["accuracy"] * result["n"]
        total += result["n"]
        print(f"VTLN {Path(folder).name}: warp {warp:.2f} chosen by mean confidence "
              f"({' '.join(f'{w:.2f}:{c:.3f}' for w, c in confidence.items())}): frame accuracy "
              f"{100 * result['accuracy']:.2f}%")
    print(f"test with VTLN: frame accuracy {100 * correct / total:.2f}% on {total} frames")


def _train_speech(args):
    from .losses import CrossEntropyLoss
    from .summary import summary
    from .train import fit

    train, held, test = _speech_sets(args)
    sets = [s for s in (train, held, test) if s is not None]
    audio = sum(s.audio_seconds for s in sets)
    extract = sum(s.extract_seconds for s in sets)
    print(f"mlpfast {__version__}: speech frames, {len(train)} train frames "
          f"({train.num_utterances} utterances), {len(held) if held else 0} held out, "
          f"{len(test) if test else 0} test; {train.num_classes} phones; context +-{args.context} "
          f"of {train.feature_dim} features = {train.num_features} inputs")
    if extract:
        print(f"features: {audio:.0f} s of audio in {extract:.2f} s "
              f"({audio / extract:.0f} audio s per wall s)")
    model = make_model(args, [train.num_features, *args.hidden, train.num_classes])
    print(f"MLP {'-'.join(str(s) for s in model.sizes)} ({args.activation}), backend "
          f"{model.backend.name}{_precision_and_threads(args)}, {args.optimizer} lr {args.lr}, "
          f"batch {args.batch_size}")
    summary(model, train.num_features, batch_size=args.batch_size)
    history = fit(model, make_optimizer(args, model), CrossEntropyLoss(), train,
                  epochs=args.epochs, batch_size=args.batch_size, val=held, seed=args.seed,
                  progress=not args.no_progress and sys.stderr.isatty(), verbose=True,
                  **fit_options(args))
    print(f"training: {np.median(history['samples_per_s']):,.0f} frames/s (median over epochs)")
    if held is not None:
        _report_speech("held-out utterances", model, held)
    if test is not None:
        _report_speech(f"test ({' '.join(args.test)})", model, test)
    if test is not None and args.vtln:
        _report_vtln(args, model, test.phones)
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    return 0


def _synth_speech(args):
    from .data.synth import synth_speech

    voices = [v for v in args.voices.split(",") if v]
    files = synth_speech(args.out, voices, args.utterances, seed=args.seed, jobs=args.jobs)
    print(f"wrote {len(files)} utterances ({', '.join(voices)}) under {args.out}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="mlpfast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlpfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model on a dataset")
    train_sub = train.add_subparsers(dest="dataset", required=True)
    _add_train_mnist(train_sub)
    _add_train_2d(train_sub)
    _add_train_speech(train_sub)

    data = sub.add_parser("data", help="make or fetch datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth-speech", help="a speech corpus synthesized by festival "
                                                     "(16 kHz FLAC + .PHN per utterance)")
    synth.add_argument("out", metavar="OUT")
    synth.add_argument("--voices", default="kal,ked,slt",
                       help="comma-separated: kal, ked, slt (default %(default)s)")
    synth.add_argument("--utterances", type=_positive(int), default=150,
                       help="per voice (default %(default)s)")
    synth.add_argument("--seed", type=_non_negative(int), default=0, help="(default %(default)s)")
    synth.add_argument("--jobs", type=_positive(int), default=2,
                       help="festival processes at once (default %(default)s)")
    synth.set_defaults(handler=_synth_speech)

    info = sub.add_parser("info", help="version, backends, CPU features, threads, libraries")
    info.set_defaults(handler=_info)

    bench = sub.add_parser("bench", help="benchmark kernels and training against NumPy, "
                                         "PyTorch and JAX on this machine")
    from .benchmarks import distributed as bench_distributed, harness
    harness.add_arguments(bench)
    bench_distributed.add_arguments(bench)
    bench.set_defaults(handler=_bench, parser=bench)
    return parser


def _add_train_mnist(train_sub):
    mnist = train_sub.add_parser("mnist", help="MNIST digits, 784 -> 10 classes")
    add_training_arguments(mnist, lr_schedule="cosine")
    mnist.add_argument("--data", metavar="DIR", default=None,
                       help="folder holding the MNIST IDX files (default: $MLPFAST_DATA/mnist "
                            "or ~/.cache/mlpfast/mnist; fetched when missing)")
    mnist.add_argument("--plots", metavar="DIR", default=None,
                       help="write training curves, confusion matrix, per-class scores, "
                            "first-layer weights and misclassified test digits as PNGs into "
                            "DIR (needs matplotlib)")
    mnist.add_argument("--holdout", type=_non_negative(int), default=0, metavar="N",
                       help="validate on N training images drawn by --seed (trained on the "
                            "rest) instead of the test set; needed by --early-stopping; default "
                            "%(default)s: none)")
    recipes = "; ".join(f"{name}: " + ", ".join(_as_option(key, value)
                                                 for key, value in options.items())
                        for name, options in RECIPES.items())
    mnist.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help=f"a documented recipe: its options, unless given ({recipes})")
    mnist.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of mpiexec -n N (needs the mpi "
                            "extra); --batch-size is the global batch; threads per rank "
                            "default to the cores over the ranks on a node")
    mnist.set_defaults(handler=_train_mnist, parser=mnist)


def _add_train_2d(train_sub):
    for name, hidden, epochs, help_text in (
            ("xor", "8", 300, "XOR in 2-D: a perceptron fails, an MLP succeeds"),
            ("moons", "16", 500, "two interleaved half-moons in 2-D: perceptron vs MLP")):
        toy = train_sub.add_parser(name, help=help_text)
        add_training_arguments(toy, hidden=hidden, epochs=epochs, batch_size=1024)
        toy.set_defaults(handler=_train_2d, parser=toy, lr=0.05, activation="tanh")
        toy.add_argument("--noise", type=float, default=0.0 if name == "xor" else 0.1,
                         help="standard deviation of the Gaussian noise on each coordinate"
                              " (default %(default)s)")
        if name == "xor":
            toy.add_argument("--per-corner", type=_positive(int), default=1,
                             help="points per XOR corner (default 1: the truth table)")
        else:
            toy.add_argument("--samples", type=_positive(int), default=200,
                             help="(default %(default)s)")
        toy.add_argument("--perceptron-epochs", type=_positive(int), default=100,
                         help="(default %(default)s)")
        toy.add_argument("--plots", metavar="DIR", default=None,
                         help="write decision regions (perceptron and MLP) and the MLP's "
                              "training curves as PNGs into DIR (needs matplotlib)")


def _add_train_speech(train_sub):
    speech = train_sub.add_parser("speech", help="phoneme classification of speech frames "
                                                 "(audio + .PHN, or mfcc/ + transcript/ folders)")
    speech.add_argument("dirs", nargs="+", metavar="DIR",
                        help="folders of .flac/.wav files with .PHN alignments beside them, or "
                             "one folder of precomputed mfcc/*.npy + transcript/*.npy")
    add_training_arguments(speech, hidden="1024,512", epochs=3, batch_size=256)
    speech.add_argument("--context", type=_non_negative(int), default=10,
                        help="+-K neighbour frames (default %(default)s)")
    speech.add_argument("--n-mfcc", type=_positive(int), default=28,
                        help="(default %(default)s)")
    speech.add_argument("--deltas", type=int, choices=[0, 1, 2], default=0,
                        help="append deltas (1) or deltas and delta-deltas (2) (default "
                             "%(default)s)")
    speech.add_argument("--holdout", type=float, default=0.2,
                        help="fraction of each folder's utterances held out (0: none; default "
                             "%(default)s)")
    speech.add_argument("--test", nargs="+", metavar="DIR", default=None,
                        help="folders of extra test utterances, e.g. an unseen voice, or "
                             "one folder of precomputed features")
    speech.add_argument("--train-warps", type=_warp_list, default=1.0, metavar="LIST",
                        help="read each training utterance once per mel warp factor, e.g. "
                             "0.9,1.0,1.1 (augmentation against unseen voices; default "
                             "%(default)s: no warp)")
    speech.add_argument("--vtln", action="store_true",
                        help="also read each --test folder with the vocal-tract-length warp "
                             "(0.80-1.40) the model is most confident on, and report that")
    speech.add_argument("--phones", metavar="FILE", default=None,
                        help="phone list, one per line (default: phones.txt in the first DIR "
                             "or its parent, else the phones of the training files)")
    speech.set_defaults(handler=_train_speech, parser=speech)


def _interrupted(args):
    """The line for a command ended by KeyboardInterrupt: what it left, how to continue."""
    if args.command != "train":
        return "interrupted"
    if args.checkpoint and os.path.exists(args.checkpoint):
        again = "the same command" if args.resume else "the same command with --resume"
        return f"training interrupted; its state is in {args.checkpoint}: {again} continues it"
    return "training interrupted (no checkpoint written)"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            given = given_options(argv)
            if getattr(args, "recipe", None):
                _apply_recipe(args, given)
            check_training_arguments(args, given)
        if args.command == "bench":
            check_bench_arguments(args, given_options(argv))
        if getattr(args, "threads", None):
            set_num_threads(args.threads)
        return args.handler(args)
    except KeyboardInterrupt:          # Ctrl-C (fit ends at a step, after a last checkpoint)
        print(f"mlpfast: {_interrupted(args)}", file=sys.stderr)
        return 130                     # 128 + SIGINT, what a shell reports for Ctrl-C
    except (ValueError, RuntimeError, OSError, FloatingPointError) as e:  # FPE: diverged
        print(f"mlpfast: error: {e}", file=sys.stderr)
        if getattr(e, "ranks", None) is not None:    # a distributed run lost a rank or
            sys.stdout.flush()                        # failed: MPI_Finalize could wait for
            sys.stderr.flush()                        # the other ranks forever
            os._exit(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
