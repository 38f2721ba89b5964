"""The compiled training steps with Numba's bounds checking on: an index outside a buffer
(a wrong slice, a mask of the wrong shape) raises IndexError there instead of corrupting
memory. Runs a subset of tests/test_mlp_step.py in a child process with
NUMBA_BOUNDSCHECK=1 and a cache of its own (the checked machine code must not mix with the
normal one)."""
import os
import subprocess
import sys

import pytest

from mlpfast.kernels import gemm

pytestmark = pytest.mark.skipif(not gemm.c_available(), reason="C library not built")


def test_compiled_steps_stay_in_bounds(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         os.path.join(here, "test_mlp_step.py"), "-k",
         "batchnorm or max_norm or one_step_matches or two_halves or float_targets"],
        env=env, cwd=here, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.strip().splitlines()[-1]
