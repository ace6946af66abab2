"""The thread count of the BLAS that numba's products call (SciPy's OpenBLAS), set at run time.

Code that runs its own threads, each calling BLAS, wants BLAS on one thread: otherwise its pool
spins between calls and fights those threads for the cores. Found through ctypes in SciPy's
bundled library; where it cannot be found (another BLAS, another platform) this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads", "openblas_get_num_threads")


@cache
def _functions() -> tuple | None:
    """(get, set) of the OpenBLAS next to SciPy, or None."""
    try:
        import scipy
    except ImportError:
        return None
    libs = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in sorted(libs.glob("lib*openblas*.so*")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def set_to(threads: int) -> None:
    """BLAS on `threads` threads from now on (process-wide)."""
    functions = _functions()
    if functions is not None:
        functions[1](threads)


@contextmanager
def limited_to(threads: int) -> Iterator[None]:
    """BLAS on at most `threads` threads inside the block (process-wide), as before after it."""
    functions = _functions()
    before = None if functions is None else int(functions[0]())
    if before is not None and before > threads:
        functions[1](threads)
    try:
        yield
    finally:
        if before is not None and before > threads:
            functions[1](before)
