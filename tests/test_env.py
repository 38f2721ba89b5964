"""Every MLPFAST_* environment variable is read in mlpfast/env.py alone and listed in the
README's table; bad values are named."""
import ast
import os
import re

import pytest

from mlpfast import env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment_reads(path):
    """Names of the MLPFAST_* variables the file reads from os.environ / os.getenv."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        key = None
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "os.environ.get", "os.getenv", "os.environ.setdefault", "environ.get"):
            key = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
        if isinstance(key, ast.Constant) and str(key.value).startswith("MLPFAST_"):
            names.add(key.value)
    return names


def sources():
    for folder in ("mlpfast", "kernels", "tests", "bench", "examples"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(directory, f) for f in files if f.endswith(".py"))


def test_only_env_py_reads_mlpfast_variables():
    readers = {os.path.relpath(p, ROOT): environment_reads(p) for p in sources()}
    assert {p: n for p, n in readers.items() if n and p != os.path.join("mlpfast", "env.py")} \
        == {}
    tree = ast.parse(open(os.path.join(ROOT, "mlpfast", "env.py"), encoding="utf-8").read())
    read = {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("MLPFAST_")}
    assert read == set(env.VARIABLES)                  # each listed variable has its reader


def test_the_readme_table_lists_every_variable():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    listed = set(re.findall(r"^\| `(MLPFAST_\w+)` \|", readme, re.M))
    assert listed == set(env.VARIABLES)


@pytest.mark.parametrize("name, value, reader", [
    ("MLPFAST_NUM_THREADS", "0", env.num_threads),
    ("MLPFAST_NUM_THREADS", "two", env.num_threads),
    ("MLPFAST_NUM_THREADS", "257", env.num_threads),
    ("MLPFAST_FUZZ_EXAMPLES", "-3", env.fuzz_examples),
    ("MLPFAST_NUMBA_THREADING_LAYER", "openmp", env.numba_threading_layer),
    ("MLPFAST_NUMBA_THREADING_LAYER", "", env.numba_threading_layer),      # set, but empty
    ("MLPFAST_PARALLEL_MIN_ELEMENTS", "many", lambda: env.parallel_min_elements(1)),
    ("MLPFAST_NOTEBOOK_QUICK", "yes", env.notebook_quick),
    ("MLPFAST_TEST_OPENMPI", "/nonexistent", env.openmpi_for_tests),
])
def test_bad_values_are_named(monkeypatch, name, value, reader):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be"):
        reader()


def test_values_and_defaults(monkeypatch):
    for name in env.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert env.num_threads() is None and env.data_dir() is None and env.gemm_kernel() is None
    assert env.fuzz_examples() == 150 and env.parallel_min_elements(7) == 7
    assert env.notebook_quick() is False
    monkeypatch.setenv("MLPFAST_NUM_THREADS", "3")
    monkeypatch.setenv("MLPFAST_DATA", "/data")
    monkeypatch.setenv("MLPFAST_PARALLEL_MIN_ELEMENTS", "1024")
    assert env.num_threads() == 3 and env.data_dir() == "/data"
    assert env.parallel_min_elements(7) == 1024
    monkeypatch.setenv("MLPFAST_NUM_THREADS", str(env.MAX_THREADS))   # the pool's limit
    assert env.num_threads() == env.MAX_THREADS == 256
    for name in ("MLPFAST_DATA", "MLPFAST_GEMM_KERNEL"):    # empty: as if unset
        monkeypatch.setenv(name, "")
    assert env.data_dir() is None and env.gemm_kernel() is None
    for layer in ("omp", "tbb", "workqueue"):
        monkeypatch.setenv("MLPFAST_NUMBA_THREADING_LAYER", layer)
        assert env.numba_threading_layer() == layer
    for text, quick in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("MLPFAST_NOTEBOOK_QUICK", text)
        assert env.notebook_quick() is quick


def test_the_thread_limit_is_the_c_pools():
    header = open(os.path.join(ROOT, "csrc", "threadpool.h"), encoding="utf-8").read()
    assert f"MLPF_POOL_MAX_THREADS = {env.MAX_THREADS} }};" in header

