"""Numba's on-disk cache of the kernels: stamped with every kernels/*.py file, so that an
edited helper (_numba_math, losses) cannot leave stale machine code in its callers."""
import os
import types

from numba import njit

from mlpfast.kernels import _c_library, _numba_config, activations, losses, mlp_step


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
        own_stamp, all_sources, c_api = locator.get_source_stamp()
        assert all_sources == stamp and c_api == _numba_config.c_api_stamp()
        assert own_stamp               # Numba's stamp of the kernel's own file is kept


def test_functions_outside_the_kernels_keep_numbas_locator():
    @njit(cache=True)
    def twice(v):
        return 2 * v

    assert not isinstance(twice._cache._impl.locator, _numba_config._KernelSourcesLocator)


def test_the_c_api_stamp_follows_the_librarys_prototypes(monkeypatch):
    # kernels compile the C prototypes into their machine code (_c_calls): a library
    # rebuilt with mlpf_sadam's betas as double instead of float must recompile them
    def stamp_of(adam_type, act_relu=1):
        class Function:
            def __call__(self):
                pass
        class Library:                  # dir() lists what a cffi lib lists: its names
            mlpf_sadam, MLPF_ACT_RELU = Function(), act_relu

            def __dir__(self):
                return ["MLPF_ACT_RELU", "mlpf_sadam"]
        lib = Library()
        ffi = types.SimpleNamespace(typeof=lambda f: types.SimpleNamespace(cname=adam_type))
        monkeypatch.setattr(_c_library, "_LOADED", [types.SimpleNamespace(lib=lib, ffi=ffi)])
        _numba_config.c_api_stamp.cache_clear()
        try:
            return _numba_config.c_api_stamp()
        finally:
            _numba_config.c_api_stamp.cache_clear()

    old = stamp_of("int(*)(float *, float, float)")
    assert stamp_of("int(*)(float *, float, float)") == old
    assert stamp_of("int(*)(float *, double, double)") != old
    assert stamp_of("int(*)(float *, float, float)", act_relu=2) != old
