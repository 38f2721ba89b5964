"""pytest configuration of the benchmark suite: `pytest bench/` (helpers in _common.py).

Collects bench_*.py files (tests/ keeps pytest's default test_*.py), prints the machine
header above the run and stores it in the JSON that --benchmark-json writes. NumPy's BLAS
follows ``mlpfast.set_num_threads`` here (through threadpoolctl), so the numpy variants run
with the same thread count as every other variant.
"""
import fnmatch

import pytest

from mlpfast.backend import add_thread_hook
from mlpfast.benchmarks.harness import format_machine, machine_info

_INFO = {}


def _machine():
    if "info" not in _INFO:
        _INFO["info"] = machine_info()
    return _INFO["info"]


def _blas_thread_hook(threads):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def pytest_configure(config):
    add_thread_hook(_blas_thread_hook)
    # about 300 benchmarks: half a second each (instead of pytest-benchmark's 1 s) keeps the
    # suite within 15 minutes on 2 cores; --benchmark-max-time on the command line wins
    if not any(arg.startswith("--benchmark-max-time") for arg in config.invocation_params.args):
        config.option.benchmark_max_time = 0.5


def pytest_collect_file(file_path, parent):
    """bench_*.py are test modules here, unless pytest already collects them itself."""
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, "bench_*.py"):
        return None
    if parent.session.isinitpath(file_path):
        return None                           # named on the command line: collected already
    if any(fnmatch.fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_report_header(config):
    return ["mlpfast benchmark machine:"] + ["  " + line for line in format_machine(_machine())]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mlpfast"] = _machine()
