"""The package's layers only point down, and no two modules import each other.

    0 settings      env (every MLPFAST_* variable), machine, kernels/cpu_config.py
    1 kernels       mlpfast.kernels.*
    2 backends      mlpfast.backend.*
    3 engine        nn, losses, optim, train and its pieces (run, progress, resume,
                    checkpoint), datasets and data loading, summary, metrics, schedules, init,
                    tables (HTML for Jupyter)
    4 applications  the speech recipe (VTLN), perceptron lessons, plots
    5 faces         the CLI, the benchmark harness and peers, the package's own namespace

Every import counts, also one inside a function."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    ("settings", ("mlpfast.env", "mlpfast.machine", "mlpfast.kernels.cpu_config")),
    ("kernels", ("mlpfast.kernels",)),
    ("backends", ("mlpfast.backend",)),
    ("engine", ("mlpfast.nn", "mlpfast.losses", "mlpfast.optim", "mlpfast.train",
                "mlpfast.run", "mlpfast.progress", "mlpfast.resume", "mlpfast.checkpoint",
                "mlpfast.datasets", "mlpfast.data", "mlpfast.summary", "mlpfast.metrics",
                "mlpfast.schedules", "mlpfast.init", "mlpfast.npz", "mlpfast.tables",
                "mlpfast.distributed")),
    ("applications", ("mlpfast.speech", "mlpfast.perceptron", "mlpfast.plot")),
    ("faces", ("mlpfast.cli", "mlpfast.argtypes", "mlpfast.benchmarks", "mlpfast")),
]
EXTENSIONS = ("mlpfast._cgemm", "mlpfast._peak")       # the compiled C libraries


def modules():
    """{dotted name: path} of every module of mlpfast/ and kernels/ (mlpfast.kernels)."""
    found = {}
    for folder, package in (("mlpfast", "mlpfast"), ("kernels", "mlpfast.kernels")):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(directory, name),
                                               os.path.join(ROOT, folder))[:-3]
                    dotted = ".".join([package] + relative.split(os.sep))
                    found[dotted.removesuffix(".__init__")] = os.path.join(directory, name)
    return found


def layer_of(module):
    """Index in LAYERS of the longest prefix naming ``module``."""
    best = max(((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
                for prefix in prefixes if module == prefix or module.startswith(prefix + ".")),
               default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def imports(module, path, known):
    """The modules of ``known`` that ``module`` imports."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names]
            hits = {t for t in targets if t in known}
            if not hits and not any(t in EXTENSIONS for t in targets) and base in known:
                hits = {base}
            found |= hits
    found.discard(module)
    return found


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    up = [target for target in GRAPH[module] if layer_of(target) > layer_of(module)]
    assert not up, (f"{module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{[(t, LAYERS[layer_of(t)][0]) for t in up]} from a higher layer")


def test_no_import_cycles():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):                       # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []
