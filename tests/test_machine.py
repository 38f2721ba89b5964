"""mlpfast.machine: the CPU model, the SIMD features the kernels care about (in
KERNEL_FEATURES order), the widest vector ISA and the CPUs this process may run on, read
here from /proc/cpuinfo and the OS directly."""
import os

import pytest

from mlpfast import machine


def cpuinfo_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return None


def test_features_are_this_cpus_in_the_documented_order():
    flags = cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags line")
    assert machine.cpu_features() == [f for f in machine.KERNEL_FEATURES if f in flags]


def test_features_keep_the_kernel_order_and_drop_the_others(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo_field",
                        lambda prefix: "fpu avx512f sse4_2 ht avx2 fma avx" if prefix == "flags"
                        else None)
    assert machine.cpu_features() == ["sse4_2", "avx", "avx2", "fma", "avx512f"]
    monkeypatch.setattr(machine, "_cpuinfo_field", lambda prefix: None)   # no /proc/cpuinfo
    assert machine.cpu_features() == []
    assert machine.cpu_model()                       # the platform's name instead


@pytest.mark.parametrize("features, isa", [
    (["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"], "AVX-512"),
    (["sse4_2", "avx", "avx2", "fma"], "AVX2"),
    (["sse4_2", "avx", "fma"], "baseline"),            # AVX without AVX2 counts as baseline
    ([], "baseline"),
])
def test_isa_is_the_widest_vector_extension(features, isa):
    assert machine.isa_name(features) == isa


def test_available_cpus_is_this_processs_affinity(monkeypatch):
    assert machine.available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})     # pinned to one CPU
    assert machine.available_cpus() == 1
