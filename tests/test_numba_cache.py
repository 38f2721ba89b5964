"""Numba's on-disk cache of the kernels: stamped with every kernels/*.py file, so that an
edited helper (_numba_math, losses) cannot leave stale machine code in its callers."""
import os

from numba import njit

from mlpfast.kernels import _numba_config, activations, losses, mlp_step


def test_sources_stamp_follows_every_file_content(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not a source\n")
    first = _numba_config.sources_stamp(str(tmp_path))
    assert _numba_config.sources_stamp(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("changed, but not a source\n")
    assert _numba_config.sources_stamp(str(tmp_path)) == first
    (tmp_path / "b.py").write_text("y = 3\n")
    os.utime(tmp_path / "b.py", ns=(1, 1))            # a new mtime: hashed again
    changed = _numba_config.sources_stamp(str(tmp_path))
    assert changed != first
    (tmp_path / "c.py").write_text("")
    assert _numba_config.sources_stamp(str(tmp_path)) not in (first, changed)


def test_kernels_are_stamped_with_all_kernel_sources():
    stamp = _numba_config.sources_stamp()
    for kernel in (activations._softmax_forward_numba, losses._cross_entropy_band,
                   mlp_step._train_steps):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, _numba_config._KernelSourcesLocator), kernel
        own_stamp, all_sources = locator.get_source_stamp()
        assert all_sources == stamp
        assert own_stamp               # Numba's stamp of the kernel's own file is kept


def test_functions_outside_the_kernels_keep_numbas_locator():
    @njit(cache=True)
    def twice(v):
        return 2 * v

    assert not isinstance(twice._cache._impl.locator, _numba_config._KernelSourcesLocator)
