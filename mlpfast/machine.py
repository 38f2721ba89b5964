"""What this machine is: CPU model, the SIMD features the kernels care about, and the CPUs
this process may run on."""
import os
import platform

KERNEL_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                   "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo_field(prefix):
    """The value of the first /proc/cpuinfo line starting with ``prefix``, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_features():
    """The SIMD features of this CPU that matter to the kernels (KERNEL_FEATURES order)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in KERNEL_FEATURES if f in flags]


def cpu_model():
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def isa_name(features=None):
    """"AVX-512", "AVX2" or "baseline": the widest vector ISA of this CPU."""
    features = cpu_features() if features is None else features
    return "AVX-512" if "avx512f" in features else "AVX2" if "avx2" in features else "baseline"


def available_cpus():
    """The CPUs this process may run on: its affinity where the OS has one, else all of the
    machine's (None where the OS does not say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()
