"""The C library (csrc/, built by ``pip install -e .`` as mlpfast._cgemm), loaded once."""

_LOADED = []     # the loaded mlpfast._cgemm, once imported


def c_library():
    """The cffi module of the C library (``.lib`` its functions, ``.ffi`` its types)."""
    if not _LOADED:
        from .. import _cgemm
        _LOADED.append(_cgemm)
    return _LOADED[0]


def c_available():
    try:
        c_library()
        return True
    except ImportError:
        return False
